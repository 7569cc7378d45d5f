//! Records the commit gatehouse is built from, for `gatehouse --version` and the
//! `gatehouse_build_info` series: `git rev-parse` when the source is a git checkout,
//! else the `GATEHOUSE_COMMIT` environment variable (a container build copies the source
//! without `.git` and passes the commit in), else nothing, and the binary says `unknown`.
//! It never fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GATEHOUSE_COMMIT");
    let from_git = git(&["rev-parse", "--short=12", "HEAD"]);
    if from_git.is_some() {
        watch_head();
    }
    let from_env = std::env::var("GATEHOUSE_COMMIT")
        .ok()
        .map(|commit| commit.trim().to_owned())
        .filter(|commit| is_commit(commit));
    // Always set: it also overrides an unchecked GATEHOUSE_COMMIT that rustc would
    // otherwise read from the environment.
    let commit = from_git.or(from_env);
    println!(
        "cargo:rustc-env=GATEHOUSE_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}

/// A hex object name, so nothing else can reach the version line or a metric label.
fn is_commit(text: &str) -> bool {
    (7..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `git ARGS` in the package's directory: its trimmed output, if git ran and succeeded.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !text.is_empty()).then_some(text)
}

/// Runs this script again when HEAD moves: a commit, a checkout, a rebase. Only files
/// that exist are named (cargo treats a missing one as changed on every build).
fn watch_head() {
    let dir = |args: &[&str]| git(args).map(PathBuf::from);
    let (Some(git_dir), Some(common_dir)) = (
        dir(&["rev-parse", "--absolute-git-dir"]),
        dir(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ) else {
        return;
    };
    let mut watched = vec![git_dir.join("HEAD"), common_dir.join("packed-refs")];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(common_dir.join(branch));
    }
    for path in watched.iter().filter(|path| Path::exists(path)) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
