//! The checkout the tasks work in: where it is, where cargo builds, and running its other tools
//! (cargo, Python) to their end.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The repository root: recipes, fixtures and scripts are named relative to it.
pub(crate) fn root() -> PathBuf {
    // A prebuilt xtask carried to another machine (scripts/gpu/) runs from that checkout.
    match std::env::current_dir() {
        Ok(dir) if dir.join("xtask/Cargo.toml").is_file() => dir,
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
    }
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set (CI may put it outside the clone).
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Runs `command` to its end, its output going to the terminal; a failure is an error quoting
/// the command.
pub(crate) fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// `python3 SCRIPT` (repo-relative; `$PYTHON` instead of python3 when set, the interpreter
/// where the peers are installed), run from the repository root: the scripts take
/// repo-relative paths.
pub(crate) fn python(script: &str) -> Command {
    let mut command = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    command.current_dir(root()).arg(script);
    command
}
