//! Weight quantization formats: how wide a code is, how many weights share a scale, and whether
//! the grid has a stored zero point.
//!
//! A format is named by a short string that appears in bit plans, target profiles and package
//! manifests: `int<b>-<granularity>-<sym|asym>` for b ∈ {1, 2, 3, 4, 8}, or
//! `ternary-<granularity>`, where the granularity is `g32`, `g64`, `g128` (groups of that many
//! consecutive input elements of one row) or `channel` (one scale per output row). The string is
//! also the serde form, so a JSON plan reads `"format": "int4-g128-sym"`.
//! `docs/quant-formats.md` gives the grid and bit layout of each.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::QuantError;

/// Width of one weight code. Codes are unsigned integers `0..=max_code`; what value a code
/// stands for is fixed by [`crate::dequantize_code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bits {
    /// 1 bit: binary weights `±α` (symmetric only).
    Int1,
    /// 2 bits, 4 levels.
    Int2,
    /// 3 bits, 8 levels.
    Int3,
    /// 4 bits, 16 levels.
    Int4,
    /// 8 bits, 256 levels.
    Int8,
    /// Three levels `{-s, 0, +s}`, log2(3) ≈ 1.58 bits of information, stored as 5 codes per byte
    /// (1.6 bits each).
    Ternary,
}

impl Bits {
    /// Every code width, narrowest first.
    pub const ALL: [Bits; 6] = [
        Bits::Int1,
        Bits::Ternary,
        Bits::Int2,
        Bits::Int3,
        Bits::Int4,
        Bits::Int8,
    ];

    /// Largest code (`qmax`): codes of this width run `0..=max_code()`.
    pub fn max_code(self) -> u8 {
        match self {
            Bits::Int1 => 1,
            Bits::Ternary => 2,
            Bits::Int2 => 3,
            Bits::Int3 => 7,
            Bits::Int4 => 15,
            Bits::Int8 => 255,
        }
    }

    /// Bits one code takes in a packed bit stream; `None` for ternary, which is packed base-3,
    /// five codes to a byte.
    pub fn stream_bits(self) -> Option<u32> {
        match self {
            Bits::Int1 => Some(1),
            Bits::Int2 => Some(2),
            Bits::Int3 => Some(3),
            Bits::Int4 => Some(4),
            Bits::Int8 => Some(8),
            Bits::Ternary => None,
        }
    }

    /// The zero point of the symmetric grid, implied by the width and never stored:
    /// `2^(b-1)` for b ≥ 2 (codes `0..2^b` stand for `-2^(b-1)..2^(b-1)-1` steps), `1` for
    /// ternary (`-1, 0, +1`) and `0.5` for binary (`±½` step, so the levels are `±scale/2`).
    pub fn symmetric_zero(self) -> f32 {
        match self {
            Bits::Int1 => 0.5,
            Bits::Ternary => 1.0,
            Bits::Int2 => 2.0,
            Bits::Int3 => 4.0,
            Bits::Int4 => 8.0,
            Bits::Int8 => 128.0,
        }
    }

    /// The name used in format strings: `int1` … `int8`, `ternary`.
    pub fn name(self) -> &'static str {
        match self {
            Bits::Int1 => "int1",
            Bits::Int2 => "int2",
            Bits::Int3 => "int3",
            Bits::Int4 => "int4",
            Bits::Int8 => "int8",
            Bits::Ternary => "ternary",
        }
    }
}

impl fmt::Display for Bits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Number of consecutive input elements of one row that share a scale (and zero point).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupSize {
    /// 32 elements: 0.5 bpw of f16 scales.
    G32,
    /// 64 elements: 0.25 bpw of f16 scales.
    G64,
    /// 128 elements: 0.125 bpw of f16 scales.
    G128,
}

impl GroupSize {
    /// Elements per group.
    pub fn size(self) -> usize {
        match self {
            GroupSize::G32 => 32,
            GroupSize::G64 => 64,
            GroupSize::G128 => 128,
        }
    }
}

/// Which weights share one scale. A weight matrix is `[out_features, in_features]` row-major
/// (the PyTorch / Hugging Face `nn.Linear` layout); groups never cross a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One scale per output channel (row): what NPUs without group support accept.
    PerChannel,
    /// One scale per group of consecutive input elements of a row; the last group of a row is
    /// shorter when `in_features` is not a multiple of the group size.
    Group(GroupSize),
}

impl Granularity {
    /// Every granularity, coarsest first.
    pub const ALL: [Granularity; 4] = [
        Granularity::PerChannel,
        Granularity::Group(GroupSize::G128),
        Granularity::Group(GroupSize::G64),
        Granularity::Group(GroupSize::G32),
    ];

    /// Nominal length of a group in a row of `in_features` elements (the last group may be
    /// shorter).
    pub fn group_len(self, in_features: usize) -> usize {
        match self {
            Granularity::PerChannel => in_features,
            Granularity::Group(g) => g.size(),
        }
    }

    /// Number of scales per row: `ceil(in_features / G)`, or 1 per channel.
    pub fn groups_per_row(self, in_features: usize) -> usize {
        match self {
            Granularity::PerChannel => 1,
            Granularity::Group(g) => in_features.div_ceil(g.size()),
        }
    }

    /// The name used in format strings: `channel`, `g32`, `g64`, `g128`.
    pub fn name(self) -> &'static str {
        match self {
            Granularity::PerChannel => "channel",
            Granularity::Group(GroupSize::G32) => "g32",
            Granularity::Group(GroupSize::G64) => "g64",
            Granularity::Group(GroupSize::G128) => "g128",
        }
    }
}

/// A weight quantization format: code width, granularity and symmetry. Constructed only through
/// [`QuantFormat::new`] or parsing, which refuse the combinations that do not exist (asymmetric
/// binary, asymmetric ternary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QuantFormat {
    bits: Bits,
    granularity: Granularity,
    symmetric: bool,
}

const ALLOWED_BITS: &str = "int1, int2, int3, int4, int8, ternary";
const ALLOWED_GRANULARITY: &str = "g32, g64, g128, channel";
const GRAMMAR: &str = "formats read int<bits>-<granularity>-<sym|asym> or ternary-<granularity>";

impl QuantFormat {
    /// A format, or an error for the combinations that are not formats: 1-bit and ternary grids
    /// are symmetric by definition (an integer zero point on a 1-bit grid would make one of its
    /// two levels zero).
    pub fn new(bits: Bits, granularity: Granularity, symmetric: bool) -> Result<Self, QuantError> {
        let format = QuantFormat {
            bits,
            granularity,
            symmetric,
        };
        if !symmetric && matches!(bits, Bits::Int1 | Bits::Ternary) {
            return Err(QuantError::InvalidFormat {
                input: format!("{bits}-{}-asym", granularity.name()),
                reason: format!(
                    "{bits} is symmetric only; asymmetric formats are int2, int3, int4, int8"
                ),
            });
        }
        Ok(format)
    }

    /// Every supported format: the menu a bit-allocation solver chooses from.
    pub fn all() -> Vec<QuantFormat> {
        let mut all = Vec::new();
        for bits in Bits::ALL {
            for granularity in Granularity::ALL {
                for symmetric in [true, false] {
                    if let Ok(format) = QuantFormat::new(bits, granularity, symmetric) {
                        all.push(format);
                    }
                }
            }
        }
        all
    }

    /// Code width.
    pub fn bits(self) -> Bits {
        self.bits
    }

    /// Which weights share a scale.
    pub fn granularity(self) -> Granularity {
        self.granularity
    }

    /// Whether the grid is symmetric (zero point implied by the width, not stored).
    pub fn symmetric(self) -> bool {
        self.symmetric
    }
}

impl fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let granularity = self.granularity.name();
        match (self.bits, self.symmetric) {
            (Bits::Ternary, _) => write!(f, "ternary-{granularity}"),
            (bits, true) => write!(f, "{bits}-{granularity}-sym"),
            (bits, false) => write!(f, "{bits}-{granularity}-asym"),
        }
    }
}

impl FromStr for QuantFormat {
    type Err = QuantError;

    /// Parses the names [`Display`](fmt::Display) writes; `ternary-<g>-sym` is accepted as a
    /// synonym of `ternary-<g>`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| QuantError::InvalidFormat {
            input: input.to_string(),
            reason,
        };
        let parts: Vec<&str> = input.split('-').collect();
        let bits = match parts[0] {
            "int1" => Bits::Int1,
            "int2" => Bits::Int2,
            "int3" => Bits::Int3,
            "int4" => Bits::Int4,
            "int8" => Bits::Int8,
            "ternary" => Bits::Ternary,
            other => {
                return Err(invalid(format!(
                    "code width {other:?} is not supported; allowed: {ALLOWED_BITS} ({GRAMMAR})"
                )));
            }
        };
        let Some(&granularity) = parts.get(1) else {
            return Err(invalid(format!(
                "missing granularity; allowed: {ALLOWED_GRANULARITY} ({GRAMMAR})"
            )));
        };
        let granularity = match granularity {
            "channel" => Granularity::PerChannel,
            "g32" => Granularity::Group(GroupSize::G32),
            "g64" => Granularity::Group(GroupSize::G64),
            "g128" => Granularity::Group(GroupSize::G128),
            other => {
                return Err(invalid(format!(
                    "granularity {other:?} is not supported; allowed: {ALLOWED_GRANULARITY} \
                     ({GRAMMAR})"
                )));
            }
        };
        let symmetric = match (bits, parts.get(2).copied()) {
            (Bits::Ternary, None | Some("sym")) => true,
            (_, Some("sym")) => true,
            (_, Some("asym")) => false,
            (_, None) => {
                return Err(invalid(format!(
                    "missing symmetry: end with -sym or -asym ({GRAMMAR})"
                )));
            }
            (_, Some(other)) => {
                return Err(invalid(format!(
                    "symmetry {other:?} is not supported; allowed: sym, asym ({GRAMMAR})"
                )));
            }
        };
        if parts.len() > 3 {
            return Err(invalid(format!("too many '-' separated parts ({GRAMMAR})")));
        }
        QuantFormat::new(bits, granularity, symmetric).map_err(|err| match err {
            QuantError::InvalidFormat { reason, .. } => invalid(reason),
            other => other,
        })
    }
}

impl TryFrom<String> for QuantFormat {
    type Error = QuantError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<QuantFormat> for String {
    fn from(format: QuantFormat) -> String {
        format.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_prints_a_name_that_parses_back_to_it() {
        let all = QuantFormat::all();
        // 4 granularities × (int2/3/4/8 × sym/asym + int1 + ternary).
        assert_eq!(all.len(), 4 * (4 * 2 + 2));
        for format in all {
            let name = format.to_string();
            assert_eq!(name.parse::<QuantFormat>(), Ok(format), "{name}");
        }
    }

    #[test]
    fn names_match_the_documented_spelling() {
        let int4 = QuantFormat::new(Bits::Int4, Granularity::Group(GroupSize::G128), true);
        assert_eq!(int4.map(|f| f.to_string()).as_deref(), Ok("int4-g128-sym"));
        let cases = [
            "int2-g64-asym",
            "ternary-g128",
            "int8-channel-sym",
            "int1-g32-sym",
        ];
        for name in cases {
            let parsed: QuantFormat = name.parse().expect(name);
            assert_eq!(parsed.to_string(), name);
        }
        let synonym: QuantFormat = "ternary-g64-sym".parse().expect("synonym");
        assert_eq!(synonym.to_string(), "ternary-g64");
    }

    #[test]
    fn serde_form_is_the_format_string() {
        let format: QuantFormat = "int3-g32-asym".parse().expect("valid");
        let json = serde_json::to_string(&format).expect("serialize");
        assert_eq!(json, "\"int3-g32-asym\"");
        let back: QuantFormat = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, format);
        let bad = serde_json::from_str::<QuantFormat>("\"int5-g128-sym\"");
        assert!(bad.is_err());
    }

    fn error_of(input: &str) -> String {
        match input.parse::<QuantFormat>() {
            Ok(format) => panic!("{input} parsed as {format}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn unsupported_width_error_names_the_input_and_the_allowed_widths() {
        let message = error_of("int5-g128-sym");
        assert!(message.contains("\"int5-g128-sym\""), "{message}");
        assert!(message.contains("\"int5\""), "{message}");
        assert!(message.contains(ALLOWED_BITS), "{message}");
    }

    #[test]
    fn bad_granularity_symmetry_and_shape_errors_say_what_is_allowed() {
        assert!(error_of("int4-g100-sym").contains(ALLOWED_GRANULARITY));
        assert!(error_of("int4").contains("missing granularity"));
        assert!(error_of("int4-g128").contains("-sym or -asym"));
        assert!(error_of("int4-g128-signed").contains("sym, asym"));
        assert!(error_of("int4-g128-sym-x").contains("too many"));
        assert!(error_of("").contains(ALLOWED_BITS));
        assert!(error_of("INT4-g128-sym").contains(ALLOWED_BITS));
    }

    #[test]
    fn binary_and_ternary_refuse_asymmetric_grids() {
        assert!(error_of("int1-g64-asym").contains("symmetric only"));
        assert!(error_of("ternary-g64-asym").contains("symmetric only"));
        assert!(QuantFormat::new(Bits::Ternary, Granularity::PerChannel, false).is_err());
    }

    #[test]
    fn groups_per_row_rounds_up_for_a_partial_last_group() {
        let g128 = Granularity::Group(GroupSize::G128);
        assert_eq!(g128.groups_per_row(256), 2);
        assert_eq!(g128.groups_per_row(257), 3);
        assert_eq!(Granularity::PerChannel.groups_per_row(257), 1);
        assert_eq!(Granularity::PerChannel.group_len(257), 257);
    }
}
