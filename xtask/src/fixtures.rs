//! `cargo xtask fixtures`: the parity fixtures the model crates' tests compare against, made by
//! the reference implementations (Python: transformers, the GPTQ reference, PEFT).

use crate::andes_runner::{Andes, Profile, build, stdout_of};
use crate::workspace::{python, root, run, target_dir};

/// Regenerates the parity fixtures: Qwen3 checkpoints with transformers references (`check`:
/// the Qwen3 script verifies them instead), and the GPTQ reference, the LoRA adapter, the
/// vision towers, projector and preprocessing, the released AndesVL layout, the evaluation
/// harness's task scores and Parquet files written by pyarrow (needs
/// `pip install -r scripts/fixtures/requirements.txt`). The GPTQ real-layer fixture is taken
/// from the tiny pretrain run of `cargo xtask regress` when it exists. Last, the tiny AndesVL is
/// assembled from the new fixtures.
pub(crate) fn regenerate(check: bool) -> anyhow::Result<()> {
    let mut qwen3 = python("scripts/fixtures/make_qwen3_fixtures.py");
    qwen3.args(["--out", "fixtures"]);
    if check {
        qwen3.arg("--check");
    }
    run(&mut qwen3)?;
    let mut gptq = python("scripts/fixtures/make_gptq_fixture.py");
    gptq.args(["--out", "fixtures/gptq", "--data", "datasets/gcide"]);
    let trained = target_dir().join("regress/pretrain/checkpoints/step-000120");
    if trained.exists() {
        gptq.arg("--checkpoint").arg(trained);
    }
    run(&mut gptq)?;
    run(python("scripts/fixtures/make_lora_fixtures.py").args(["--fixtures", "fixtures"]))?;
    run(python("scripts/fixtures/make_vision_fixtures.py").args([
        "--images",
        "fixtures/vision/images",
        "--out",
        "fixtures/vision",
    ]))?;
    run(
        python("scripts/fixtures/make_andesvl_released_fixtures.py").args([
            "--fixtures",
            "fixtures",
            "--out",
            "fixtures/andesvl-released",
        ]),
    )?;
    run(python("scripts/fixtures/make_task_fixture.py").args([
        "--model",
        "fixtures/qwen3-tiny-untied-mha-f32",
        "--eval",
        "datasets/gcide/gcide-eval.txt",
        "--out",
        "fixtures/tasks",
    ]))?;
    run(python("scripts/fixtures/make_parquet_fixture.py").args([
        "--data",
        "datasets",
        "--out",
        "fixtures/parquet",
    ]))?;
    assemble_tiny_andesvl()
}

/// `fixtures/andesvl-tiny`: the tiny AndesVL the alignment recipe starts from, assembled by
/// `andes assemble` from the tiny Qwen3 and SigLIP2 fixtures (projector seeded).
fn assemble_tiny_andesvl() -> anyhow::Result<()> {
    let out = root().join("fixtures/andesvl-tiny");
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    let andes = Andes::cpu(build(Profile::Debug)?).showing_progress();
    let summary = stdout_of(
        andes
            .command()
            .args(["assemble", "--preset", "configs/models/andesvl-tiny"])
            .args(["--text", "fixtures/qwen3-tiny-untied-mha-f32"])
            .args(["--vision", "fixtures/vision/siglip2-tiny"])
            .args(["--seed", "0", "--out", "fixtures/andesvl-tiny"]),
    )?;
    print!("{}", String::from_utf8_lossy(&summary));
    Ok(())
}
