//! The quantized base of QALFT on a real (tiny) checkpoint: the fake-quantized model computes
//! exactly what its package weights compute, GPTQ calibrated on real text beats RTN, LoRA
//! trains on top, and bad plans are refused by name.
//!
//! With `ANDES_EXPORT_DIR` set, the adapter test also writes the peer-check inputs there: the
//! baked base (`base/`, an HF checkpoint whose weights are the dequantized package), the adapter
//! (`adapter/`) and andes' logits, for
//! `python3 scripts/fixtures/check_peft_export.py $ANDES_EXPORT_DIR/adapter
//!  $ANDES_EXPORT_DIR/base $ANDES_EXPORT_DIR/andes_logits.json`.

mod common;
use common::relative_error;

use std::path::{Path, PathBuf};

use andes_model::checkpoint::{SaveDtype, load_qwen3, save_qwen3};
use andes_model::generate::token_tensor;
use andes_model::lora::peft::export_peft_adapter;
use andes_model::lora::{LoraConfig, LoraError, LoraTarget};
use andes_model::quantize::{
    PtqMethod, bake_quantized_weights, calibrate, linear_names, load_scales, quantize_base,
    quantized_linears, save_scales, token_inputs,
};
use andes_model::qwen3::{Qwen3Config, Qwen3ForCausalLM};
use andes_quant::{BitPlan, QuantFormat, dequantize};
use burn::tensor::{DType, Device, Distribution, Int, Tensor};

const BASE: &str = "qwen3-tiny-untied-mha-f32";

fn fixtures() -> PathBuf {
    std::env::var_os("ANDES_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"))
}

fn load(device: &Device) -> (Qwen3Config, Qwen3ForCausalLM) {
    load_qwen3(&fixtures().join(BASE), device, DType::F32).unwrap()
}

/// Token ids of the fixture's held-out text, as `[batch, seq]` windows.
fn text_batches(device: &Device, windows: usize, seq: usize) -> Vec<Tensor<2, Int>> {
    let tokenizer =
        tokenizers::Tokenizer::from_file(fixtures().join(BASE).join("tokenizer.json")).unwrap();
    let text = std::fs::read_to_string(fixtures().join(BASE).join("eval.txt")).unwrap();
    let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    ids.chunks_exact(seq)
        .take(windows)
        .map(|w| token_tensor(w, device))
        .collect()
}

fn logits(model: &Qwen3ForCausalLM, ids: &Tensor<2, Int>) -> Vec<f32> {
    model
        .forward(ids.clone(), &mut model.new_cache())
        .unwrap()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

fn plan(model: &Qwen3ForCausalLM, format: &str) -> BitPlan {
    BitPlan::uniform(&linear_names(model), format.parse().unwrap())
}

#[test]
fn the_fake_quantized_model_computes_what_its_package_weights_compute() {
    let device = Device::flex();
    let (config, mut model) = load(&device);
    let plan = plan(&model, "int3-g32-asym");
    let reports = quantize_base(&mut model, &plan, "test", PtqMethod::Rtn, None, true).unwrap();
    assert_eq!(reports.len(), 2 * 7);
    assert!(
        reports
            .iter()
            .all(|r| r.weight_error > 0.0 && r.weight_error < 0.5)
    );
    // The package: codes and f16 scales per linear. Dequantized, they are the baked weights.
    let package = quantized_linears(&model).unwrap();
    let mut baked = model.clone();
    bake_quantized_weights(&mut baked);
    for ((name, quantized), (_, _, linear)) in package.iter().zip(baked.adapted_linears()) {
        let weight: Vec<f32> = linear
            .base_layer
            .weight
            .val()
            .transpose()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&weight), bits(&dequantize(quantized)), "{name}");
    }
    let ids = &text_batches(&device, 1, 24)[0];
    let fake = logits(&model, ids);
    assert_eq!(fake, logits(&baked, ids), "fake quant vs baked weights");
    // Saved as a Hugging Face checkpoint and read back: still the same numbers.
    let dir = tempfile::tempdir().unwrap();
    save_qwen3(&baked, &config, dir.path(), SaveDtype::F32).unwrap();
    let (_, reloaded) = load_qwen3(dir.path(), &device, DType::F32).unwrap();
    assert_eq!(fake, logits(&reloaded, ids));
    let float = logits(&load(&device).1, ids);
    assert!(
        relative_error(&fake, &float) > 1e-3,
        "quantization changed nothing"
    );
}

/// GPTQ's objective, each linear's output error on the calibration inputs,
/// `Σ_rows (w − ŵ) H (w − ŵ)ᵀ`, is what it must beat RTN on (the end-to-end error of a 2-bit
/// random-weight model is not: non-sequential GPTQ sees float inputs, not quantized ones).
#[test]
fn gptq_calibrated_on_real_text_has_a_smaller_layer_output_error_than_rtn() {
    let device = Device::flex();
    let float = load(&device).1;
    let calibration = text_batches(&device, 8, 32);
    let hessians = calibrate(&float, &token_inputs(&calibration)).unwrap();
    assert_eq!(hessians.len(), 2 * 7);
    assert!(hessians.values().all(|h| h.tokens() == 8 * 32));
    let rows = |model: &Qwen3ForCausalLM| -> Vec<Vec<f32>> {
        model
            .adapted_linears()
            .map(|(_, _, l)| {
                l.base_layer
                    .weight
                    .val()
                    .transpose()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap()
            })
            .collect()
    };
    let float_rows = rows(&float);
    let layer_errors = |init| -> Vec<f64> {
        let mut model = float.clone();
        let plan = plan(&model, "int2-g32-asym");
        quantize_base(&mut model, &plan, "test", init, Some(&hessians), false).unwrap();
        let package = quantized_linears(&model).unwrap();
        package
            .iter()
            .zip(&float_rows)
            .map(|((name, q), w)| {
                let h = hessians[name].matrix();
                let d = q.shape().in_features;
                let w_hat = dequantize(q);
                w.chunks(d)
                    .zip(w_hat.chunks(d))
                    .map(|(row, row_hat)| {
                        let delta: Vec<f64> = row
                            .iter()
                            .zip(row_hat)
                            .map(|(a, b)| f64::from(a - b))
                            .collect();
                        (0..d)
                            .map(|i| {
                                (0..d)
                                    .map(|j| delta[i] * h[i * d + j] * delta[j])
                                    .sum::<f64>()
                            })
                            .sum::<f64>()
                    })
                    .sum()
            })
            .collect()
    };
    let (rtn, gptq) = (layer_errors(PtqMethod::Rtn), layer_errors(PtqMethod::Gptq));
    for (i, (r, g)) in rtn.iter().zip(&gptq).enumerate() {
        assert!(g < r, "linear {i}: GPTQ {g} vs RTN {r}");
    }
}

#[test]
fn trained_scales_survive_a_save_and_load() {
    let device = Device::flex();
    let (_, mut model) = load(&device);
    let plan = plan(&model, "int4-g64-sym");
    quantize_base(&mut model, &plan, "test", PtqMethod::Rtn, None, true).unwrap();
    let mut trained = model.clone();
    let layer = &mut trained.model.layers[1];
    let quantizer = LoraTarget::UpProj.of_mut(layer).quantizer.as_mut().unwrap();
    quantizer.scale = quantizer.scale.clone().map(|s| s.mul_scalar(1.01));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scales.safetensors");
    save_scales(&trained, &path).unwrap();
    let ids = &text_batches(&device, 1, 16)[0];
    assert_ne!(logits(&model, ids), logits(&trained, ids));
    load_scales(&mut model, &path).unwrap();
    assert_eq!(logits(&model, ids), logits(&trained, ids));
}

#[test]
fn an_adapter_on_the_quantized_base_stays_separate_and_exports_for_peft() {
    let device = Device::flex();
    let (config, mut model) = load(&device);
    let plan = plan(&model, "int2-g64-asym");
    quantize_base(&mut model, &plan, "test", PtqMethod::Rtn, None, false).unwrap();
    let lora = LoraConfig::new(4, 8.0, &LoraTarget::ALL);
    model.add_adapter("task", &lora).unwrap();
    model.set_active_adapter(Some("task")).unwrap();
    for layer in &mut model.model.layers {
        for target in LoraTarget::ALL {
            let adapter = target.of_mut(layer).adapter_mut("task").unwrap();
            let b = adapter.lora_b.weight.clone();
            adapter.lora_b.weight = b.map(|w| w.random_like(Distribution::Normal(0.0, 0.05)));
        }
    }
    assert!(matches!(
        model.merge_adapter(),
        Err(LoraError::QuantizedBase)
    ));
    let too_big = LoraConfig::new(1000, 8.0, &[LoraTarget::QProj]);
    let err = model.add_adapter("big", &too_big).unwrap_err().to_string();
    assert!(err.contains("rank 1000") && err.contains("q_proj"), "{err}");
    if let Some(out) = std::env::var_os("ANDES_EXPORT_DIR").map(PathBuf::from) {
        let mut baked = model.clone();
        bake_quantized_weights(&mut baked);
        save_qwen3(&baked, &config, &out.join("base"), SaveDtype::F32).unwrap();
        std::fs::copy(
            fixtures().join(BASE).join("tokenizer.json"),
            out.join("base/tokenizer.json"),
        )
        .unwrap();
        export_peft_adapter(&model, "task", &out.join("adapter"), "base").unwrap();
        let ids: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % 500).collect();
        let values = logits(&model, &token_tensor(&ids, &device));
        let json = serde_json::json!({"prompt_ids": ids, "logits": values});
        std::fs::write(out.join("andes_logits.json"), json.to_string()).unwrap();
    }
}

#[test]
fn a_plan_that_names_a_missing_layer_is_refused_by_name() {
    let device = Device::flex();
    let (_, mut model) = load(&device);
    let mut plan = plan(&model, "int4-g128-sym");
    plan.layers[3].name = "model.layers.7.mlp.up_proj".into();
    let err = quantize_base(
        &mut model,
        &plan,
        "my_plan.json",
        PtqMethod::Rtn,
        None,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("my_plan.json") && err.contains("model.layers.7.mlp.up_proj"),
        "{err}"
    );
}

/// Loss sensitivity on the (random) tiny checkpoint: int8 barely moves the calibration loss
/// of any linear, binary codes move it much more over the model (on a random model a single
/// layer's binary codes may even lower it, so the ranking is checked in sum).
#[test]
fn loss_sensitivities_rank_formats() {
    use andes_model::sensitivity::{SensitivityMeasure, forward_sensitivities};

    let device = Device::default();
    let (_, model) = load(&device);
    let batches = text_batches(&device, 4, 32);
    let formats: Vec<QuantFormat> = ["int8-channel-sym", "int1-g64-sym"]
        .iter()
        .map(|f| f.parse().unwrap())
        .collect();
    let layers =
        forward_sensitivities(&model, &batches, &formats, SensitivityMeasure::Loss).unwrap();
    assert_eq!(layers.len(), 14);
    let (mut int8_total, mut int1_total) = (0.0, 0.0);
    for layer in &layers {
        let (int8, int1) = (layer.formats[0].sensitivity, layer.formats[1].sensitivity);
        assert!(int8.abs() < 1e-3, "{}: int8 {int8}", layer.name);
        assert!(layer.formats[1].bits < layer.formats[0].bits);
        int8_total += int8.abs();
        int1_total += int1;
    }
    assert!(
        int1_total > 10.0 * int8_total,
        "int1 {int1_total} vs int8 {int8_total}"
    );
}
