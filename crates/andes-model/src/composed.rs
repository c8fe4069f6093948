//! Which form runs for an operation that andes can run either as one differentiable operation
//! or composed of Burn's operations, so that one build can time both: attention's core is one
//! operation unless `ANDES_ATTENTION=composed`; the LM head with its log-softmax is one
//! operation (no logits kept for the backward pass) unless `ANDES_HEAD=composed` or the head
//! has a bias; AdamW's update is one kernel on CubeCL backends unless `ANDES_ADAMW=composed`
//! (`andes-train`'s `adamw_update`); RMSNorm and RoPE's rotation are one operation each
//! unless `ANDES_NORM=composed` and `ANDES_ROTATION=composed`, and Qwen3's query and key norms
//! with their rotation one operation together unless `ANDES_NORM_ROTATION=composed` (then the
//! two, each in the form its own variable asks). On a step replayed as one graph, where
//! kernels alone set the pace, the
//! one-operation head took the 0.6B bf16-mixed step from 168.5 to 145.2 ms and 36.8 to 30.0 GB
//! on an H100 (BENCHMARKS.md, "A step replayed as one graph").

/// The two forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// One operation with its own backward pass.
    OneOperation,
    /// Burn's operations, each differentiated by itself.
    Composed,
}

/// The form the environment variable `variable` asks for (`one-operation` or `composed`),
/// else `default`.
pub fn form(variable: &str, default: Form) -> Form {
    match std::env::var(variable).as_deref() {
        Ok("one-operation") => Form::OneOperation,
        Ok("composed") => Form::Composed,
        _ => default,
    }
}
