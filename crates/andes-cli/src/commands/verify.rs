//! `andes verify`: check a bundle's files against the sha256 sums of its manifest.

use std::path::PathBuf;

use andes_package::verify_bundle;
use clap::Args;

/// Arguments of `andes verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Bundle directory written by `andes export`.
    bundle: PathBuf,
}

/// Runs `andes verify`.
pub fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let manifest = verify_bundle(&args.bundle)?;
    println!(
        "{}",
        serde_json::json!({
            "bundle": args.bundle.display().to_string(),
            "format_version": manifest.format_version,
            "adapters": manifest.adapters.iter().map(|a| &a.name).collect::<Vec<_>>(),
            "files_verified": manifest.files.len(),
        })
    );
    Ok(())
}
