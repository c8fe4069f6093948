//! `andes bench`: throughput of a model shape with random weights (forward, train, vision
//! tower, matmul).

use std::path::PathBuf;
use std::time::Instant;

use andes_model::generate::token_tensor;
use andes_model::precision::cast_parameters;
use andes_model::qwen3::{Qwen3Config, Qwen3ForCausalLM};
use andes_model::replayed_decode::ReplayedDecoder;
use andes_model::vision::{VisionConfig, VisionTransformer};
use burn::module::Module;
use burn::tensor::{Device, Distribution, Int, Tensor};
use clap::{Args, Subcommand};

use crate::model_args::RuntimeArgs;

/// Arguments of `andes bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchKind,
}

#[derive(Subcommand, Debug)]
enum BenchKind {
    /// Prefill tokens/s over a prompt, then decode tokens/s one token at a time with the KV cache.
    Forward(ForwardArgs),
    /// TFLOP/s of one square matrix product, the ceiling under every linear layer.
    Matmul(MatmulArgs),
    /// Training tokens/s of a model shape (random weights and tokens, AdamW, full backward).
    Train(TrainBenchArgs),
    /// Vision-tower images/s at one native resolution (random weights and pixels).
    Vision(VisionBenchArgs),
}

#[derive(Args, Debug)]
struct VisionBenchArgs {
    /// A SigLIP2 / AIMv2 config.json, or an AndesVL one (its vision_config is used).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Image height in pixels (a multiple of the patch size).
    #[arg(long, default_value_t = 512)]
    height: usize,
    /// Image width in pixels (a multiple of the patch size).
    #[arg(long, default_value_t = 512)]
    width: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Untimed passes first (kernel compilation, autotuning).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed passes; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

#[derive(Args, Debug)]
struct TrainBenchArgs {
    /// A Qwen3 config.json giving the shape.
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 1024)]
    seq_len: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps; the median is reported.
    #[arg(long, default_value_t = 5)]
    steps: usize,
}

#[derive(Args, Debug)]
struct MatmulArgs {
    /// Side of the square matrices.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Untimed products first (kernel compilation, autotuning).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed products; the median is reported.
    #[arg(long, default_value_t = 20)]
    repeats: usize,
}

#[derive(Args, Debug)]
struct ForwardArgs {
    /// A Qwen3 config.json giving the shape (weights are random).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Prompt tokens processed in one forward pass.
    #[arg(long, default_value_t = 512)]
    prompt_len: usize,
    /// Tokens decoded after the prompt.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Untimed runs first (kernel compilation, autotuning).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Decode by replaying one captured device graph a token (fixed KV cache), as `andes
    /// generate --greedy` does on cuda; the time to capture the graph counts as decode time.
    #[arg(long)]
    replay: bool,
}

/// Runs `andes bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchKind::Forward(args) => forward(args),
        BenchKind::Matmul(args) => matmul(args),
        BenchKind::Train(args) => train_steps(args),
        BenchKind::Vision(args) => vision(args),
    }
}

fn vision(args: VisionBenchArgs) -> anyhow::Result<()> {
    let config = VisionConfig::from_file(&args.config)?;
    let (device, dtype) = args.runtime.resolve()?;
    let tower = cast_parameters(VisionTransformer::new(&config, &device), dtype);
    let pixels = Tensor::<4>::random(
        [args.batch, 3, args.height, args.width],
        Distribution::Normal(0.0, 1.0),
        &device,
    )
    .cast(dtype);
    let mut seconds = Vec::new();
    for run in 0..args.warmup + args.repeats {
        let start = Instant::now();
        // Reading back a sum of all features waits for the whole forward pass.
        tower.forward(pixels.clone())?.sum().into_data();
        if run >= args.warmup {
            seconds.push(start.elapsed().as_secs_f64());
        }
    }
    let time = median(&mut seconds);
    let patch = config.spec().patch_size;
    let report = serde_json::json!({
        "peer": "andes",
        "model_type": config.model_type(),
        "device": args.runtime.device,
        "dtype": args.runtime.dtype,
        "height": args.height,
        "width": args.width,
        "patches": (args.height / patch) * (args.width / patch),
        "batch": args.batch,
        "params": tower.num_params(),
        "ms_median": time * 1e3,
        "images_per_s": args.batch as f64 / time,
    });
    println!("{report}");
    Ok(())
}

fn train_steps(args: TrainBenchArgs) -> anyhow::Result<()> {
    use andes_model::loss::masked_next_token_nll;
    use andes_train::optim::adamw;
    use andes_train::recipe::OptimizerSection;
    use burn::optim::GradientsParams;
    use burn::tensor::{Bool, TensorData};

    let config = Qwen3Config::from_file(&args.config)?;
    let (device, dtype) = args.runtime.resolve()?;
    let device = device.autodiff();
    let mut model = cast_parameters(Qwen3ForCausalLM::new(&config, &device)?, dtype);
    let section = OptimizerSection {
        lr: 1e-4,
        weight_decay: 0.1,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        grad_clip: None,
    };
    let mut optimizer = adamw(&model, &section);
    let (rows, seq) = (args.batch, args.seq_len);
    let ids: Vec<i64> = (0..rows * (seq + 1))
        .map(|i| ((i * 7919 + 13) % config.vocab_size) as i64)
        .collect();
    let window = |offset: usize| -> Vec<i64> {
        (0..rows)
            .flat_map(|r| ids[r * (seq + 1) + offset..r * (seq + 1) + offset + seq].to_vec())
            .collect()
    };
    let inputs: Tensor<2, Int> =
        Tensor::from_data(TensorData::new(window(0), [rows, seq]), &device);
    let targets: Tensor<2, Int> =
        Tensor::from_data(TensorData::new(window(1), [rows, seq]), &device);
    let mask: Tensor<2, Bool> = Tensor::from_data(
        TensorData::new(vec![true; rows * seq], [rows, seq]),
        &device,
    );
    let mut seconds = Vec::new();
    for step in 0..args.warmup + args.steps {
        let start = Instant::now();
        let hidden = model.forward_hidden(inputs.clone(), &mut model.new_cache())?;
        let loss = masked_next_token_nll(&model, hidden, targets.clone(), mask.clone())
            .div_scalar((rows * seq) as f64);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(1e-4, model, grads);
        // Waits for every queued kernel of the step, the optimizer updates included.
        device
            .sync()
            .map_err(|e| anyhow::anyhow!("device error: {e:?}"))?;
        if step >= args.warmup {
            seconds.push(start.elapsed().as_secs_f64());
        }
    }
    let time = median(&mut seconds);
    let tokens = (rows * seq) as f64;
    let params = model.num_params() as f64;
    let report = serde_json::json!({
        "peer": "andes",
        "device": args.runtime.device,
        "dtype": args.runtime.dtype,
        "seq_len": seq,
        "batch": rows,
        "params": params,
        "step_ms_median": time * 1e3,
        "train_tokens_per_s": tokens / time,
        // 6·N·T for the weights plus attention's 12·L·T²·d per step (PaLM appendix B).
        "model_tflops_per_s": (6.0 * params * tokens
            + 12.0 * (config.num_hidden_layers * config.num_attention_heads * config.head_dim) as f64
                * (seq as f64) * tokens)
            / time
            / 1e12,
        // Bytes the device pools hold after the timed steps; pools keep their pages, so this
        // is the high-water mark of reservations (compare with torch's max_memory_reserved).
        "memory_reserved_bytes": device.memory_pool_usage().map(|u| u.bytes_reserved),
    });
    println!("{report}");
    Ok(())
}

fn matmul(args: MatmulArgs) -> anyhow::Result<()> {
    let (device, dtype) = args.runtime.resolve()?;
    let n = args.size;
    let random =
        || Tensor::<2>::random([n, n], Distribution::Normal(0.0, 1.0), &device).cast(dtype);
    let (a, b) = (random(), random());
    let mut seconds = Vec::new();
    for run in 0..args.warmup + args.repeats {
        let start = Instant::now();
        // Reading a sum of the whole product back waits for it to finish; reading one element
        // would let the fusion backend compute only that element.
        a.clone().matmul(b.clone()).sum().into_data();
        if run >= args.warmup {
            seconds.push(start.elapsed().as_secs_f64());
        }
    }
    let time = median(&mut seconds);
    let report = serde_json::json!({
        "peer": "andes",
        "device": args.runtime.device,
        "dtype": args.runtime.dtype,
        "size": n,
        "ms_median": time * 1e3,
        "tflops": 2.0 * (n as f64).powi(3) / time / 1e12,
    });
    println!("{report}");
    Ok(())
}

fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    let config = Qwen3Config::from_file(&args.config)?;
    let (device, dtype) = args.runtime.resolve()?;
    let model = cast_parameters(Qwen3ForCausalLM::new(&config, &device)?, dtype);
    let prompt: Vec<u32> = (0..args.prompt_len)
        .map(|i| ((i * 7919 + 13) % config.vocab_size) as u32)
        .collect();
    let mut prefill_seconds = Vec::new();
    let mut decode_seconds = Vec::new();
    for run in 0..args.warmup + args.repeats {
        let (prefill, decode) =
            timed_run(&model, &prompt, args.decode_tokens, args.replay, &device)?;
        if run >= args.warmup {
            prefill_seconds.push(prefill);
            decode_seconds.push(decode);
        }
    }
    let prefill = median(&mut prefill_seconds);
    let decode = median(&mut decode_seconds);
    let report = serde_json::json!({
        "peer": "andes",
        "device": args.runtime.device,
        "dtype": args.runtime.dtype,
        "decoder": if args.replay { "replayed graph" } else { "eager" },
        "prompt_len": args.prompt_len,
        "decode_tokens": args.decode_tokens,
        "params": model.num_params(),
        "prefill_ms_median": prefill * 1e3,
        "prefill_tokens_per_s": args.prompt_len as f64 / prefill,
        "decode_ms_per_token_median": decode * 1e3 / args.decode_tokens as f64,
        "decode_tokens_per_s": args.decode_tokens as f64 / decode,
    });
    println!("{report}");
    Ok(())
}

/// Seconds for the prefill (until the first token id is on the host) and for the decode steps
/// (each token on the host before the next step starts, as a streaming generation needs it).
fn timed_run(
    model: &Qwen3ForCausalLM,
    prompt: &[u32],
    decode_tokens: usize,
    replay: bool,
    device: &Device,
) -> anyhow::Result<(f64, f64)> {
    let mut cache = model.new_cache();
    let start = Instant::now();
    let mut next = next_token(model, token_tensor(prompt, device), &mut cache)?;
    let prefill = start.elapsed().as_secs_f64();
    let start = Instant::now();
    if replay {
        let mut decoder = ReplayedDecoder::new(model, cache, next, decode_tokens)?;
        for _ in 0..decode_tokens {
            decoder.next_token()?;
        }
    } else {
        for _ in 0..decode_tokens {
            next = next_token(model, token_tensor(&[next], device), &mut cache)?;
        }
    }
    Ok((prefill, start.elapsed().as_secs_f64()))
}

/// Greedy next token after `tokens`, argmax taken on the device.
fn next_token(
    model: &Qwen3ForCausalLM,
    tokens: Tensor<2, Int>,
    cache: &mut andes_model::kv_cache::KvCache,
) -> anyhow::Result<u32> {
    let hidden = model.forward_hidden(tokens, cache)?;
    let [_, seq, width] = hidden.dims();
    let logits = model.logits(hidden.slice([0..1, seq - 1..seq, 0..width]));
    let id = logits.argmax(2).into_data().convert::<i64>();
    Ok(id.as_slice::<i64>().expect("converted to i64")[0] as u32)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
