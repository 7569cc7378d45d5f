//! Which gatehouse this is: the crate version and the commit it was built from (recorded
//! by `build.rs`), for `gatehouse --version` and the `gatehouse_build_info` series.

use std::sync::LazyLock;

/// The crate version, `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit gatehouse was built from (12 hex digits from git), or `unknown` for a build
/// from source without `.git` and without `GATEHOUSE_COMMIT` set.
pub const COMMIT: &str = match option_env!("GATEHOUSE_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

/// What `gatehouse --version` prints after the name: `0.1.0 (commit 0123456789ab)`.
pub fn describe() -> &'static str {
    static DESCRIBED: LazyLock<String> = LazyLock::new(|| format!("{VERSION} (commit {COMMIT})"));
    &DESCRIBED
}
