//! Padding-free packing: conversations packed side by side in one window, each attending only
//! to itself with its positions restarting, score exactly what each scores alone, and so do
//! padded batches of one conversation a row cut after their last target; cut from one stream
//! instead, they see each other and do not.

use std::path::Path;

use andes_data::TextTokenizer;
use andes_data::dataset::{
    DataFormat, MaskedTokens, PackedWindows, TokenWindow, end_of_text, load_sequences,
};
use andes_model::batch::to_batch;
use andes_model::checkpoint::load_qwen3;
use andes_model::loss::masked_next_token_nll;
use andes_model::qwen3::Qwen3ForCausalLM;
use burn::tensor::{DType, Device};

fn summed_nll(model: &Qwen3ForCausalLM, windows: &[TokenWindow], device: &Device) -> f64 {
    let refs: Vec<&TokenWindow> = windows.iter().collect();
    let batch = to_batch(&refs, device);
    let hidden = batch.hidden(model).unwrap();
    masked_next_token_nll(model, hidden, batch.targets, batch.mask).into_scalar::<f64>()
}

#[test]
fn packed_conversations_score_what_each_scores_alone() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("fixtures/qwen3-tiny-untied-mha-f32");
    let device = Device::flex();
    let (_, model) = load_qwen3(&dir, &device, DType::F32).unwrap();
    let tokenizer = TextTokenizer::from_model_dir(&dir).unwrap();
    let data = root.join("datasets/sft/gcide-define-train.jsonl");
    let eot = end_of_text(&data, &tokenizer).unwrap();
    let (conversations, _) =
        load_sequences(&data, DataFormat::Chat, &tokenizer, eot, false).unwrap();
    let conversations: Vec<MaskedTokens> = conversations.into_iter().take(12).collect();

    let packed = PackedWindows::pack_apart(&conversations, 400);
    assert!(
        packed.windows.len() <= conversations.len() / 3,
        "several a window"
    );
    let together: f64 = packed
        .windows
        .chunks(2)
        .map(|batch| summed_nll(&model, batch, &device))
        .sum();
    // One conversation a row, padded, in batches of four cut after their last target.
    let padded = PackedWindows::pack_padded(&conversations, 400);
    let one_a_row: f64 = padded
        .windows
        .chunks(4)
        .map(|batch| summed_nll(&model, batch, &device))
        .sum();
    let alone: f64 = conversations
        .iter()
        .map(|c| {
            let mut loss_mask = c.loss_mask.clone();
            loss_mask[0] = false;
            let window = TokenWindow {
                ids: c.ids.clone(),
                loss_mask,
                segments: Vec::new(),
            };
            summed_nll(&model, &[window], &device)
        })
        .sum();
    assert!(
        (together - alone).abs() <= 1e-6 * alone,
        "packed {together} against one by one {alone}"
    );
    assert!(
        (one_a_row - alone).abs() <= 1e-6 * alone,
        "padded {one_a_row} against one by one {alone}"
    );
    assert_eq!(padded.target_tokens, packed.target_tokens);
    assert_eq!(
        packed.target_tokens,
        conversations
            .iter()
            .map(|c| c.loss_mask[1..].iter().filter(|&&m| m).count())
            .sum::<usize>()
    );

    // The same windows without their segments: every conversation sees the ones before it.
    let contaminated: Vec<TokenWindow> = packed
        .windows
        .iter()
        .map(|w| TokenWindow {
            segments: Vec::new(),
            ..w.clone()
        })
        .collect();
    let mixed: f64 = contaminated
        .chunks(2)
        .map(|batch| summed_nll(&model, batch, &device))
        .sum();
    // A random model barely attends across: 1.6e-4 relative here, 1000 times the packed gap.
    assert!(
        (mixed - alone).abs() > 5e-5 * alone,
        "{mixed} against {alone}"
    );
}
