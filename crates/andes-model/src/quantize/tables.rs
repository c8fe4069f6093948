//! The token-embedding table and the LM head as a package quantizes them when its target says
//! so (`tables` in a target profile): round to nearest, row by row, in the Hugging Face
//! `[vocab, hidden]` layout. One table when the head is tied to the embedding.

use andes_quant::{QuantFormat, QuantizedTensor, WeightShape, quantize_rtn};
use burn::tensor::Tensor;

use super::matrix_rows;
use crate::error::ModelError;
use crate::qwen3::{Qwen3Config, Qwen3ForCausalLM};

/// The embedding table's package name (its Hugging Face name without `.weight`).
pub const EMBEDDING_TABLE: &str = "model.embed_tokens";
/// The untied LM head's package name.
pub const HEAD_TABLE: &str = "lm_head";

/// Name and `[vocab, hidden]` shape of each table: the embedding, and the head when it is not
/// tied to it.
pub fn table_shapes(config: &Qwen3Config) -> Vec<(String, WeightShape)> {
    let shape = WeightShape::new(config.vocab_size, config.hidden_size);
    let mut tables = vec![(EMBEDDING_TABLE.to_string(), shape)];
    if !config.tie_word_embeddings {
        tables.push((HEAD_TABLE.to_string(), shape));
    }
    tables
}

/// The model's tables rounded to nearest in `format`, in [`table_shapes`]' order.
pub fn quantized_tables(
    model: &Qwen3ForCausalLM,
    format: QuantFormat,
) -> Result<Vec<(String, QuantizedTensor)>, ModelError> {
    let mut tables = vec![(EMBEDDING_TABLE, model.model.embed_tokens.weight.val())];
    if let Some(head) = &model.lm_head {
        // Burn holds a linear's weight as [in, out]
        tables.push((HEAD_TABLE, head.weight.val().transpose()));
    }
    tables
        .into_iter()
        .map(|(name, table)| quantize_table(name, table, format))
        .collect()
}

fn quantize_table(
    name: &str,
    table: Tensor<2>,
    format: QuantFormat,
) -> Result<(String, QuantizedTensor), ModelError> {
    let (values, shape) = matrix_rows(table);
    quantize_rtn(&values, shape, format)
        .map(|q| (name.to_string(), q))
        .map_err(|source| ModelError::Quantization {
            layer: name.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use andes_quant::dequantize;
    use burn::tensor::Device;

    /// Each table comes out in the Hugging Face layout, `[vocab, hidden]` row `t` the
    /// embedding (or head row) of token `t`, within int8's grid of the float values (a
    /// transposed or shifted table would be off by the values themselves).
    #[test]
    fn tables_are_rows_of_tokens_in_both_ties() {
        let device = Device::flex();
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/qwen3-tiny-untied-mha-f32/config.json");
        let mut config = Qwen3Config::from_file(&fixture).unwrap();
        for tied in [true, false] {
            config.tie_word_embeddings = tied;
            let model = Qwen3ForCausalLM::new(&config, &device).unwrap();
            let format: QuantFormat = "int8-channel-sym".parse().unwrap();
            let tables = quantized_tables(&model, format).unwrap();
            let shapes = table_shapes(&config);
            assert_eq!(tables.len(), shapes.len());
            let (weight, _) = model.head();
            let head = weight.transpose().into_data().try_to_vec::<f32>().unwrap();
            let embedding = model
                .model
                .embed_tokens
                .weight
                .val()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            for ((name, q), (expected_name, shape)) in tables.iter().zip(&shapes) {
                assert_eq!((name, q.shape()), (expected_name, *shape));
                let float = if name == HEAD_TABLE {
                    &head
                } else {
                    &embedding
                };
                // symmetric int8 puts a row's largest value at -128 steps, so its opposite
                // side clamps at +127: within two steps of the largest row's grid
                let scale = float.iter().fold(0f32, |m, v| m.max(v.abs())) / 64.0;
                for (found, expected) in dequantize(q).iter().zip(float) {
                    assert!(
                        (found - expected).abs() <= scale,
                        "{name}: {found} vs {expected}"
                    );
                }
            }
        }
    }
}
