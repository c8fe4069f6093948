//! `andes`: train, quantize and run small vision-language models for phones.
//!
//! The binary is thin: it parses arguments and calls the library crates.

mod commands;
mod model_args;

use clap::{Parser, Subcommand};

/// andes: a toolkit for small on-device language and vision-language models.
#[derive(Parser)]
#[command(name = "andes", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train per a recipe (pretrain, sft, lora, qalft), or resume a run.
    Train(commands::train::TrainArgs),
    /// A randomly initialised Qwen3 checkpoint of a given shape.
    Init(commands::init::InitArgs),
    /// Plan, quantize and package a model for a target under a bits-per-weight budget.
    Quantize(commands::quantize::QuantizeArgs),
    /// Sizes, bpw, plan and cost estimate of a package.
    Inspect(commands::inspect::InspectArgs),
    /// Build an AndesVL model directory from a preset, a Qwen3 and a vision checkpoint.
    Assemble(commands::assemble::AssembleArgs),
    /// Generate text from a prompt with a Hugging Face Qwen3 model directory.
    Generate(commands::generate::GenerateArgs),
    /// Mean next-token NLL and perplexity of a text file.
    Eval(commands::eval::EvalArgs),
    /// Print a model's configuration summary and parameter count.
    Info(commands::info::InfoArgs),
    /// Re-save a model directory (e.g. f32 → bf16) in the Hugging Face layout.
    Convert(commands::convert::ConvertArgs),
    /// Write the 1+N bundle (shared base + PEFT adapters) of adapter runs.
    Export(commands::export::ExportArgs),
    /// Check a bundle's files against its manifest's checksums.
    Verify(commands::verify::VerifyArgs),
    /// Measure prefill and decode throughput of a model shape with random weights.
    Bench(commands::bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => commands::train::run(args),
        Command::Init(args) => commands::init::run(args),
        Command::Quantize(args) => commands::quantize::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Assemble(args) => commands::assemble::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Info(args) => commands::info::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Verify(args) => commands::verify::run(args),
        Command::Bench(args) => commands::bench::run(args),
    }
}
