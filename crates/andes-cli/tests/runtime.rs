//! The CPU runtime against the dequantized reference path (`andes generate --reference`):
//! greedy output token for token in every packed format (linears and tables), with an adapter of a bundle, with
//! speculative decoding and with a KV budget that evicts nothing; what eviction keeps; and
//! the requests it refuses.

mod common;
use common::{andes, assert_success, fixture, json_stdout, path, repo};

use std::path::Path;

use andes_quant::QuantFormat;
use andes_runtime::decoder::PROJECTIONS;

const MODEL: &str = "qwen3-tiny-untied-mha-f32";
const PROMPT: &str = "The meaning of the word the meaning of";

/// A target profile allowing every format, so a plan can use any of them, with the embedding
/// and head tables in `tables` (float when `None`).
fn every_format_target(dir: &Path, tables: Option<&str>) -> std::path::PathBuf {
    let formats: Vec<String> = QuantFormat::all()
        .iter()
        .map(|f| format!("  {{ format = \"{f}\", execution = \"unpack\", source = \"test\" }},"))
        .collect();
    let text = format!(
        "name = \"every-format\"\ndescription = \"test profile\"\nlinear_formats = [\n{}\n]\n\
         unquantized = {{ precision = \"f32\", source = \"test\" }}\n\
         activation_bits = {{ value = 32, source = \"test\" }}\n\
         alignment_bytes = {{ value = 32, source = \"test\" }}\n\
         memory_gib = {{ value = 8, source = \"test\" }}\n\
         bandwidth_gb_s = {{ value = 50, source = \"test\" }}\n\
         compute_tops = {{ value = 2, source = \"test\" }}\n{}",
        formats.join("\n"),
        tables.map_or(String::new(), |f| format!(
            "tables = {{ format = \"{f}\", source = \"test\" }}\n"
        ))
    );
    let target = dir.join(format!("every-format-{}.toml", tables.unwrap_or("float")));
    std::fs::write(&target, text).unwrap();
    target
}

/// The tiny model packaged with every linear in `format` (round to nearest).
fn package_in(format: &str, dir: &Path, target: &Path) -> std::path::PathBuf {
    let names: Vec<serde_json::Value> = (0..2)
        .flat_map(|layer| {
            PROJECTIONS.map(|m| serde_json::json!({"name": format!("model.layers.{layer}.{m}"), "format": format}))
        })
        .collect();
    let plan = dir.join(format!("{format}.json"));
    std::fs::write(
        &plan,
        serde_json::json!({"version": 1, "layers": names}).to_string(),
    )
    .unwrap();
    let out = dir.join(format);
    let output = andes(&[
        "quantize",
        "--model",
        path(&fixture(MODEL)),
        "--plan",
        path(&plan),
        "--init",
        "rtn",
        "--target",
        path(target),
        "--out",
        path(&out),
        "--json",
    ]);
    assert_success(&output);
    out
}

fn generate(model: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "generate",
        "--model",
        path(model),
        "--prompt",
        PROMPT,
        "--greedy",
        "--max-new-tokens",
        "24",
        "--json",
    ];
    args.extend_from_slice(extra);
    json_stdout(andes(&args))
}

#[test]
fn every_format_decodes_greedy_token_for_token_like_the_dequantized_path() {
    let dir = tempfile::tempdir().unwrap();
    for format in QuantFormat::all() {
        let format = format.to_string();
        let target = every_format_target(dir.path(), Some(&format));
        let package = package_in(&format, dir.path(), &target);
        assert!(
            package.join(andes_package::TABLES_FILE).exists(),
            "{format}"
        );
        let runtime = generate(&package, &[]);
        let reference = generate(&package, &["--reference"]);
        assert_eq!(runtime["engine"], "runtime");
        assert_eq!(
            runtime["token_ids"], reference["token_ids"],
            "{format}: runtime and dequantized path differ"
        );
        assert!(runtime["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn speculation_and_a_budget_that_evicts_nothing_keep_greedy_output() {
    let dir = tempfile::tempdir().unwrap();
    let target = every_format_target(dir.path(), None);
    let package = package_in("int4-g32-asym", dir.path(), &target);
    let plain = generate(&package, &[]);
    let speculative = generate(&package, &["--speculate", "4"]);
    assert_eq!(plain["token_ids"], speculative["token_ids"]);
    assert!(
        speculative["drafted"].as_u64().unwrap() > 0,
        "{speculative}"
    );
    let roomy = generate(&package, &["--kv-budget", "1000", "--speculate", "4"]);
    assert_eq!(plain["token_ids"], roomy["token_ids"]);
    // A draft model: another int2 package of the same model proposes, the int4 one decides.
    let draft = package_in("int2-g32-asym", dir.path(), &target);
    let drafted = generate(&package, &["--draft", path(&draft), "--speculate", "3"]);
    assert_eq!(plain["token_ids"], drafted["token_ids"]);
    let proposed = drafted["drafted"].as_u64().unwrap();
    assert!(proposed > 0, "{drafted}");
    // The float checkpoint drafting for itself proposes what it then accepts.
    let model = fixture(MODEL);
    let own = generate(&model, &["--runtime", "--draft", path(&model)]);
    assert_eq!(own["drafted"], own["accepted"], "{own}");
    // a budget of 16 entries per layer holds 2 layers × 16 at the end
    let tight = generate(&package, &["--kv-budget", "16"]);
    assert_eq!(tight["kv_entries"], 32, "{tight}");
    assert!(plain["kv_entries"].as_u64().unwrap() > 32);
}

/// `--int8-activations` runs the integer products where a matrix allows them (here every
/// linear) and scores held-out text within 0.1% of the f32 products' perplexity; it is a
/// lever of the runtime, refused with `--reference`.
#[test]
fn int8_activations_cost_little_perplexity_and_belong_to_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let target = every_format_target(dir.path(), Some("int8-channel-sym"));
    // Groups of 64: every linear of the tiny model (rows of 64 or more) has a kernel.
    let package = package_in("int2-g64-asym", dir.path(), &target);
    let nll = |extra: &[&str]| eval_runtime(&package, extra)["mean_nll"].as_f64().unwrap();
    let (plain, integer) = (nll(&[]), nll(&["--int8-activations"]));
    if andes_runtime::packed::has_int8_kernels() {
        // Rounded inputs move the products a little, the model's predictions barely (6.2631
        // against 6.2628 when written; codes read wrongly move a random model's NLL by some
        // 1e-2).
        assert_ne!(plain, integer, "the integer kernels ran");
        assert!(
            (integer - plain).abs() <= 0.001 * plain,
            "{integer} against {plain}"
        );
    } else {
        assert_eq!(plain, integer, "no integer kernels: the f32 products");
    }
    assert_refused_with_reference(&package, &["--int8-activations"]);
}

/// `andes eval --runtime --json` of `package` on the first 300 tokens of the held-out GCIDE
/// text, with `extra` arguments.
fn eval_runtime(package: &Path, extra: &[&str]) -> serde_json::Value {
    let text = repo("datasets/gcide/gcide-eval.txt");
    let mut args = vec![
        "eval",
        "--model",
        path(package),
        "--runtime",
        "--text",
        path(&text),
        "--max-tokens",
        "300",
        "--json",
    ];
    args.extend_from_slice(extra);
    json_stdout(andes(&args))
}

/// `andes generate --reference` with the runtime's lever `lever` (its flag first) fails,
/// naming the flag.
fn assert_refused_with_reference(package: &Path, lever: &[&str]) {
    let mut args = vec![
        "generate",
        "--model",
        path(package),
        "--prompt",
        "hello",
        "--reference",
    ];
    args.extend_from_slice(lever);
    let refused = andes(&args);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(lever[0]), "{stderr}");
}

/// `--kv-format f16` keeps the cache in half the bytes and scores held-out text within 0.1% of
/// the f32 cache's perplexity; it is a lever of the runtime, refused with `--reference`.
#[test]
fn a_half_precision_cache_takes_half_the_bytes_for_little_perplexity() {
    let dir = tempfile::tempdir().unwrap();
    let target = every_format_target(dir.path(), None);
    let package = package_in("int4-g32-asym", dir.path(), &target);
    let eval = |format: &str| eval_runtime(&package, &["--kv-format", format]);
    let (full, half) = (eval("f32"), eval("f16"));
    assert_eq!(half["kv_format"], "f16");
    assert_eq!(
        2 * half["kv_bytes_peak"].as_u64().unwrap(),
        full["kv_bytes_peak"].as_u64().unwrap()
    );
    let (full, half) = (
        full["mean_nll"].as_f64().unwrap(),
        half["mean_nll"].as_f64().unwrap(),
    );
    assert_ne!(full, half, "the cache was rounded");
    assert!((half - full).abs() <= 0.001 * full, "{half} against {full}");
    assert_refused_with_reference(&package, &["--kv-format", "f16"]);
}

/// `andes bench cpu` measures this CPU into a profile on which `andes inspect --target`
/// estimates a package: the profile holds the measured bandwidth and a kernel figure for every
/// kind the package multiplies, and the estimate is the lower of its bandwidth and kernel
/// bounds. A kind that is none is refused by name.
#[test]
fn a_measured_cpu_profile_estimates_a_package_from_its_bandwidth_and_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let target = every_format_target(dir.path(), None);
    let package = package_in("int2-g64-asym", dir.path(), &target);
    let profile = dir.path().join("this-cpu.toml");
    let bench = |formats: &str| {
        andes(&[
            "bench",
            "cpu",
            "--formats",
            formats,
            "--seconds",
            "0.01",
            "--threads",
            "1",
            "--profile-out",
            path(&profile),
        ])
    };
    let measured = json_stdout(bench("f32"));
    let kernels = measured["kernel_gweights_s"].as_object().unwrap();
    assert!(
        kernels.contains_key("int2-g64-asym") && kernels.contains_key("f32"),
        "{measured}"
    );
    let written = andes_quant::TargetProfile::read(&profile).unwrap();
    assert_eq!(written.name, "generic-cpu-measured");
    assert_eq!(
        written.bandwidth_gb_s.value,
        measured["read_bandwidth_gb_s"].as_f64().unwrap()
    );
    let report = json_stdout(andes(&[
        "inspect",
        "--json",
        "--target",
        path(&profile),
        path(&package),
    ]));
    let cost = &report["cost_estimate"];
    assert_eq!(report["estimated_on"], "generic-cpu-measured", "{report}");
    assert!(cost.get("kernel_unmeasured").is_none(), "{cost}");
    let bounds = [
        cost["decode_bandwidth_tokens_per_s"].as_f64().unwrap(),
        cost["decode_kernel_tokens_per_s"].as_f64().unwrap(),
    ];
    assert_eq!(
        cost["decode_tokens_per_s"].as_f64().unwrap(),
        bounds[0].min(bounds[1])
    );
    // the package's own target gives no kernel figures: bandwidth alone
    let own = json_stdout(andes(&["inspect", "--json", path(&package)]));
    assert!(
        own["cost_estimate"]["decode_kernel_tokens_per_s"].is_null(),
        "{own}"
    );
    let refused = bench("int5-g64");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("int5-g64"));
}

#[test]
fn a_float_checkpoint_runs_on_the_runtime_like_burn() {
    let model = fixture(MODEL);
    let burn = generate(&model, &[]);
    let runtime = generate(&model, &["--runtime"]);
    assert!(burn.get("engine").is_none());
    assert_eq!(burn["token_ids"], runtime["token_ids"]);
}

#[test]
fn the_runtime_refuses_what_it_cannot_serve_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let target = every_format_target(dir.path(), None);
    let package = package_in("int8-channel-sym", dir.path(), &target);
    let long = "word ".repeat(600);
    let output = andes(&["generate", "--model", path(&package), "--prompt", &long]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("context") && stderr.contains("--kv-budget"),
        "{stderr}"
    );
    let evicting = json_stdout(andes(&[
        "generate",
        "--model",
        path(&package),
        "--prompt",
        &long,
        "--kv-budget",
        "64",
        "--max-new-tokens",
        "2",
        "--json",
    ]));
    assert_eq!(evicting["kv_entries"], 128, "{evicting}");
    let manifest = package.join("manifest.json");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    value["format_version"] = 99.into();
    std::fs::write(&manifest, value.to_string()).unwrap();
    let output = andes(&["generate", "--model", path(&package), "--prompt", "hi"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("manifest.json") && stderr.contains("99"),
        "{stderr}"
    );
}

/// Greedy tokens of the fixed prompt on a loaded runtime.
fn runtime_tokens(runtime: &andes_runtime::Runtime) -> Vec<u32> {
    let tokenizer = andes_data::TextTokenizer::from_model_dir(&runtime.files_dir).unwrap();
    let prompt = andes_model::completion::Prompt {
        text: PROMPT.into(),
        images: Vec::new(),
    };
    let (ids, inputs) = andes_runtime::prompt_inputs(runtime, &tokenizer, &prompt).unwrap();
    let request = andes_runtime::RunRequest {
        max_new_tokens: 6,
        decoding: andes_model::generate::Decoding::Greedy,
        stop_tokens: Vec::new(),
        kv_budget: None,
        speculation: None,
    };
    andes_runtime::generate(&runtime.decoder, &ids, inputs, &request)
        .unwrap()
        .token_ids
}

/// Copies directory `from` (files and subdirectories) to `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every file under `dir`, sorted.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A bundle runs on the runtime: an adapter by name gives the dequantized path's tokens,
/// switching A → B → A on one loaded base gives A's tokens back, an unknown name is refused;
/// and the loader, which reads untrusted bytes, survives thousands of seeded corruptions of a
/// package and of a bundle: each is refused with an error naming a file of it, or (a change
/// no checksum covers) loads and decodes exactly as the original; never a panic.
#[test]
fn bundles_switch_adapters_and_corrupt_packages_and_bundles_are_refused_by_file() {
    use andes_runtime::Runtime;
    let dir = tempfile::tempdir().unwrap();
    let (package, _, bundle, _) = common::two_adapter_bundle(dir.path());
    let on_runtime = generate(&bundle, &["--adapter", "define"]);
    let reference = generate(&bundle, &["--adapter", "define", "--reference"]);
    assert_eq!(on_runtime["token_ids"], reference["token_ids"]);

    let mut runtime = Runtime::load(&bundle).unwrap();
    runtime.use_adapter(Some(Path::new("define"))).unwrap();
    let first = runtime_tokens(&runtime);
    runtime.use_adapter(Some(Path::new("other"))).unwrap();
    runtime_tokens(&runtime);
    runtime.use_adapter(Some(Path::new("define"))).unwrap();
    assert_eq!(first, runtime_tokens(&runtime));
    let unknown = runtime
        .use_adapter(Some(Path::new("missing")))
        .unwrap_err()
        .to_string();
    assert!(
        unknown.contains("missing") && unknown.contains("define"),
        "{unknown}"
    );

    let mut refused = 0;
    for (original, rounds) in [(&package, 1200u64), (&bundle, 800)] {
        let expected = runtime_tokens(&Runtime::load(original).unwrap());
        let names = files(original);
        for seed in 0..rounds {
            let copy = dir.path().join(format!("mutated-{seed}"));
            copy_dir(original, &copy);
            let victim = copy.join(
                names[seed as usize % names.len()]
                    .strip_prefix(original)
                    .unwrap(),
            );
            let mut bytes = std::fs::read(&victim).unwrap();
            let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            match seed % 3 {
                0 if !bytes.is_empty() => {
                    let at = next() as usize % bytes.len();
                    bytes[at] ^= 1 << (next() % 8);
                }
                1 => bytes.truncate(next() as usize % (bytes.len() + 1)),
                _ if bytes.len() > 8 => {
                    // the safetensors header (or JSON) region: its first hundred bytes
                    let at = next() as usize % bytes.len().min(100);
                    bytes[at] = next() as u8;
                }
                _ => bytes.clear(),
            }
            std::fs::write(&victim, &bytes).unwrap();
            let outcome = std::panic::catch_unwind(|| match Runtime::load(&copy) {
                Ok(runtime) => Ok(runtime_tokens(&runtime)),
                Err(error) => Err(error.to_string()),
            });
            match outcome {
                Err(_) => panic!("seed {seed}: loading {} panicked", victim.display()),
                Ok(Ok(tokens)) => assert_eq!(
                    tokens,
                    expected,
                    "seed {seed}: {} loaded but decodes differently",
                    victim.display()
                ),
                Ok(Err(message)) => {
                    refused += 1;
                    assert!(
                        message.contains(copy.to_str().unwrap()),
                        "seed {seed}: the error names no file of {}: {message}",
                        copy.display()
                    );
                }
            }
            std::fs::remove_dir_all(&copy).unwrap();
        }
    }
    assert!(refused > 1500, "only {refused} of 2000 corruptions refused");
}
