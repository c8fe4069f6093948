//! `cargo xtask bench vision`: vision-tower throughput of andes against transformers on this
//! machine's CPU (the GPU run of the same comparison is `scripts/gpu/vision_run.sh`).

use super::PeerComparison;
use crate::workspace::target_dir;

/// Vision-tower images/s of andes and transformers on this machine's CPU with `threads`
/// threads, for the towers of the AndesVL-0.6B (SigLIP2-base) and AndesVL-1B (AIMv2-large)
/// presets at 512×512 and at a 1024×768 image, then the ratio table.
pub(crate) fn vision(threads: usize) -> anyhow::Result<()> {
    let comparison = PeerComparison::start("vision", threads, target_dir().join("bench/vision"))?;
    for (preset, patch) in [("0.6b", 16), ("1b", 14)] {
        let config = format!("configs/models/andesvl-{preset}/config.json");
        for (height, width) in [(512, 512), (768, 1024)] {
            let (h, w) = (
                (height / patch * patch).to_string(),
                (width / patch * patch).to_string(),
            );
            let shape = [
                "--config",
                &config,
                "--height",
                &h,
                "--width",
                &w,
                "--batch",
                "1",
                "--warmup",
                "1",
                "--repeats",
                "3",
            ];
            comparison.measure(
                &format!("cpu-{preset}-{h}x{w}"),
                &shape,
                &["--attn", "sdpa"],
            )?;
        }
    }
    comparison.report()
}
