//! GPTQ against the independent PyTorch reference of `scripts/fixtures/make_gptq_fixture.py`
//! (fixtures in `fixtures/gptq/`, layout in its README):
//!
//! * on a synthetic 16×72 layer, every code, scale, zero point and dequantized weight equals the
//!   reference's, for three formats with and without act_order and with lazy batches that split
//!   groups;
//! * on two layers of a trained tiny Qwen3 with activations from real text, GPTQ's layer-output
//!   error is below RTN's, in sample and on held-out tokens, and equals the reference's numbers.
//!
//! Both sides compute the Hessian, the factorization and the error feedback in f64 and round each
//! column on the same f32 grid, so codes are expected to be identical, not merely close: with
//! differences of order 1e-16 in the f64 weights, a code flips only if a weight sits within that
//! distance of a rounding boundary.

use andes_quant::{
    GptqOptions, Hessian, QuantFormat, WeightShape, dequantize, quantize_gptq, quantize_rtn,
};
use std::path::PathBuf;

use half::f16;
use safetensors::{Dtype, SafeTensors};

/// One fixture file: its bytes and the JSON of its `andes` metadata entry.
struct Fixture {
    name: String,
    bytes: Vec<u8>,
    /// The generator's description of the file (cases, provenance, reference numbers).
    meta: serde_json::Value,
}

impl Fixture {
    /// Opens `fixtures/gptq/<name>` of the workspace.
    fn open(name: &str) -> Fixture {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/gptq")
            .join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|err| {
            panic!(
                "cannot read {}: {err}; regenerate with python3 scripts/fixtures/make_gptq_fixture.py",
                path.display()
            )
        });
        let (_, metadata) = SafeTensors::read_metadata(&bytes).expect("a safetensors file");
        let andes = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("andes"))
            .unwrap_or_else(|| panic!("{name} has no `andes` metadata entry"));
        let meta = serde_json::from_str(andes).expect("`andes` metadata is JSON");
        Fixture {
            name: name.to_string(),
            bytes,
            meta,
        }
    }

    fn tensor(&self, key: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
        let file = SafeTensors::deserialize(&self.bytes).expect("a safetensors file");
        let view = file
            .tensor(key)
            .unwrap_or_else(|err| panic!("{}: tensor {key}: {err}", self.name));
        (view.dtype(), view.shape().to_vec(), view.data().to_vec())
    }

    /// An F32 or F16 tensor as f32 (F16 values are exact in f32), with its shape.
    fn f32s(&self, key: &str) -> (Vec<f32>, Vec<usize>) {
        let (dtype, shape, data) = self.tensor(key);
        let values = match dtype {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| f32::from(f16::from_le_bytes([b[0], b[1]])))
                .collect(),
            other => panic!(
                "{}: tensor {key} is {other:?}, expected F32 or F16",
                self.name
            ),
        };
        (values, shape)
    }

    /// An F16 tensor, flattened.
    fn f16s(&self, key: &str) -> Vec<f16> {
        let (dtype, _, data) = self.tensor(key);
        assert_eq!(dtype, Dtype::F16, "{}: tensor {key}", self.name);
        data.chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    /// A U8 tensor, flattened.
    fn u8s(&self, key: &str) -> Vec<u8> {
        let (dtype, _, data) = self.tensor(key);
        assert_eq!(dtype, Dtype::U8, "{}: tensor {key}", self.name);
        data
    }
}

fn hessian_of(x: &[f32], in_features: usize) -> Hessian {
    let mut h = Hessian::new(in_features);
    h.accumulate(x, x.len() / in_features)
        .expect("finite activations");
    h
}

/// `‖X Wᵀ − X Ŵᵀ‖_F / ‖X Wᵀ‖_F` in f64, for `x` `[tokens, in]` and weights `[out, in]`.
fn output_error(x: &[f32], w: &[f32], w_hat: &[f32], in_features: usize) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for token in x.chunks(in_features) {
        for (row, row_hat) in w.chunks(in_features).zip(w_hat.chunks(in_features)) {
            let (mut y, mut dy) = (0.0f64, 0.0f64);
            for ((&xi, &wi), &hi) in token.iter().zip(row).zip(row_hat) {
                y += f64::from(xi) * f64::from(wi);
                dy += f64::from(xi) * (f64::from(wi) - f64::from(hi));
            }
            diff += dy * dy;
            norm += y * y;
        }
    }
    (diff / norm).sqrt()
}

#[test]
fn gptq_matches_the_pytorch_reference_code_for_code() {
    let fixture = Fixture::open("gptq-parity.safetensors");
    let (w, w_shape) = fixture.f32s("weight");
    let (x, x_shape) = fixture.f32s("activations");
    let shape = WeightShape::new(w_shape[0], w_shape[1]);
    let hessian = hessian_of(&x, x_shape[1]);
    let cases = fixture.meta["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 7);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let format: QuantFormat = case["format"]
            .as_str()
            .expect("format")
            .parse()
            .expect("valid");
        let options = GptqOptions {
            damp_percent: case["damp_percent"].as_f64().expect("damp_percent"),
            act_order: case["act_order"].as_bool().expect("act_order"),
            block_size: case["block_size"].as_u64().expect("block_size") as usize,
        };
        let q = quantize_gptq(&w, shape, &hessian, format, options).expect("quantizes");
        let codes = q.codes();
        let expected = fixture.u8s(&format!("{name}.codes"));
        let same = codes.iter().zip(&expected).filter(|(a, b)| a == b).count();
        println!("{name:26} {same}/{} codes identical", codes.len());
        assert_eq!(codes, expected, "{name}: codes");
        let scale_bits = |s: &[half::f16]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            scale_bits(q.scales()),
            scale_bits(&fixture.f16s(&format!("{name}.scales"))),
            "{name}: scales"
        );
        let zeros: Vec<u8> = q.zero_points().iter().map(|&z| z as u8).collect();
        assert_eq!(
            zeros,
            fixture.u8s(&format!("{name}.zeros")),
            "{name}: zero points"
        );
        let (reference, _) = fixture.f32s(&format!("{name}.dequantized"));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&dequantize(&q)),
            bits(&reference),
            "{name}: dequantized"
        );
    }
}

#[test]
fn gptq_beats_rtn_on_the_output_of_real_qwen3_layers() {
    let fixture = Fixture::open("real-layers.safetensors");
    let heldout_from = fixture.meta["calibration_tokens_heldout"]
        .as_u64()
        .expect("split") as usize;
    println!(
        "output error ‖XWᵀ − XŴᵀ‖/‖XWᵀ‖ (calibration = evaluation: 512 tokens; held-out: 256/256)"
    );
    for layer in ["q_proj", "down_proj"] {
        let (w, w_shape) = fixture.f32s(&format!("{layer}.weight"));
        let (x, x_shape) = fixture.f32s(&format!("{layer}.inputs"));
        let (shape, d) = (WeightShape::new(w_shape[0], w_shape[1]), x_shape[1]);
        let (calibration, heldout) = x.split_at(heldout_from * d);
        let all_tokens = hessian_of(&x, d);
        let first_half = hessian_of(calibration, d);
        for name in ["int4-g32-sym", "int3-g32-sym", "int2-g32-sym"] {
            let format: QuantFormat = name.parse().expect("valid");
            let gptq = |h: &Hessian| {
                let q = quantize_gptq(&w, shape, h, format, GptqOptions::default());
                dequantize(&q.expect("quantizes"))
            };
            let rtn = dequantize(&quantize_rtn(&w, shape, format).expect("quantizes"));
            let (gptq_all, gptq_first_half) = (gptq(&all_tokens), gptq(&first_half));
            let ours = [
                ("rtn", output_error(&x, &w, &rtn, d)),
                ("gptq", output_error(&x, &w, &gptq_all, d)),
                ("rtn_heldout", output_error(heldout, &w, &rtn, d)),
                (
                    "gptq_heldout",
                    output_error(heldout, &w, &gptq_first_half, d),
                ),
            ];
            println!(
                "{layer:9} {name}: gptq {:.5} rtn {:.5} | held-out gptq {:.5} rtn {:.5}",
                ours[1].1, ours[0].1, ours[3].1, ours[2].1
            );
            assert!(
                ours[1].1 < ours[0].1,
                "{layer} {name}: GPTQ does not beat RTN in sample"
            );
            assert!(
                ours[3].1 < ours[2].1,
                "{layer} {name}: GPTQ does not beat RTN held out"
            );
            let reference = &fixture.meta["errors"][format!("{layer}/{name}")];
            for (key, value) in ours {
                let expected = reference[key].as_f64().expect("reference error");
                assert!(
                    (value - expected).abs() <= 1e-9 * expected,
                    "{layer} {name} {key}: {value} vs reference {expected}"
                );
            }
        }
    }
}
