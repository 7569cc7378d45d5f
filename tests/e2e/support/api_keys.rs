//! API keys as gatehouse's config holds them: the digest `gatehouse hash-key` prints, and
//! a `keys_file` replaced the way deployment tools replace it.

use std::path::Path;

use super::binary;

/// The SHA-256 digest of `key` that a config's `sha256:` holds, as `gatehouse hash-key`
/// prints it.
pub fn hash(key: &str) -> String {
    let output = std::process::Command::new(binary())
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(key.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let line = String::from_utf8(output.stdout).unwrap();
    line.trim()
        .strip_prefix("sha256: \"")
        .unwrap()
        .strip_suffix('"')
        .unwrap()
        .to_owned()
}

/// Writes the `keys_file` at `path` with `keys` (name, key), replacing it by a rename the
/// way deployment tools do, so the poller never reads half a file.
pub fn write_keys_file(path: &Path, keys: &[(&str, &str)]) {
    let entries: Vec<String> = keys
        .iter()
        .map(|(name, key)| format!("  - {{ name: {name}, sha256: \"{}\" }}", hash(key)))
        .collect();
    let next = path.with_extension("next");
    std::fs::write(&next, format!("keys:\n{}\n", entries.join("\n"))).unwrap();
    std::fs::rename(&next, path).unwrap();
}
