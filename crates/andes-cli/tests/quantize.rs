//! End-to-end runs of the `andes` binary on the bundled tiny checkpoints.
//!
//! `andes quantize` (with `verify`, `inspect` and `eval` of its packages): the Dimensity 9500
//! package at 1.8 bpw, generic-cpu's quantized tables, AndesVL packages, image calibration,
//! and the refusals.

mod common;

use common::{andes, fixture, json_stdout, path, repo};
use std::path::Path;
use std::process::Output;

fn quantize_tiny(out: &Path, extra: &[&str]) -> Output {
    let cache = out.with_extension("cache");
    let (model, calib) = (
        fixture("qwen3-tiny-untied-mha-f32"),
        repo("datasets/gcide/gcide-sample.txt"),
    );
    let mut args = vec![
        "quantize",
        "--model",
        path(&model),
        "--calib",
        path(&calib),
        "--cache",
        path(&cache),
        "--out",
        path(out),
        "--json",
    ];
    args.extend(extra);
    andes(&args)
}

#[test]
fn quantize_for_dimensity9500_at_1_8_bpw_verifies_and_rejects_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("pkg");
    // The loss measure's plan of this checkpoint has ternary rows (five codes a byte), whose
    // odd sizes need fillers for the alignment checked below.
    let summary = json_stdout(quantize_tiny(
        &package,
        &[
            "--target",
            "dimensity9500",
            "--bpw",
            "1.8",
            "--sensitivity",
            "loss",
        ],
    ));
    let bpw = summary["bpw"].as_f64().unwrap();
    assert!(bpw <= 1.8 && bpw > 1.5, "bpw over the linears {bpw}");
    assert!(
        summary["bpw_package"].as_f64().unwrap() > bpw,
        "embeddings are in f16"
    );
    let verified = json_stdout(andes(&["verify", path(&package)]));
    assert_eq!(verified["linears_verified"], 14);
    // Every tensor of every weight file starts on the profile's 64-byte alignment; odd-sized
    // packed rows need fillers for that.
    for file in ["quantized_linears.safetensors", "float_tensors.safetensors"] {
        let bytes = std::fs::read(package.join(file)).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
        for (name, entry) in header.iter().filter(|(n, _)| !n.starts_with("__")) {
            let start = 8 + header_len + entry["data_offsets"][0].as_u64().unwrap() as usize;
            assert_eq!(start % 64, 0, "{file}: `{name}` starts at byte {start}");
        }
        if file.starts_with("quantized") {
            assert!(header.keys().any(|n| n.starts_with("__pad__.")));
        }
    }
    let inspected = json_stdout(andes(&["inspect", path(&package), "--json"]));
    assert_eq!(inspected["bpw"], summary["bpw"]);
    assert!(
        inspected["cost_estimate"]["decode_tokens_per_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    // The package evaluates exactly like the float model quantized in memory by its plan
    // (float parts kept in f32 for the comparison: the shipped profile stores them in f16).
    let f32_profile = dir.path().join("d9500-f32.toml");
    let profile = std::fs::read_to_string(repo("configs/targets/dimensity9500.toml")).unwrap();
    std::fs::write(
        &f32_profile,
        profile.replace("precision = \"f16\"", "precision = \"f32\""),
    )
    .unwrap();
    let eval = |model: &Path, extra: &[&str]| {
        let mut args = vec!["eval", "--model", path(model), "--json", "--text"];
        let text = repo("datasets/gcide/gcide-eval.txt");
        args.push(path(&text));
        args.extend(extra);
        json_stdout(andes(&args))
    };
    let plan = package.join("bit_plan.json");
    let rtn_package = dir.path().join("pkg-rtn");
    json_stdout(quantize_tiny(
        &rtn_package,
        &[
            "--target",
            path(&f32_profile),
            "--plan",
            path(&plan),
            "--init",
            "rtn",
        ],
    ));
    let from_package = eval(&rtn_package, &[]);
    let in_memory = eval(
        &fixture("qwen3-tiny-untied-mha-f32"),
        &["--plan", path(&plan), "--init", "rtn"],
    );
    assert_eq!(from_package["mean_nll"], in_memory["mean_nll"]);
    assert_eq!(from_package["bpw_linears"], in_memory["bpw_linears"]);

    // A flipped byte, a truncated file, an extra file: each rejected, naming the file.
    let tampered = dir.path().join("tampered");
    std::fs::rename(&rtn_package, &tampered).unwrap();
    let file = tampered.join("quantized_linears.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&file, &bytes).unwrap();
    let output = andes(&["verify", path(&tampered)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("quantized_linears.safetensors"),
        "{stderr}"
    );
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let output = andes(&["verify", path(&tampered)]);
    assert!(!output.status.success());
}

/// On generic-cpu the embedding and head tables are packed in int8 per channel beside the
/// linears: out of the float file, counted in the manifest, evaluated within int8's rounding of
/// the float-table package, and a table whose format the manifest does not name is refused.
#[test]
fn generic_cpu_packages_quantize_the_tables_and_verify_checks_their_format() {
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("pkg");
    let float_tables = dir.path().join("pkg-float-tables");
    json_stdout(quantize_tiny(
        &package,
        &["--target", "generic-cpu", "--bpw", "4"],
    ));
    let profile = std::fs::read_to_string(repo("configs/targets/generic-cpu.toml")).unwrap();
    let without_tables: String = profile
        .lines()
        .filter(|line| !line.starts_with("tables"))
        .map(|line| format!("{line}\n"))
        .collect();
    let float_profile = dir.path().join("generic-cpu-float-tables.toml");
    std::fs::write(&float_profile, without_tables).unwrap();
    let plan = package.join("bit_plan.json");
    json_stdout(quantize_tiny(
        &float_tables,
        &["--target", path(&float_profile), "--plan", path(&plan)],
    ));

    let manifest = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
    };
    let (packed, float) = (manifest(&package), manifest(&float_tables));
    // two [512, 64] tables, untied: one byte a code and an f16 scale a row
    assert_eq!(packed["weights"]["table_parameters"], 2 * 512 * 64);
    assert!(packed["weights"]["table_bytes"].as_u64().unwrap() >= 2 * 512 * (64 + 2));
    assert_eq!(
        float["weights"]["float_parameters"].as_u64().unwrap(),
        packed["weights"]["float_parameters"].as_u64().unwrap() + 2 * 512 * 64
    );
    assert!(!float_tables.join("quantized_tables.safetensors").exists());
    let floats = tensors(&package.join("float_tensors.safetensors"));
    assert!(
        !floats.contains_key("model.embed_tokens.weight") && !floats.contains_key("lm_head.weight")
    );
    let verified = json_stdout(andes(&["verify", path(&package)]));
    assert_eq!(verified["linears_verified"], 14);

    let nll = |model: &Path| {
        let text = repo("datasets/gcide/gcide-eval.txt");
        let args = [
            "eval",
            "--model",
            path(model),
            "--json",
            "--text",
            path(&text),
        ];
        json_stdout(andes(&args))["mean_nll"].as_f64().unwrap()
    };
    let (with_packed, with_float) = (nll(&package), nll(&float_tables));
    assert!(with_packed != with_float, "the tables are rounded");
    assert!(
        (with_packed - with_float).abs() < 0.01 * with_float,
        "{with_packed} vs {with_float}"
    );

    // The manifest is the one file no checksum covers: a table format it does not name is
    // refused, naming the tables' file.
    let mut edited = packed.clone();
    edited["target"]["tables"]["format"] = "int4-channel-sym".into();
    std::fs::write(package.join("manifest.json"), edited.to_string()).unwrap();
    let output = andes(&["verify", path(&package)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("quantized_tables.safetensors")
            && stderr.contains("int4-channel-sym"),
        "{stderr}"
    );
    edited["target"].as_object_mut().unwrap().remove("tables");
    std::fs::write(package.join("manifest.json"), edited.to_string()).unwrap();
    let output = andes(&["verify", path(&package)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("keeps the tables float"),
        "{stderr}"
    );
}

/// The tensors of a safetensors file, by name, as (dtype, shape, bytes).
fn tensors(path: &Path) -> std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let value = (
                format!("{:?}", view.dtype()),
                view.shape().to_vec(),
                view.data().to_vec(),
            );
            (name, value)
        })
        .collect()
}

/// `andes quantize MODEL` for dimensity9500 at 3 bpw, calibrated on 8 windows of 64 tokens
/// of the held-out GCIDE prose, sensitivities cached in `cache`, plus `extra` arguments.
fn quantize_at_3_bpw(model: &Path, out: &Path, cache: &Path, extra: &[&str]) -> Output {
    let calib = repo("datasets/gcide/gcide-eval.txt");
    let mut args = vec![
        "quantize",
        "--model",
        path(model),
        "--target",
        "dimensity9500",
        "--bpw",
        "3",
        "--calib",
        path(&calib),
        "--seq-len",
        "64",
        "--calib-windows",
        "8",
        "--cache",
        path(cache),
        "--out",
        path(out),
        "--json",
    ];
    args.extend(extra);
    andes(&args)
}

/// Each sensitivity measure plans from its own cache file: a second plan with another measure
/// and the same cache measures afresh (the cache once handed it the first measure's values),
/// the manifest names the measure, and the divergence is never negative.
#[test]
fn each_sensitivity_measure_plans_from_its_own_cache_file() {
    let dir = tempfile::tempdir().unwrap();
    let (model, cache) = (
        fixture("qwen3-tiny-untied-mha-f32"),
        dir.path().join("cache"),
    );
    let mut plans = Vec::new();
    for measure in ["loss", "divergence"] {
        let out = dir.path().join(measure);
        json_stdout(quantize_at_3_bpw(
            &model,
            &out,
            &cache,
            &["--sensitivity", measure],
        ));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["quantization"]["sensitivity"], measure);
        let plan: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("bit_plan.json")).unwrap()).unwrap();
        let sensitivities: Vec<f64> = plan["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|layer| layer["sensitivity"].as_f64().unwrap())
            .collect();
        plans.push(sensitivities);
    }
    assert_ne!(
        plans[0], plans[1],
        "the second measure read the first's cache"
    );
    assert!(plans[1].iter().all(|&s| s >= -1e-6), "{:?}", plans[1]);
    let mut files: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("sensitivity-"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].starts_with("sensitivity-divergence-"), "{files:?}");
    assert!(files[1].starts_with("sensitivity-loss-"), "{files:?}");
}

/// An AndesVL model quantizes as its language model does (the tiny AndesVL's language model
/// is the tiny Qwen3 fixture: same plan, the same packed-linear and float files byte for byte),
/// its vision tower and projector ship in f16, and the package verifies and generates from an
/// image.
#[test]
fn an_andesvl_package_quantizes_its_language_model_and_keeps_the_vision_side() {
    let dir = tempfile::tempdir().unwrap();
    let (vl, lm) = (dir.path().join("vl"), dir.path().join("lm"));
    let cache = dir.path().join("cache");
    let quantize =
        |model: &Path, out: &Path| json_stdout(quantize_at_3_bpw(model, out, &cache, &[]));
    let vl_summary = quantize(&repo("fixtures/andesvl-tiny"), &vl);
    let lm_summary = quantize(&fixture("qwen3-tiny-untied-mha-f32"), &lm);
    assert_eq!(vl_summary["bpw"], lm_summary["bpw"]);
    // Byte for byte: two processes (two hash seeds) write the same files.
    for file in ["quantized_linears.safetensors", "float_tensors.safetensors"] {
        let (a, b) = (std::fs::read(vl.join(file)), std::fs::read(lm.join(file)));
        assert!(a.unwrap() == b.unwrap(), "{file} differs");
    }
    let vision = tensors(&vl.join("vision_tensors.safetensors"));
    let source = tensors(&repo("fixtures/andesvl-tiny/model.safetensors"));
    let expected: Vec<&String> = source
        .keys()
        .filter(|name| !name.starts_with("language_model."))
        .collect();
    assert_eq!(vision.keys().collect::<Vec<_>>(), expected);
    for (name, (dtype, shape, bytes)) in &vision {
        assert_eq!(dtype, "F16", "{name}");
        let (_, source_shape, source_bytes) = &source[name];
        assert_eq!(shape, source_shape, "{name}");
        let halves = source_bytes.chunks(4).map(|b| {
            let value = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            half::f16::from_f32(value).to_le_bytes()
        });
        assert!(
            halves.flatten().eq(bytes.iter().copied()),
            "{name} is not the f16 of the source"
        );
    }
    assert!(vl_summary["weights"]["vision_parameters"].as_u64().unwrap() > 0);
    let verified = json_stdout(andes(&["verify", path(&vl)]));
    assert_eq!(verified["linears_verified"], 14);
    let image = repo("datasets/images/digits/png/0007.png");
    let out = json_stdout(andes(&[
        "generate",
        "--model",
        path(&vl),
        "--image",
        path(&image),
        "--prompt",
        "Which digit?",
        "--max-new-tokens",
        "3",
        "--greedy",
        "--json",
    ]));
    assert!(!out["token_ids"].as_array().unwrap().is_empty());
}

/// `--calib-images` adds image-text records to an AndesVL model's calibration: its language
/// model's GPTQ codes change (the linears saw visual tokens too) and the manifest names the
/// file; on a text model the flag is refused.
#[test]
fn image_calibration_moves_the_andesvl_codes_and_is_refused_on_text_models() {
    let dir = tempfile::tempdir().unwrap();
    let images = repo("datasets/images/digits/chat-train.jsonl");
    let cache = dir.path().join("cache");
    let quantize = |model: &Path, out: &Path, with_images: bool| {
        let gptq = ["--sensitivity", "hessian", "--init", "gptq"];
        let images = [
            "--calib-images",
            path(&images),
            "--calib-image-records",
            "8",
        ];
        let extra: Vec<&str> = gptq
            .iter()
            .chain(if with_images { &images[..] } else { &[] })
            .copied()
            .collect();
        quantize_at_3_bpw(model, out, &cache, &extra)
    };
    let andesvl = repo("fixtures/andesvl-tiny");
    let (text, both) = (dir.path().join("text"), dir.path().join("both"));
    json_stdout(quantize(&andesvl, &text, false));
    json_stdout(quantize(&andesvl, &both, true));
    let codes = |pkg: &Path| std::fs::read(pkg.join("quantized_linears.safetensors")).unwrap();
    assert!(
        codes(&text) != codes(&both),
        "image calibration changed no code"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(both.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["quantization"]["calibration_image_records"], 8);
    let refused = quantize(
        &fixture("qwen3-tiny-untied-mha-f32"),
        &dir.path().join("no"),
        true,
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("calibrates AndesVL models"), "{stderr}");
}

#[test]
fn quantize_refuses_bad_budgets_calibration_and_targets_leaving_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pkg");
    let stderr = |output: Output| {
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let error = stderr(quantize_tiny(
        &out,
        &["--target", "dimensity9500", "--bpw", "1.0"],
    ));
    assert!(
        error.contains("below the smallest the allowed formats reach"),
        "{error}"
    );
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let error = stderr(andes(&[
        "quantize",
        "--model",
        path(&fixture("qwen3-tiny-untied-mha-f32")),
        "--target",
        "dimensity9500",
        "--bpw",
        "1.8",
        "--calib",
        path(&empty),
        "--out",
        path(&out),
    ]));
    assert!(error.contains("empty.txt"), "{error}");
    let error = stderr(quantize_tiny(&out, &["--target", "tpu9000", "--bpw", "4"]));
    assert!(
        error.contains("tpu9000") && error.contains("dimensity9500"),
        "{error}"
    );
    let small = dir.path().join("small.toml");
    let profile = std::fs::read_to_string(repo("configs/targets/dimensity9500.toml")).unwrap();
    let profile = profile.replace(
        "memory_gib = { value = 4,",
        "memory_gib = { value = 0.0001,",
    );
    std::fs::write(&small, profile).unwrap();
    let error = stderr(quantize_tiny(
        &out,
        &["--target", path(&small), "--bpw", "1.8"],
    ));
    assert!(
        error.contains("does not fit") && error.contains("MiB"),
        "{error}"
    );
    assert!(!out.exists(), "nothing is left behind");
    assert!(!dir.path().join(".tmp-pkg").exists());
}

#[test]
fn quantize_loads_the_model_in_the_dtype_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let eval = |package: &Path| -> f64 {
        let text = repo("datasets/gcide/gcide-eval.txt");
        let output = andes(&[
            "eval",
            "--model",
            path(package),
            "--documents",
            path(&text),
            "--window",
            "64",
            "--json",
        ]);
        json_stdout(output)["perplexity"].as_f64().unwrap()
    };
    let mut perplexities = Vec::new();
    for dtype in ["f32", "bf16"] {
        let package = dir.path().join(dtype);
        let summary = json_stdout(quantize_tiny(
            &package,
            &["--target", "dimensity9500", "--bpw", "4", "--dtype", dtype],
        ));
        assert!(summary["bpw"].as_f64().unwrap() > 0.0);
        perplexities.push(eval(&package));
    }
    // bf16 rounds the f32 fixture's weights before GPTQ sees them: a small change, not a
    // different model.
    let (f32_ppl, bf16_ppl) = (perplexities[0], perplexities[1]);
    assert!(
        (bf16_ppl / f32_ppl - 1.0).abs() < 0.05,
        "f32 {f32_ppl} vs bf16 {bf16_ppl}"
    );
}
