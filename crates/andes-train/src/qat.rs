//! The `qat` stage's part of a run: the quantization grid the base's latent weights train
//! through. A fresh run quantizes the starting checkpoint per `[quant]` (GPTQ or RTN, the
//! scales trainable with LSQ when asked) and keeps training every weight; a resumed run puts
//! back the grid its checkpoint saved (scales and zero points exactly), since the zero points
//! of a grid fitted again to moved weights would differ.

use andes_model::Model;
use andes_model::quantize::{load_grid, quantize_base_with};

use crate::adapters::report_quantization;
use crate::error::TrainError;
use crate::recipe::QuantSection;
use crate::trainer::StageSetup;

/// Installs the grid on `model`'s language model (an AndesVL model's vision tower and projector
/// stay float, as its package keeps them): from the saved grid of the checkpoint a resumed run
/// continues from, or else quantized per `quant` (GPTQ calibrated on the run's training
/// windows; image conversations give it none, so they take `init = "rtn"`), its report written
/// to the run directory.
pub(crate) fn setup(
    model: &mut Model,
    quant: &QuantSection,
    run: &StageSetup<'_>,
) -> Result<(), TrainError> {
    let text_model = model.language_model_mut();
    match run.resume_from {
        Some(dir) => {
            load_grid(text_model, dir, quant.learn_scales)?;
            Ok(())
        }
        None => {
            let summary = quantize_base_with(
                text_model,
                &quant.base_quantization(),
                run.calibration,
                run.recipe.train.batch_size,
            )?;
            report_quantization(&summary, run)
        }
    }
}
