//! Sets `BUILD_GIT_COMMIT` for `ingestd --version`: the variable itself when
//! the build environment sets it (container and tarball builds without `.git`),
//! else `git rev-parse --short HEAD`, else "unknown".

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BUILD_GIT_COMMIT");
    let from_env = std::env::var("BUILD_GIT_COMMIT").ok().filter(|v| !v.trim().is_empty());
    let commit = match from_env {
        Some(commit) => commit,
        None => {
            // Rebuild when HEAD moves: HEAD itself (a branch switch), the
            // branch it points to (a commit), packed refs. `--git-path`
            // resolves worktrees and the common directory.
            for path in ["HEAD", "packed-refs"] {
                watch(git(&["rev-parse", "--git-path", path]));
            }
            if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch(git(&["rev-parse", "--git-path", &head_ref]));
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=BUILD_GIT_COMMIT={commit}");
}

fn watch(path: Option<String>) {
    let Some(path) = path else { return };
    let path = PathBuf::from(path);
    // Relative paths are relative to the package directory, where git ran.
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
