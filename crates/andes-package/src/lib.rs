//! `andes-package`: what andes ships to a phone. Today: the 1+N adapter bundle (one shared,
//! quantized base and N task adapters in the PEFT layout), written atomically with a sha256 of
//! every file and verified on read. The layout is specified in `docs/bundle-format.md`.

#![warn(missing_docs)]

mod bundle;
mod error;

pub use bundle::{
    BUNDLE_VERSION, BundleAdapter, BundleBase, MANIFEST_FILE, Manifest, verify_bundle, write_bundle,
};
pub use error::PackageError;
