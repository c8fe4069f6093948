//! Developer tasks of the andes workspace, `cargo xtask COMMAND` (`cargo xtask --help` lists
//! every command and flag): this file parses the command line and hands it to the command's
//! module.
//!
//! Python appears here only where the peer (PyTorch + transformers) or a fixture's reference
//! implementation runs.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod andes_runner;
mod bench;
mod data;
mod fixtures;
mod pipeline;
mod regress;
mod workspace;

/// Developer tasks of the andes workspace: fixtures, derived data sets, regression training,
/// the tiny pipeline and the benchmarks.
#[derive(Debug, Parser)]
#[command(bin_name = "cargo xtask", flatten_help = true, help_expected = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The tasks; each names a concern of its own module.
#[derive(Debug, Subcommand)]
enum Command {
    /// Regenerate the parity fixtures and their references (pip install -r
    /// scripts/fixtures/requirements.txt).
    Fixtures {
        /// Only verify the Qwen3 fixtures against transformers instead of rewriting them.
        #[arg(long)]
        check: bool,
    },
    /// Write the SFT, preference, GRPO and digit-conversation sets from the GCIDE slices and the
    /// digit captions, and the OCR, icon and emoji image sets from Debian packages
    /// (datasets/README.md).
    Data,
    /// Train every tiny recipe on the CPU and compare its final figures with
    /// configs/recipes/tiny/baselines.json.
    Regress {
        /// Rewrite the baselines with this run's figures instead of comparing.
        #[arg(long)]
        record: bool,
    },
    /// Train, quantize, verify and evaluate the tiny model (the README's first command).
    Pipeline(pipeline::PipelineArgs),
    /// Benchmarks: throughput against transformers, and quantized quality.
    #[command(subcommand, flatten_help = true)]
    Bench(BenchCommand),
}

/// The benchmarks, `cargo xtask bench NAME`.
#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Prefill and decode tokens/s of andes vs transformers eager on this CPU, same shape and
    /// threads.
    Forward(bench::forward::ForwardArgs),
    /// Vision-tower images/s of andes vs transformers on this CPU (GPU:
    /// scripts/gpu/vision_run.sh).
    Vision {
        /// CPU threads of both sides.
        #[arg(long, value_name = "T", default_value_t = 2)]
        threads: usize,
    },
    /// Ratio table of every andes-X.json with a peer-X.json beside it (e.g. results from a GPU
    /// box).
    Report {
        /// Folder of the results.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// QALFT quality table: float, LoRA, RTN and GPTQ post-training quantization and QALFT,
    /// every row a real run.
    Qalft(bench::qalft::QalftArgs),
    /// Held-out perplexity against bits per weight of the tiny Qwen3: uniform RTN and GPTQ, and
    /// the dimensity9500 plan at several budgets.
    Quantize {
        /// Steps of the tiny Qwen3's pretraining.
        #[arg(long, value_name = "N", default_value_t = 400)]
        pretrain_steps: u32,
    },
    /// Perplexity and KV memory of the tiny Qwen3 on held-out text under KV-cache eviction
    /// (OKV-style and recent-window budgets) on the CPU runtime.
    Okv,
    /// Acceptance rate and speed-up of speculative decoding (prompt lookup, an int2 draft) on
    /// the trained tiny Qwen3 packaged at int4, on the CPU runtime.
    Speculative,
    /// Decode tokens/s and peak memory of the CPU runtime (float, ~4 bpw, the dimensity9500
    /// plan at 1.8 bpw) against llama.cpp and the bandwidth bound, on a Qwen3-0.6B shape.
    Runtime {
        /// Threads of both engines.
        #[arg(long, value_name = "T", default_value_t = 2)]
        threads: usize,
        /// Tokens generated per run.
        #[arg(long, value_name = "N", default_value_t = 64)]
        new_tokens: usize,
        /// Runs of every row, interleaved round by round (a shared machine's load moves
        /// between runs); the table gives each row's median-speed run.
        #[arg(long, value_name = "R", default_value_t = 3)]
        rounds: usize,
    },
    /// Held-out digit accuracy of the quantized tiny AndesVL, calibrated on text only or on
    /// text and images (CPU).
    VlmQuant {
        /// Steps of the tiny AndesVL's training on the digits.
        #[arg(long, value_name = "N", default_value_t = 400)]
        steps: u32,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Fixtures { check } => fixtures::regenerate(check),
        Command::Data => data::write_derived_sets(),
        Command::Regress { record } => regress::regress(record),
        Command::Pipeline(args) => pipeline::pipeline(&args),
        Command::Bench(bench) => match bench {
            BenchCommand::Forward(args) => bench::forward::forward(&args),
            BenchCommand::Vision { threads } => bench::vision::vision(threads),
            BenchCommand::Report { dir } => bench::report::print_ratio_table(&dir),
            BenchCommand::Qalft(args) => bench::qalft::qalft(&args),
            BenchCommand::Quantize { pretrain_steps } => bench::quantize::quantize(pretrain_steps),
            BenchCommand::VlmQuant { steps } => bench::vlm_quant::vlm_quant(steps),
            BenchCommand::Okv => bench::okv::okv(),
            BenchCommand::Speculative => bench::speculative::speculative(),
            BenchCommand::Runtime {
                threads,
                new_tokens,
                rounds,
            } => bench::runtime::runtime(threads, new_tokens, rounds),
        },
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["cargo xtask"].into_iter().chain(line.split_whitespace()))
    }

    #[test]
    fn the_parser_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Every command line the repository gives (README, .ci/run, docs, BENCHMARKS.md, the GPU
    /// scripts with their variables filled in), and every flag of each command.
    #[test]
    fn every_command_line_of_the_repository_parses() {
        let lines = [
            "fixtures",
            "fixtures --check",
            "data",
            "pipeline",
            "pipeline --target dimensity9500 --bpw 1.8 --out runs/tiny-pipeline",
            "regress",
            "regress --record",
            "bench forward",
            "bench forward --config fixtures/qwen3-tiny-tied-gqa-f32/config.json \
             --prompt-len 128 --decode-tokens 32 --threads 2",
            "bench report target/bench",
            "bench vision",
            "bench vision --threads 2",
            "bench runtime",
            "bench okv",
            "bench speculative",
            "bench runtime --threads 2 --new-tokens 8 --rounds 1",
            "bench quantize",
            "bench quantize --pretrain-steps 400",
            "bench vlm-quant",
            "bench vlm-quant --steps 400",
            "bench qalft",
            "bench qalft --jobs 2",
            "bench qalft --pretrain-steps 400 --adapter-steps 150",
            "bench qalft --recipes configs/recipes/gpu/qalft-medium \
             --init-config configs/models/qwen3-gcide-medium.json --device cuda --window 256 \
             --pretrain-steps 600 --adapter-steps 300 --jobs 6 --gpus 0,1",
            "bench qalft --andes andes-cuda --device cuda --recipes configs/recipes/gpu/qalft-medium \
             --init-config configs/models/qwen3-gcide-medium.json --window 256 \
             --pretrain-steps 600 --adapter-steps 300 --jobs 6 --gpus 0,1,2,3 --resume",
        ];
        for line in lines {
            if let Err(error) = parse(line) {
                panic!("`cargo xtask {line}` does not parse: {error}");
            }
        }
    }

    #[test]
    fn unknown_flags_and_commands_are_refused() {
        for line in [
            "regress --recrod",
            "data --check",
            "pipeline --bpw 1.8 --target-name dimensity9500",
            "bench forward --prompt-length 64",
            "bench qalft --jobs 2 --gpu 0",
            "bench vlm-quant --pretrain-steps 400",
        ] {
            let error = parse(line)
                .err()
                .unwrap_or_else(|| panic!("`{line}` parses"));
            assert_eq!(error.kind(), ErrorKind::UnknownArgument, "{line}: {error}");
        }
        for line in ["bench train", "train"] {
            let error = parse(line)
                .err()
                .unwrap_or_else(|| panic!("`{line}` parses"));
            assert_eq!(
                error.kind(),
                ErrorKind::InvalidSubcommand,
                "{line}: {error}"
            );
        }
        for line in ["", "bench", "bench report"] {
            assert!(parse(line).is_err(), "`cargo xtask {line}` parses");
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let Command::Bench(BenchCommand::Qalft(qalft)) = parse("bench qalft").unwrap().command
        else {
            panic!("not bench qalft");
        };
        assert_eq!((qalft.pretrain_steps, qalft.adapter_steps), (400, 150));
        assert_eq!(qalft.recipes, PathBuf::from("configs/recipes/tiny"));
        assert_eq!((qalft.device.as_str(), qalft.window), ("cpu", 64));
        assert_eq!((qalft.jobs, qalft.gpus.len()), (1, 0));
        assert!(qalft.init_config.is_none() && qalft.andes.is_none() && !qalft.resume);
        let Command::Bench(BenchCommand::Qalft(qalft)) =
            parse("bench qalft --gpus 0,1").unwrap().command
        else {
            panic!("not bench qalft");
        };
        assert_eq!(qalft.gpus, ["0", "1"]);

        let Command::Bench(BenchCommand::Forward(forward)) =
            parse("bench forward").unwrap().command
        else {
            panic!("not bench forward");
        };
        assert_eq!(
            forward.config,
            "fixtures/qwen3-tiny-tied-gqa-f32/config.json"
        );
        assert_eq!(
            (forward.prompt_len, forward.decode_tokens, forward.threads),
            (128, 32, 2)
        );

        let Command::Pipeline(pipeline) = parse("pipeline").unwrap().command else {
            panic!("not pipeline");
        };
        assert_eq!(
            (pipeline.target.as_str(), pipeline.bpw.to_string()),
            ("dimensity9500", "1.8".to_string())
        );
        assert_eq!(pipeline.out, PathBuf::from("runs/tiny-pipeline"));

        for (line, expected) in [
            ("bench vision", "Vision { threads: 2 }"),
            ("bench quantize", "Quantize { pretrain_steps: 400 }"),
            ("bench vlm-quant", "VlmQuant { steps: 400 }"),
        ] {
            let Command::Bench(bench) = parse(line).unwrap().command else {
                panic!("not bench");
            };
            assert_eq!(format!("{bench:?}"), expected);
        }
        assert!(matches!(
            parse("regress").unwrap().command,
            Command::Regress { record: false }
        ));
        assert!(matches!(
            parse("fixtures").unwrap().command,
            Command::Fixtures { check: false }
        ));
    }
}
