//! `andes verify`: check a package (`andes quantize`) or a bundle (`andes export`): every
//! file against the manifest's sha256, and for a package also every packed linear's shape
//! and format against the config and the bit plan. Exits non-zero on any fault.

use std::path::PathBuf;

use andes_package::{
    is_package, is_package_bundle, load_package, verify_bundle, verify_package_bundle,
};
use burn::tensor::{DType, Device};
use clap::Args;

/// Arguments of `andes verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Package or bundle directory.
    bundle: PathBuf,
}

/// Runs `andes verify`.
pub fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let report = if is_package(&args.bundle) {
        let package = load_package(&args.bundle, &Device::flex(), DType::F32)?;
        serde_json::json!({
            "package": args.bundle.display().to_string(),
            "format_version": package.manifest.format_version,
            "target": package.manifest.target.name,
            "linears_verified": package.plan.layers.len(),
            "files_verified": package.manifest.files.len(),
            "bpw": package.manifest.weights.bpw_linears,
        })
    } else if is_package_bundle(&args.bundle) {
        let manifest = verify_package_bundle(&args.bundle)?;
        serde_json::json!({
            "bundle": args.bundle.display().to_string(),
            "format_version": manifest.format_version,
            "package_sha256": manifest.package_sha256,
            "adapters": manifest.adapters.iter().map(|a| &a.name).collect::<Vec<_>>(),
            "adapter_files_verified": manifest.files.len(),
        })
    } else {
        let manifest = verify_bundle(&args.bundle)?;
        serde_json::json!({
            "bundle": args.bundle.display().to_string(),
            "format_version": manifest.format_version,
            "adapters": manifest.adapters.iter().map(|a| &a.name).collect::<Vec<_>>(),
            "files_verified": manifest.files.len(),
        })
    };
    println!("{report}");
    Ok(())
}
