//! `andes-package`: what andes ships to a phone: the mobile weight package of `andes quantize`
//! (`docs/package-format.md`), made by [`quantize_model`] and summarised by
//! [`PackageReport`], and the 1+N adapter bundle of `andes export` (one shared, quantized
//! base and N task adapters in the PEFT layout, `docs/bundle-format.md`). Both are written
//! atomically with a sha256 of every file and verified on read.

#![warn(missing_docs)]

mod alignment;
mod bundle;
mod error;
mod files;
mod heatmap;
mod package;
mod package_bundle;
mod quantize;
mod report;

pub use bundle::{
    BUNDLE_VERSION, BundleAdapter, BundleBase, Manifest, verify_bundle, write_bundle,
};
pub use error::PackageError;
pub use files::{MANIFEST_FILE, staging_dir};
pub use heatmap::{format_bpw, plan_heatmap_svg};
pub use package::{
    FLOAT_FILE, LoadedPackage, PACKAGE_KIND, PACKAGE_VERSION, PLAN_FILE, PackageInput,
    PackageManifest, PackageParts, QUANTIZED_FILE, TABLES_FILE, VISION_FILE, WeightSummary,
    is_package, load_model, load_package, open_package, write_package,
};
pub use package_bundle::{
    ADAPTERS_DIR, BoundAdapter, Bundle, BundledAdapter, PACKAGE_BUNDLE_VERSION, PACKAGE_DIR,
    PackageBundleManifest, TRAINED_AGAINST_FILE, TrainedAgainst, is_package_bundle,
    open_package_bundle, package_sha256, verify_package_bundle, write_package_bundle,
};
pub use quantize::{Calibration, PlanSource, QuantizeParams, quantize_model};
pub use report::{FormatShare, PackageReport, PlannedLinear, inspect_package};
