//! Debian packages as the source of the image sets' material (fonts, icon themes, Unicode
//! data): fetched with `apt-get download` at a pinned version and unpacked with `dpkg -x` into
//! a cache outside the repository, so that a second run reads the cache and every run reads the
//! same bytes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// A Debian package at the exact version the sets were made from (bookworm). Pinning the
/// version makes a change of the archive an error naming the package, not silently other data.
pub(crate) struct DebianPackage {
    /// The package name, as `apt-get download` takes it.
    pub name: &'static str,
    /// The exact version, as `apt-cache policy` prints it (epoch included).
    pub version: &'static str,
}

/// The folder packages are fetched and unpacked into: `$ANDES_DATA_CACHE` when set, otherwise
/// `~/.cache/andes-data`; outside the checkout so that nothing fetched can be committed.
fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("ANDES_DATA_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("HOME is not set (or set ANDES_DATA_CACHE)")?;
    Ok(PathBuf::from(home).join(".cache/andes-data"))
}

impl DebianPackage {
    /// The root of the unpacked package (its files under `usr/...`), fetching and unpacking it
    /// first when the cache lacks it.
    pub(crate) fn unpacked(&self) -> anyhow::Result<PathBuf> {
        let unpacked = cache_dir()?.join(format!("{}_{}", self.name, self.version));
        // Written last, so that an interrupted fetch or unpack is redone.
        let complete = unpacked.join(".unpacked");
        if complete.is_file() {
            return Ok(unpacked);
        }
        if unpacked.exists() {
            std::fs::remove_dir_all(&unpacked)
                .with_context(|| format!("clearing {}", unpacked.display()))?;
        }
        let download = unpacked.join(".deb");
        std::fs::create_dir_all(&download)
            .with_context(|| format!("creating {}", download.display()))?;
        self.download_into(&download)?;
        let deb = single_deb(&download)?;
        let status = Command::new("dpkg")
            .arg("-x")
            .arg(&deb)
            .arg(&unpacked)
            .status()
            .context("starting dpkg -x")?;
        if !status.success() {
            bail!("dpkg -x {} failed with {status}", deb.display());
        }
        std::fs::write(&complete, b"")
            .with_context(|| format!("writing {}", complete.display()))?;
        println!(
            "unpacked {} {} into {}",
            self.name,
            self.version,
            unpacked.display()
        );
        Ok(unpacked)
    }

    /// The Debian copyright file of the package: the licence notice that goes beside the
    /// images made from it.
    pub(crate) fn copyright(&self) -> anyhow::Result<PathBuf> {
        Ok(self
            .unpacked()?
            .join("usr/share/doc")
            .join(self.name)
            .join("copyright"))
    }

    /// The set's notice for this package: `COPYING.<name>` in the set's folder, copied from
    /// the package's copyright file.
    pub(crate) fn notice(&self) -> anyhow::Result<(String, PathBuf)> {
        Ok((format!("COPYING.{}", self.name), self.copyright()?))
    }

    /// `apt-get download NAME=VERSION` run in `dir`.
    fn download_into(&self, dir: &Path) -> anyhow::Result<()> {
        let pinned = format!("{}={}", self.name, self.version);
        let output = Command::new("apt-get")
            .args(["download", &pinned])
            .current_dir(dir)
            .output()
            .with_context(|| format!("starting apt-get download {pinned}"))?;
        if !output.status.success() {
            bail!(
                "apt-get download {pinned} failed ({}): {}\n(run `apt-get update` first; the sets \
                 are made from Debian bookworm's {} {}, which the archive must still serve)",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                self.name,
                self.version,
            );
        }
        Ok(())
    }
}

/// The one `.deb` that `apt-get download` left in `dir`.
fn single_deb(dir: &Path) -> anyhow::Result<PathBuf> {
    let debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("listing {}", dir.display()))?
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .collect();
    match debs.as_slice() {
        [deb] => Ok(deb.clone()),
        _ => bail!("expected one .deb in {}, found {debs:?}", dir.display()),
    }
}
