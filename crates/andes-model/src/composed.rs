//! Which form runs for an operation that andes can run either as one differentiable operation
//! or composed of Burn's operations, so that one build can time both: attention's core is one
//! operation unless `ANDES_ATTENTION=composed`; the LM head with its log-softmax is composed
//! unless `ANDES_HEAD=one-operation` (which keeps no logits for the backward pass, 5.6 GB less
//! on the 0.6B bf16-mixed step, but took longer on the GPU: BENCHMARKS.md).

/// The two forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Form {
    /// One operation with its own backward pass.
    OneOperation,
    /// Burn's operations, each differentiated by itself.
    Composed,
}

/// The form the environment variable `variable` asks for (`one-operation` or `composed`),
/// else `default`.
pub(crate) fn form(variable: &str, default: Form) -> Form {
    match std::env::var(variable).as_deref() {
        Ok("one-operation") => Form::OneOperation,
        Ok("composed") => Form::Composed,
        _ => default,
    }
}
