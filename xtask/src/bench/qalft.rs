//! `cargo xtask bench qalft`: the QALFT quality table, every number from a real run of the
//! `andes` binary: on the tiny Qwen3 on the CPU (the default, `configs/recipes/tiny`), or on a
//! larger model pretrained on a GPU (`--recipes configs/recipes/gpu/qalft-medium --device cuda`,
//! `scripts/gpu/qalft_run.sh`).
//!
//! 1. Pretrain the model on GCIDE prose (the base; `--init-config` draws it first).
//! 2. float: held-out prose perplexity of the base; task perplexity (assistant tokens of
//!    held-out definition conversations) of the base + a LoRA adapter trained on the float base.
//! 3. PTQ rows (RTN, GPTQ calibrated on the training prose): the base quantized, prose
//!    perplexity without adapter, task perplexity with the float-trained adapter on top (what
//!    shipping a float adapter on a PTQ base gives).
//! 4. QALFT rows: the adapter (and the grid's scales) trained against the quantized base; prose
//!    perplexity of the trained quantized base, task perplexity with its adapter.
//!
//! The mixed rows apply the plan `andes quantize --target dimensity9500 --bpw 1.8` makes for the
//! base. Independent runs go side by side with `--jobs N` (on `--gpus 0,1,...`, one GPU a run).
//! `--resume` keeps what an interrupted run of the bench left (runs go on from their latest
//! checkpoint), for a device call cut short. Prints a Markdown table and writes it, with the
//! raw numbers, under `target/bench/qalft/RECIPES/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::andes_runner::{
    Andes, Job, Profile, build, latest_checkpoint, run_in_parallel, stdout_of,
};
use crate::data::{GCIDE_EVAL, GCIDE_TRAIN};
use crate::workspace::{root, target_dir};

/// Held-out definition conversations: the task the adapters learn, scored on assistant tokens.
const TASK_EVAL: &str = "datasets/sft/gcide-define-eval.jsonl";
/// The line of the qalft recipe that each QALFT row replaces with its format or plan.
const QALFT_FORMAT_LINE: &str = "format = \"int2-g64-asym\"";
/// The formats of the uniform PTQ and QALFT rows.
const FORMATS: [&str; 4] = [
    "int4-g128-asym",
    "int3-g128-asym",
    "int2-g64-asym",
    "int2-g128-asym",
];
/// The budget of the mixed rows, bits per weight over the linears.
const MIXED_BPW: &str = "1.8";

/// One row of the table.
struct Row {
    method: String,
    bpw: Option<f64>,
    prose_ppl: f64,
    task_ppl: f64,
}

impl Row {
    /// The row, printed to stderr as it comes (a device call cut short still shows it).
    fn reported(self) -> Self {
        eprintln!(
            "{}: bpw {:?}, prose ppl {:.3}, task ppl {:.3}",
            self.method, self.bpw, self.prose_ppl, self.task_ppl
        );
        self
    }
}

/// What every row of one run shares: where it writes, the recipes it trains, the evaluation
/// window, and whether it goes on from an interrupted run.
struct Bench {
    out: PathBuf,
    recipes: PathBuf,
    window: String,
    resume: bool,
}

/// The model, its runs and where they go: the flags of `cargo xtask bench qalft`.
#[derive(Debug, clap::Args)]
pub(crate) struct QalftArgs {
    /// Steps of the base's pretraining.
    #[arg(long, value_name = "N", default_value_t = 400)]
    pub(crate) pretrain_steps: u32,
    /// Steps of each adapter's training (LoRA on the float base, and every QALFT run).
    #[arg(long, value_name = "M", default_value_t = 150)]
    pub(crate) adapter_steps: u32,
    /// Recipe set (`pretrain.toml`, `lora.toml`, `qalft.toml`), relative to the repository root;
    /// its name names the results' folder.
    #[arg(long, value_name = "DIR", default_value = "configs/recipes/tiny")]
    pub(crate) recipes: PathBuf,
    /// Model shape (a Qwen3 `config.json`) that `andes init` draws the base from before
    /// pretraining, instead of the recipe's starting checkpoint.
    #[arg(long, value_name = "FILE")]
    pub(crate) init_config: Option<PathBuf>,
    /// Device of every run: `cpu`, `cuda`, `wgpu`.
    #[arg(long, value_name = "D", default_value = "cpu")]
    pub(crate) device: String,
    /// Evaluation window, tokens.
    #[arg(long, value_name = "W", default_value_t = 64)]
    pub(crate) window: u32,
    /// Runs that go side by side.
    #[arg(long, value_name = "J", default_value_t = 1)]
    pub(crate) jobs: usize,
    /// GPUs the runs spread over, one a run (every GPU visible to each run when left out).
    #[arg(long, value_name = "0,1", value_delimiter = ',')]
    pub(crate) gpus: Vec<String>,
    /// Prebuilt `andes` binary (relative to the repository root), for a machine that cannot
    /// build it; left out, the debug build of this checkout.
    #[arg(long, value_name = "BIN")]
    pub(crate) andes: Option<PathBuf>,
    /// Keep what an interrupted run of the bench left: runs go on from their latest
    /// checkpoint, for a device call cut short.
    #[arg(long)]
    pub(crate) resume: bool,
}

/// Runs every row of the table (see the module's documentation), prints it and writes it under
/// `target/bench/qalft/RECIPES/`.
pub(crate) fn qalft(args: &QalftArgs) -> anyhow::Result<()> {
    let name = args
        .recipes
        .file_name()
        .context("--recipes names a folder")?;
    let bench = Bench {
        out: target_dir().join("bench/qalft").join(name),
        recipes: root().join(&args.recipes),
        window: args.window.to_string(),
        resume: args.resume,
    };
    let out = &bench.out;
    if out.exists() && !bench.resume {
        std::fs::remove_dir_all(out)?;
    }
    std::fs::create_dir_all(out)?;
    let binary = match &args.andes {
        Some(prebuilt) => root().join(prebuilt),
        None => build(Profile::Debug)?,
    };
    let andes = Andes::on_device(binary, &args.device);
    let (workers, gpus) = (args.jobs, args.gpus.as_slice());

    let pretrain = out.join("pretrain");
    let mut pretrain_overrides = vec![format!("train.steps={}", args.pretrain_steps)];
    if let Some(config) = &args.init_config {
        let init = out.join("init");
        if !init.exists() {
            stdout_of(
                andes
                    .command()
                    .args(["init", "--tokenizer", "fixtures/tokenizer", "--config"])
                    .arg(config)
                    .arg("--out")
                    .arg(&init),
            )?;
        }
        pretrain_overrides.push(format!("model.checkpoint=\"{}\"", init.display()));
    }
    bench.train(
        &andes,
        &bench.recipes.join("pretrain.toml"),
        &pretrain,
        &strs(&pretrain_overrides),
    )?;
    let pretrain_tokens = trained_tokens(&pretrain)?;
    eprintln!("pretrained: {pretrain_tokens} tokens");
    let base = latest_checkpoint(&pretrain)?;
    let base_arg = format!("model.checkpoint=\"{}\"", base.display());
    let adapter_steps_arg = format!("train.steps={}", args.adapter_steps);
    let adapter_overrides = [
        base_arg.as_str(),
        adapter_steps_arg.as_str(),
        "train.checkpoint_every=100",
        "train.eval_every=1000000",
    ];
    let mixed = format!("plan:{}", bench.plan_mixed(&andes, &base)?.display());
    let formats: Vec<&str> = FORMATS.iter().copied().chain([mixed.as_str()]).collect();

    // The training runs, and the evaluations of the bare base, need only the base.
    let lora = out.join("lora");
    let prose = bench.prose_args();
    let mut first: Vec<Job<Option<Row>>> = vec![
        Box::new(|andes: &Andes| {
            let task = ["--window", &bench.window, "--chat", TASK_EVAL];
            Ok(Some(
                Row {
                    method: "float".into(),
                    bpw: None,
                    prose_ppl: andes.eval(&base, &strs(&prose))?.0,
                    task_ppl: andes.eval(&base, &task)?.0,
                }
                .reported(),
            ))
        }),
        Box::new(|andes: &Andes| {
            bench.train(
                andes,
                &bench.recipes.join("lora.toml"),
                &lora,
                &adapter_overrides,
            )?;
            Ok(None)
        }),
    ];
    for format in formats.iter().copied() {
        let (bench, overrides) = (&bench, &adapter_overrides);
        first.push(Box::new(move |andes: &Andes| {
            bench.qalft_row(andes, format, overrides).map(Some)
        }));
    }
    let mut trained = run_in_parallel(&andes, workers, gpus, first)?
        .into_iter()
        .flatten();
    let float = trained.next().context("the float row")?;
    let qalft_rows: Vec<Row> = trained.collect();

    // The PTQ rows carry the adapter trained on the float base.
    let with_adapter = bench.adapter_args(&latest_checkpoint(&lora)?);
    let mut ptq: Vec<Job<Row>> = vec![Box::new(|andes: &Andes| {
        Ok(Row {
            method: "float + LoRA".into(),
            bpw: None,
            prose_ppl: float.prose_ppl,
            task_ppl: andes.eval(&base, &strs(&with_adapter))?.0,
        }
        .reported())
    })];
    for init in ["rtn", "gptq"] {
        for format in formats.iter().copied() {
            let (base, prose, with_adapter) = (&base, &prose, &with_adapter);
            ptq.push(Box::new(move |andes: &Andes| {
                let mut quant = quant_args(format);
                quant.extend(["--init", init, "--calib", GCIDE_TRAIN].map(String::from));
                let quantized = |extra: &[String]| [quant.clone(), extra.to_vec()].concat();
                let (prose_ppl, bpw) = andes.eval(base, &strs(&quantized(prose)))?;
                let (task_ppl, _) = andes.eval(base, &strs(&quantized(with_adapter)))?;
                Ok(Row {
                    method: format!("{} {}", init.to_uppercase(), label(format)),
                    bpw,
                    prose_ppl,
                    task_ppl,
                }
                .reported())
            }));
        }
    }
    let ptq_rows = run_in_parallel(&andes, workers, gpus, ptq)?;
    let mut rows = vec![float];
    rows.extend(ptq_rows);
    rows.extend(qalft_rows);

    let model = describe_model(&base, pretrain_tokens)?;
    let table = markdown(&rows, &model, args.pretrain_steps, args.adapter_steps);
    println!("{table}");
    std::fs::write(out.join("table.md"), &table)?;
    Ok(())
}

impl Bench {
    /// Trains `recipe` into `run_dir`, or, with `--resume`, goes on from the run's latest
    /// checkpoint there.
    fn train(
        &self,
        andes: &Andes,
        recipe: &Path,
        run_dir: &Path,
        overrides: &[&str],
    ) -> anyhow::Result<()> {
        if self.resume && run_dir.join("checkpoints/latest").exists() {
            return andes.resume(run_dir).map(drop);
        }
        if run_dir.exists() {
            std::fs::remove_dir_all(run_dir)?;
        }
        andes.train(recipe, run_dir, overrides).map(drop)
    }

    /// `andes eval` arguments of the held-out prose.
    fn prose_args(&self) -> Vec<String> {
        ["--window", &self.window, "--documents", GCIDE_EVAL]
            .map(String::from)
            .to_vec()
    }

    /// `andes eval` arguments of the held-out task with `adapter` on the model.
    fn adapter_args(&self, adapter: &Path) -> Vec<String> {
        let mut args = ["--window", &self.window, "--chat", TASK_EVAL]
            .map(String::from)
            .to_vec();
        args.extend(["--adapter".to_string(), adapter.display().to_string()]);
        args
    }

    /// One QALFT row: the adapter and scales trained against the base quantized to `format`
    /// (`plan:FILE` for a bit plan), exported with the base dequantized, and evaluated.
    fn qalft_row(&self, andes: &Andes, format: &str, overrides: &[&str]) -> anyhow::Result<Row> {
        let name = if format.starts_with("plan:") {
            "mixed"
        } else {
            format
        };
        let run_dir = self.out.join(format!("qalft-{name}"));
        let template = self.recipes.join("qalft.toml");
        let recipe_text = std::fs::read_to_string(&template)?;
        if !recipe_text.contains(QALFT_FORMAT_LINE) {
            bail!(
                "{}: the bench replaces its line `{QALFT_FORMAT_LINE}`, which it lacks",
                template.display()
            );
        }
        let quant_line = match format.strip_prefix("plan:") {
            Some(plan) => format!("plan = \"{plan}\""),
            None => format!("format = \"{format}\""),
        };
        let recipe = self.out.join(format!("qalft-{name}.toml"));
        std::fs::write(&recipe, recipe_text.replace(QALFT_FORMAT_LINE, &quant_line))?;
        self.train(andes, &recipe, &run_dir, overrides)?;
        let bundle = run_dir.join("bundle");
        if bundle.exists() {
            std::fs::remove_dir_all(&bundle)?;
        }
        stdout_of(
            andes
                .command()
                .args(["export", "--dequantized-base", "--adapters"])
                .arg(&run_dir)
                .arg("--out")
                .arg(&bundle),
        )?;
        let quantized_base = bundle.join("base-dequantized");
        let (prose_ppl, _) = andes.eval(&quantized_base, &strs(&self.prose_args()))?;
        let with_adapter = self.adapter_args(&bundle.join("adapters/define"));
        let (task_ppl, _) = andes.eval(&quantized_base, &strs(&with_adapter))?;
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json"))?)?;
        Ok(Row {
            method: format!("QALFT {}", label(format)),
            bpw: manifest["base"]["bpw_linears"].as_f64(),
            prose_ppl,
            task_ppl,
        }
        .reported())
    }

    /// The mixed rows' plan: what `andes quantize --target dimensity9500 --bpw 1.8` allocates
    /// for the base (loss sensitivity on the calibration prose), as its `bit_plan.json`.
    fn plan_mixed(&self, andes: &Andes, base: &Path) -> anyhow::Result<PathBuf> {
        let package = self.out.join("mixed-package");
        let plan = package.join("bit_plan.json");
        if self.resume && plan.exists() {
            return Ok(plan);
        }
        andes.quantize(
            base,
            "dimensity9500",
            MIXED_BPW,
            &self.out.join("sensitivity-cache"),
            &package,
            &[
                "--json",
                "--init",
                "rtn",
                "--calib",
                GCIDE_TRAIN,
                "--seq-len",
                &self.window,
            ],
        )?;
        Ok(plan)
    }
}

/// Tokens the pretraining run consumed (the sum of its steps' `tokens`).
fn trained_tokens(run_dir: &Path) -> anyhow::Result<u64> {
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl"))?;
    let mut tokens = 0;
    for line in metrics.lines() {
        let record: serde_json::Value = serde_json::from_str(line)?;
        tokens += record["tokens"].as_u64().unwrap_or(0);
    }
    Ok(tokens)
}

/// The table's caption of the model: its shape, the weights its linears hold, its pretraining.
fn describe_model(base: &Path, pretrain_tokens: u64) -> anyhow::Result<String> {
    let path = base.join("config.json");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let get = |key: &str| {
        config[key]
            .as_u64()
            .with_context(|| format!("{}: {key}", path.display()))
    };
    let (hidden, layers, heads) = (
        get("hidden_size")?,
        get("num_hidden_layers")?,
        get("num_attention_heads")?,
    );
    let (kv_heads, head_dim, intermediate) = (
        get("num_key_value_heads")?,
        get("head_dim")?,
        get("intermediate_size")?,
    );
    let attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim;
    let linear_weights = layers * (attention + 3 * hidden * intermediate);
    Ok(format!(
        "Qwen3 of {layers} layers, hidden {hidden}, {heads}/{kv_heads} heads of {head_dim}, \
         intermediate {intermediate}, vocabulary {} ({linear_weights} weights in {} linears), \
         pretrained on {pretrain_tokens} tokens of GCIDE prose",
        get("vocab_size")?,
        layers * 7
    ))
}

fn label(format: &str) -> String {
    if format.starts_with("plan:") {
        format!("mixed (D9500 plan, {MIXED_BPW} bpw budget)")
    } else {
        format.to_string()
    }
}

fn quant_args(format: &str) -> Vec<String> {
    match format.strip_prefix("plan:") {
        Some(plan) => vec!["--plan".into(), plan.into()],
        None => vec!["--quant".into(), format.into()],
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn markdown(rows: &[Row], model: &str, pretrain_steps: u32, adapter_steps: u32) -> String {
    let float = &rows[1];
    let mut table = format!(
        "{model} ({pretrain_steps} steps); adapters trained {adapter_steps} steps on GCIDE \
         definitions.\n\
         prose ppl: held-out GCIDE prose, a document a line as pretraining reads it (`andes eval \
         --documents`), base only; task ppl: assistant tokens of held-out \
         definition conversations, with the adapter. bpw over the quantized linears, scales and \
         zero points counted.\n\n\
         | method | bpw (linears) | prose ppl | task ppl | task ppl / float+LoRA |\n\
         |---|---|---|---|---|\n"
    );
    for row in rows {
        let bpw = row.bpw.map_or("32 (f32)".into(), |b| format!("{b:.3}"));
        table.push_str(&format!(
            "| {} | {bpw} | {:.2} | {:.2} | {:.3} |\n",
            row.method,
            row.prose_ppl,
            row.task_ppl,
            row.task_ppl / float.task_ppl
        ));
    }
    table
}
