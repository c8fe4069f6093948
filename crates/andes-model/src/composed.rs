//! Switches back to the composed form of an operation that andes runs as one differentiable
//! operation (attention's core, the LM head with its log-softmax), so that one build can time
//! both: `ANDES_ATTENTION=composed`, `ANDES_HEAD=composed`.

/// Whether the environment variable `variable` asks for the composed form.
pub(crate) fn requested(variable: &str) -> bool {
    std::env::var(variable).is_ok_and(|value| value == "composed")
}
