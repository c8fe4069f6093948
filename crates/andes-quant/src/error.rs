//! The one error type of `andes-quant`. Every message names what was found and what was
//! expected, so a caller can show it to a user unchanged.

use thiserror::Error;

/// Everything that can go wrong in quantizing, packing or measuring a weight matrix.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum QuantError {
    /// A format string that does not name a supported format.
    #[error("invalid quant format {input:?}: {reason}")]
    InvalidFormat {
        /// The string as given.
        input: String,
        /// What is wrong and what is allowed instead.
        reason: String,
    },

    /// A target profile that cannot be used.
    #[error("{path}: key `{key}`: {message}")]
    TargetFile {
        /// The profile file.
        path: String,
        /// Dotted path of the key.
        key: String,
        /// What was found and what was expected.
        message: String,
    },

    /// GPTQ was given a diagonal-only Hessian.
    #[error("GPTQ needs the full input Hessian; this calibration kept only its diagonal")]
    DiagonalHessian,

    /// No choice of formats meets a bit budget.
    #[error("{0}")]
    Budget(String),

    /// A weight matrix with no elements; quantizing it has no meaning.
    #[error("weight shape {shape} is empty: out_features and in_features must both be at least 1")]
    EmptyShape {
        /// The shape as `[out_features, in_features]`.
        shape: String,
    },

    /// The weight buffer does not hold `out_features · in_features` values.
    #[error("weights hold {found} values but shape {shape} needs {expected}")]
    ShapeMismatch {
        /// The shape as `[out_features, in_features]`.
        shape: String,
        /// `out_features · in_features`.
        expected: usize,
        /// Length of the buffer given.
        found: usize,
    },

    /// A NaN or infinite weight, which no finite grid can represent.
    #[error("weight at row {row}, column {col} is {value}; only finite weights can be quantized")]
    NonFiniteWeight {
        /// Output channel.
        row: usize,
        /// Input element.
        col: usize,
        /// The value found.
        value: f32,
    },

    /// A group whose scale is larger than the largest f16 (65504).
    #[error(
        "scale {scale} of row {row}, group {group} exceeds the f16 maximum 65504; \
         weights this large cannot be stored with f16 scales"
    )]
    ScaleOverflow {
        /// Output channel.
        row: usize,
        /// Group index within the row.
        group: usize,
        /// The f32 scale that does not fit.
        scale: f32,
    },

    /// A code larger than the format's largest code was given to `pack`.
    #[error("code {code} at index {index} does not fit {bits}: codes run 0..={max}")]
    CodeOutOfRange {
        /// Position in the code slice.
        index: usize,
        /// The code found.
        code: u8,
        /// The format's largest code.
        max: u8,
        /// The code width, as in a format string (`int4`, `ternary`).
        bits: String,
    },

    /// A packed buffer whose length does not match the number of codes it should hold.
    #[error("{count} {bits} codes pack into {expected} bytes, found {found}")]
    PackedLength {
        /// The code width, as in a format string.
        bits: String,
        /// Number of codes expected.
        count: usize,
        /// Bytes those codes take.
        expected: usize,
        /// Bytes given.
        found: usize,
    },

    /// A ternary byte above 242 = 3⁵ − 1, which no five trits produce.
    #[error("ternary byte {byte} at offset {offset} is not five base-3 digits (largest is 242)")]
    InvalidTernaryByte {
        /// Byte offset in the packed buffer.
        offset: usize,
        /// The byte found.
        byte: u8,
    },

    /// Padding after the last code of a packed buffer is not zero; canonical packing writes
    /// zeros, so anything else means the bytes were not written by `pack`.
    #[error("padding after the last code in byte {offset} is not zero (byte is {byte:#04x})")]
    NonZeroPadding {
        /// Byte offset in the packed buffer.
        offset: usize,
        /// The byte found.
        byte: u8,
    },

    /// One part of a quantized tensor has the wrong length for its format and shape.
    #[error(
        "{part} of a {format} tensor of shape {shape} must have {expected} elements, found {found}"
    )]
    PartLength {
        /// Which part: packed codes, scales or zero points.
        part: &'static str,
        /// The format string.
        format: String,
        /// The shape as `[out_features, in_features]`.
        shape: String,
        /// Length the format and shape require.
        expected: usize,
        /// Length given.
        found: usize,
    },

    /// A bit plan file that cannot be read, parsed or used.
    #[error("{path}: key `{key}`: {message}")]
    PlanFile {
        /// The plan file.
        path: String,
        /// Dotted path of the key (empty for the whole file).
        key: String,
        /// What was found and what was expected.
        message: String,
    },

    /// A bit plan entry that does not fit the model.
    #[error("{origin}: layer `{layer}`: {message}")]
    PlanLayer {
        /// The plan file or recipe key.
        origin: String,
        /// The layer named (or missing).
        layer: String,
        /// What is wrong.
        message: String,
    },

    /// A grid handed to [`crate::quantize_on_grid`] with a non-finite scale, or a zero point
    /// the format cannot store.
    #[error(
        "row {row}, group {group}: scale {scale} with zero point {zero} is not a grid of this \
         format (scales must be finite; zero points are the symmetric zero, or integers in \
         0..=max_code for asymmetric formats)"
    )]
    InvalidGrid {
        /// Output channel.
        row: usize,
        /// Group within the row.
        group: usize,
        /// The scale given.
        scale: f32,
        /// The zero point given.
        zero: f32,
    },

    /// A scale that is NaN or infinite; dequantization would produce garbage.
    #[error("scale {index} is {value}; scales must be finite")]
    NonFiniteScale {
        /// Position in the scale buffer (`row · groups_per_row + group`).
        index: usize,
        /// The value found.
        value: f32,
    },

    /// A GPTQ option outside its domain.
    #[error("GPTQ option {option} = {value} is invalid: {expected}")]
    InvalidGptqOption {
        /// The option's field name in `GptqOptions`.
        option: &'static str,
        /// The value given.
        value: String,
        /// What the option accepts.
        expected: &'static str,
    },

    /// A batch of calibration activations whose length is not `tokens · in_features`.
    #[error(
        "activations hold {found} values but {tokens} tokens of {in_features} input features \
         need {expected}"
    )]
    ActivationLength {
        /// Tokens the caller said the batch holds.
        tokens: usize,
        /// Input features of the Hessian.
        in_features: usize,
        /// `tokens · in_features`.
        expected: usize,
        /// Length of the buffer given.
        found: usize,
    },

    /// A batch's Gram matrix (`Σ x xᵀ`, or `Σ x²` for a diagonal-only Hessian) of the wrong
    /// length for the Hessian.
    #[error("Gram matrix of {found} entries given to a Hessian that needs {expected}")]
    GramLength {
        /// `in_features²`, or `in_features` for a diagonal-only Hessian.
        expected: usize,
        /// Length of the buffer given.
        found: usize,
    },

    /// A batch's Gram matrix holds a NaN or infinity: a non-finite activation, or squares
    /// past the f32 range. `Hessian::accumulate` on the activations themselves tells which.
    #[error("Gram matrix entry {index} is {value}")]
    NonFiniteGram {
        /// Row-major index of the first such entry.
        index: usize,
        /// The value found.
        value: f32,
    },

    /// A NaN or infinite calibration activation, which would poison the whole Hessian.
    #[error(
        "activation of token {token}, input feature {feature} is {value}; calibration \
         activations must be finite"
    )]
    NonFiniteActivation {
        /// Token (row) within the batch given to `Hessian::accumulate`.
        token: usize,
        /// Input feature (column).
        feature: usize,
        /// The value found.
        value: f32,
    },

    /// A Hessian over a different number of input features than the weight has.
    #[error("Hessian is over {hessian} input features but weight shape {shape} has {in_features}")]
    HessianShape {
        /// Input features of the Hessian.
        hessian: usize,
        /// The weight shape as `[out_features, in_features]`.
        shape: String,
        /// `in_features` of the weight.
        in_features: usize,
    },

    /// A Hessian that saw no calibration tokens: GPTQ has nothing to weigh the errors by.
    #[error(
        "Hessian over {in_features} input features holds no calibration tokens; accumulate \
         activations before running GPTQ"
    )]
    NoCalibrationTokens {
        /// Input features of the Hessian.
        in_features: usize,
    },

    /// The damped Hessian has no Cholesky factorization (it is singular or indefinite).
    #[error(
        "damped Hessian is not positive definite (Cholesky fails at input column {column} with \
         damp_percent {damp_percent}); raise damp_percent or calibrate on more tokens"
    )]
    HessianNotPositiveDefinite {
        /// Input column (original index) where the factorization broke down.
        column: usize,
        /// The damping used, as a fraction of the mean diagonal.
        damp_percent: f64,
    },

    /// A low-rank factorization asked for a rank its matrix cannot have.
    #[error(
        "rank {rank} is invalid: a low-rank correction needs a rank from 1 to {most}, the smaller side of its matrix"
    )]
    InvalidRank {
        /// The rank asked for.
        rank: usize,
        /// The smaller of the matrix's two sides.
        most: usize,
    },

    /// Two tensors that are compared element by element differ in length.
    #[error("cannot compare tensors of {left} and {right} elements")]
    LengthMismatch {
        /// Length of the reference.
        left: usize,
        /// Length of the approximation.
        right: usize,
    },
}
