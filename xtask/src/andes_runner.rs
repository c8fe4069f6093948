//! How every task runs the `andes` binary: which build, on which device, whether its progress
//! shows, and, on a machine with several GPUs, which GPU each run sees, so that independent runs
//! of one benchmark can go side by side (`run_in_parallel`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context, bail};

use crate::workspace::{root, run, target_dir};

/// The cargo profile `andes` is built in.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Profile {
    /// Quick to build: for the tiny recipes' short runs (CI's regression training, the tiny
    /// QALFT table, the fixtures), which a release build would take longer than.
    Debug,
    /// Quick to run: for measured throughput and for the longer CPU runs.
    Release,
}

/// Builds this checkout's `andes` in `profile` and returns the binary, so that a task never
/// measures or trains with a stale one.
pub(crate) fn build(profile: Profile) -> anyhow::Result<PathBuf> {
    let mut cargo = Command::new("cargo");
    cargo.current_dir(root()).args(["build", "-p", "andes-cli"]);
    let folder = match profile {
        Profile::Debug => "debug",
        Profile::Release => {
            cargo.arg("--release");
            "release"
        }
    };
    run(&mut cargo)?;
    Ok(target_dir().join(folder).join("andes"))
}

/// The `andes` binary as a task runs it: `device` is passed to every `train`, `eval` and
/// `quantize`, `gpu` (when set) becomes the run's `CUDA_VISIBLE_DEVICES`, and `progress` lets
/// the binary's progress reach the terminal where someone watches a long run.
#[derive(Clone, Debug)]
pub(crate) struct Andes {
    binary: PathBuf,
    device: String,
    gpu: Option<String>,
    progress: bool,
}

impl Andes {
    /// The binary on the CPU backend: what CI and the CPU benchmarks run.
    pub(crate) fn cpu(binary: PathBuf) -> Self {
        Self::on_device(binary, "cpu")
    }

    /// The binary on `device` (`cpu`, `cuda`, `wgpu`), every GPU visible.
    pub(crate) fn on_device(binary: PathBuf, device: &str) -> Self {
        Self {
            binary,
            device: device.to_string(),
            gpu: None,
            progress: false,
        }
    }

    /// The same binary and device, its stderr (progress bars, stage lines) going to the
    /// terminal instead of into the error of a failed run: for a task someone watches.
    pub(crate) fn showing_progress(self) -> Self {
        Self {
            progress: true,
            ..self
        }
    }

    /// The same binary and device, seeing only GPU `gpu`.
    fn seeing(&self, gpu: Option<&str>) -> Self {
        Self {
            gpu: gpu.map(str::to_string),
            ..self.clone()
        }
    }

    /// A command of the binary, run from the repository root (recipes name repo-relative files).
    pub(crate) fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command.current_dir(root());
        if let Some(gpu) = &self.gpu {
            command.env("CUDA_VISIBLE_DEVICES", gpu);
        }
        if self.progress {
            command.stderr(Stdio::inherit());
        }
        command
    }

    /// `andes train`, its progress bar drawn only where it shows.
    fn train_command(&self) -> Command {
        let mut command = self.command();
        command.arg("train");
        if !self.progress {
            command.arg("--quiet");
        }
        command
    }

    /// `andes train --config RECIPE --out OUT --set ...` on this device; the run's outcome as
    /// the binary prints it (steps, final losses and rewards, checkpoint).
    pub(crate) fn train(
        &self,
        recipe: &Path,
        out: &Path,
        overrides: &[&str],
    ) -> anyhow::Result<serde_json::Value> {
        let mut command = self.train_command();
        command
            .arg("--config")
            .arg(recipe)
            .arg("--out")
            .arg(out)
            .args(["--set", &format!("train.device=\"{}\"", self.device)]);
        for o in overrides {
            command.args(["--set", o]);
        }
        outcome(&mut command)
    }

    /// `andes train --resume RUN_DIR`: continues a run from its latest checkpoint (a finished
    /// run stays as it is); the run's outcome, as [`Andes::train`] gives it.
    pub(crate) fn resume(&self, run_dir: &Path) -> anyhow::Result<serde_json::Value> {
        outcome(self.train_command().arg("--resume").arg(run_dir))
    }

    /// `andes quantize --model MODEL --target TARGET --bpw BPW --cache CACHE --out OUT ARGS` on
    /// this device: the package of `model` for `target` under a budget of `bpw` bits per weight;
    /// what the binary printed (its summary, JSON with `--json`).
    pub(crate) fn quantize(
        &self,
        model: &Path,
        target: &str,
        bpw: &str,
        cache: &Path,
        out: &Path,
        args: &[&str],
    ) -> anyhow::Result<Vec<u8>> {
        stdout_of(
            self.command()
                .args(["quantize", "--device", &self.device, "--model"])
                .arg(model)
                .args(["--target", target, "--bpw", bpw, "--cache"])
                .arg(cache)
                .arg("--out")
                .arg(out)
                .args(args),
        )
    }

    /// Perplexity (and bpw of the quantized linears, when quantized) from `andes eval --json`.
    pub(crate) fn eval(&self, model: &Path, args: &[&str]) -> anyhow::Result<(f64, Option<f64>)> {
        let stdout = stdout_of(
            self.command()
                .args(["eval", "--json", "--device", &self.device, "--model"])
                .arg(model)
                .args(args),
        )?;
        let json: serde_json::Value = serde_json::from_slice(&stdout)?;
        let bpw = json["bpw_linears"].as_f64();
        Ok((json["perplexity"].as_f64().context("no perplexity")?, bpw))
    }
}

/// The outcome `andes train` prints: one JSON object.
fn outcome(train: &mut Command) -> anyhow::Result<serde_json::Value> {
    let stdout = stdout_of(train)?;
    serde_json::from_slice(&stdout).with_context(|| format!("{train:?}: its outcome is not JSON"))
}

/// Runs `command` (of [`Andes::command`]) to its end and returns what it printed; a failure is
/// an error quoting the command and its stderr.
pub(crate) fn stdout_of(command: &mut Command) -> anyhow::Result<Vec<u8>> {
    let output = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// The newest checkpoint a training run wrote.
pub(crate) fn latest_checkpoint(run_dir: &Path) -> anyhow::Result<PathBuf> {
    let name = std::fs::read_to_string(run_dir.join("checkpoints/latest"))
        .with_context(|| format!("{}: no checkpoint", run_dir.display()))?;
    Ok(run_dir.join("checkpoints").join(name.trim()))
}

/// One unit of a benchmark's work, given the `andes` it must run (seeing its GPU).
pub(crate) type Job<'a, T> = Box<dyn FnOnce(&Andes) -> anyhow::Result<T> + Send + 'a>;

/// Runs `jobs` on `workers` threads, worker `w` seeing GPU `gpus[w % gpus.len()]` (every GPU
/// when `gpus` is empty), and returns their results in the jobs' order; the first error wins.
/// One worker runs them one after the other, as on the CPU.
pub(crate) fn run_in_parallel<T: Send>(
    andes: &Andes,
    workers: usize,
    gpus: &[String],
    jobs: Vec<Job<'_, T>>,
) -> anyhow::Result<Vec<T>> {
    let count = jobs.len();
    // Reversed, so that popping takes the jobs in their order.
    let queue = Mutex::new(jobs.into_iter().enumerate().rev().collect::<Vec<_>>());
    let results = Mutex::new((0..count).map(|_| None).collect::<Vec<_>>());
    std::thread::scope(|scope| {
        for worker in 0..workers.max(1) {
            let gpu = (!gpus.is_empty()).then(|| gpus[worker % gpus.len()].as_str());
            let runner = andes.seeing(gpu);
            let (queue, results) = (&queue, &results);
            scope.spawn(move || {
                loop {
                    let next = queue.lock().expect("queue").pop();
                    let Some((index, job)) = next else { break };
                    let result = job(&runner);
                    results.lock().expect("results")[index] = Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("results")
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs<'a>(count: usize, failing: Option<usize>) -> Vec<Job<'a, (usize, Option<String>)>> {
        (0..count)
            .map(|index| -> Job<'a, (usize, Option<String>)> {
                Box::new(move |andes: &Andes| {
                    if failing == Some(index) {
                        bail!("job {index} failed");
                    }
                    Ok((index, andes.gpu.clone()))
                })
            })
            .collect()
    }

    #[test]
    fn results_come_in_the_jobs_order_and_each_worker_sees_one_gpu() {
        let andes = Andes::cpu(PathBuf::from("andes"));
        let gpus = ["2".to_string(), "3".to_string()];
        let results = run_in_parallel(&andes, 3, &gpus, jobs(7, None)).unwrap();
        let order: Vec<usize> = results.iter().map(|(index, _)| *index).collect();
        assert_eq!(order, (0..7).collect::<Vec<_>>());
        for (_, gpu) in &results {
            assert!(matches!(gpu.as_deref(), Some("2" | "3")), "{gpu:?}");
        }
        let serial = run_in_parallel(&andes, 1, &[], jobs(3, None)).unwrap();
        assert!(serial.iter().all(|(_, gpu)| gpu.is_none()));
    }

    #[test]
    fn a_failed_job_fails_the_run_with_its_error() {
        let andes = Andes::cpu(PathBuf::from("andes"));
        let error = run_in_parallel(&andes, 2, &[], jobs(5, Some(3))).unwrap_err();
        assert_eq!(error.to_string(), "job 3 failed");
    }

    #[test]
    fn a_command_sees_only_its_gpu() {
        let andes = Andes::on_device(PathBuf::from("andes"), "cuda").seeing(Some("1"));
        let command = andes.command();
        let visible: Vec<_> = command
            .get_envs()
            .filter(|(key, _)| *key == "CUDA_VISIBLE_DEVICES")
            .map(|(_, value)| value.and_then(|v| v.to_str()))
            .collect();
        assert_eq!(visible, [Some("1")]);
    }
}
