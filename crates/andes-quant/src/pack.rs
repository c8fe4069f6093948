//! Bit packing of codes: the byte layout every andes package stores and the runtime reads.
//!
//! * Widths 1, 2, 3, 4, 8: a little-endian bit stream. Code `i` occupies stream bits
//!   `[i·b, i·b + b)`, least significant bit first; stream bit `k` is bit `k % 8` (bit 0 = LSB)
//!   of byte `k / 8`. For b ∈ {1, 2, 4, 8} a code never straddles a byte (int4: code `2j` in the
//!   low nibble of byte `j`, code `2j+1` in the high nibble: first code in the lowest bits, as in
//!   GPTQ's int32 words); int3 codes do (8 codes fill 3 bytes). Bits after the last code are 0.
//! * Ternary: base 3, five codes per byte, the first code the least significant digit:
//!   `byte = c₀ + 3·c₁ + 9·c₂ + 27·c₃ + 81·c₄` (≤ 242). A final partial byte holds the remaining
//!   codes with the missing digits 0. This is llama.cpp TQ1_0's 5-trits-per-byte density (1.6
//!   bits a code) without its fixed-point rescaling (`⌈byte·256/243⌉`, a SIMD decoding trick);
//!   a decoder can use a 243-entry table instead.
//!
//! `pack` followed by `unpack` is the identity, and `unpack` refuses any byte string `pack` cannot
//! produce (wrong length, ternary byte > 242, nonzero padding), so a corrupt package is caught
//! where it is read.

use crate::error::QuantError;
use crate::format::Bits;

/// Bytes that `count` codes of width `bits` pack into: `ceil(count·b / 8)`, or `ceil(count / 5)`
/// for ternary.
pub fn packed_len(bits: Bits, count: usize) -> usize {
    match bits.stream_bits() {
        Some(b) => (count * b as usize).div_ceil(8),
        None => count.div_ceil(5),
    }
}

/// Packs `codes` (each `0..=bits.max_code()`) in the layout described in the module docs.
pub fn pack(codes: &[u8], bits: Bits) -> Result<Vec<u8>, QuantError> {
    let max = bits.max_code();
    if let Some((index, &code)) = codes.iter().enumerate().find(|(_, c)| **c > max) {
        return Err(QuantError::CodeOutOfRange {
            index,
            code,
            max,
            bits: bits.name().to_string(),
        });
    }
    let mut out = Vec::with_capacity(packed_len(bits, codes.len()));
    pack_into(codes, bits, &mut out);
    Ok(out)
}

/// Unpacks `count` codes of width `bits` from `bytes`, which must be exactly what [`pack`]
/// writes for `count` codes.
pub fn unpack(bytes: &[u8], bits: Bits, count: usize) -> Result<Vec<u8>, QuantError> {
    check_packed(bytes, bits, count)?;
    let mut out = Vec::with_capacity(count);
    unpack_into(bytes, bits, count, &mut out);
    Ok(out)
}

/// Appends the packing of `codes` to `out`; the codes must already be in range.
pub(crate) fn pack_into(codes: &[u8], bits: Bits, out: &mut Vec<u8>) {
    match bits.stream_bits() {
        Some(b) => {
            let mut acc = 0u32;
            let mut filled = 0u32;
            for &code in codes {
                acc |= u32::from(code) << filled;
                filled += b;
                while filled >= 8 {
                    out.push(acc as u8);
                    acc >>= 8;
                    filled -= 8;
                }
            }
            if filled > 0 {
                out.push(acc as u8);
            }
        }
        None => out.extend(
            codes
                .chunks(5)
                .map(|trits| trits.iter().rev().fold(0u8, |byte, &t| byte * 3 + t)),
        ),
    }
}

/// Appends `count` codes decoded from `bytes` to `out`; `bytes` must have passed
/// [`check_packed`].
pub(crate) fn unpack_into(bytes: &[u8], bits: Bits, count: usize, out: &mut Vec<u8>) {
    match bits.stream_bits() {
        Some(b) => {
            let mask = (1u32 << b) - 1;
            let mut source = bytes.iter();
            let mut acc = 0u32;
            let mut filled = 0u32;
            for _ in 0..count {
                while filled < b {
                    acc |= u32::from(source.next().copied().unwrap_or(0)) << filled;
                    filled += 8;
                }
                out.push((acc & mask) as u8);
                acc >>= b;
                filled -= b;
            }
        }
        None => {
            for (i, &byte) in bytes.iter().enumerate() {
                let mut rest = byte;
                for _ in 0..(count - 5 * i).min(5) {
                    out.push(rest % 3);
                    rest /= 3;
                }
            }
        }
    }
}

/// Checks that `bytes` is a canonical packing of `count` codes of width `bits`.
pub(crate) fn check_packed(bytes: &[u8], bits: Bits, count: usize) -> Result<(), QuantError> {
    let expected = packed_len(bits, count);
    if bytes.len() != expected {
        return Err(QuantError::PackedLength {
            bits: bits.name().to_string(),
            count,
            expected,
            found: bytes.len(),
        });
    }
    let Some(&last) = bytes.last() else {
        return Ok(());
    };
    let offset = bytes.len() - 1;
    match bits.stream_bits() {
        Some(b) => {
            let used = (count * b as usize) % 8;
            if used != 0 && last >> used != 0 {
                return Err(QuantError::NonZeroPadding { offset, byte: last });
            }
        }
        None => {
            if let Some((offset, &byte)) = bytes.iter().enumerate().find(|(_, b)| **b > 242) {
                return Err(QuantError::InvalidTernaryByte { offset, byte });
            }
            let used = count % 5;
            if used != 0 && u32::from(last) >= 3u32.pow(used as u32) {
                return Err(QuantError::NonZeroPadding { offset, byte: last });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn codes_of(bits: Bits) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(0..=bits.max_code(), 0..300)
    }

    fn round_trips(bits: Bits, codes: &[u8]) -> Result<(), TestCaseError> {
        let packed = pack(codes, bits).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(packed.len(), packed_len(bits, codes.len()));
        let back =
            unpack(&packed, bits, codes.len()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, codes);
        Ok(())
    }

    proptest! {
        #[test]
        fn int1_round_trips(codes in codes_of(Bits::Int1)) { round_trips(Bits::Int1, &codes)?; }
        #[test]
        fn int2_round_trips(codes in codes_of(Bits::Int2)) { round_trips(Bits::Int2, &codes)?; }
        #[test]
        fn int3_round_trips(codes in codes_of(Bits::Int3)) { round_trips(Bits::Int3, &codes)?; }
        #[test]
        fn int4_round_trips(codes in codes_of(Bits::Int4)) { round_trips(Bits::Int4, &codes)?; }
        #[test]
        fn int8_round_trips(codes in codes_of(Bits::Int8)) { round_trips(Bits::Int8, &codes)?; }
        #[test]
        fn ternary_round_trips(codes in codes_of(Bits::Ternary)) {
            round_trips(Bits::Ternary, &codes)?;
        }
    }

    #[test]
    fn layouts_match_the_documented_bytes() {
        // int2: code 0 in bits 0-1.
        assert_eq!(pack(&[1, 2, 3, 0], Bits::Int2), Ok(vec![0b00_11_10_01]));
        // int4: low nibble first; odd count pads the high nibble with 0.
        assert_eq!(pack(&[0x1, 0x2, 0xf], Bits::Int4), Ok(vec![0x21, 0x0f]));
        // int3: 8 codes in 3 bytes, code 2 straddles bytes 0 and 1.
        let int3 = [1u8, 2, 3, 4, 5, 6, 7, 0];
        let stream: u32 = int3
            .iter()
            .enumerate()
            .map(|(i, &c)| u32::from(c) << (3 * i))
            .sum();
        let bytes = stream.to_le_bytes()[..3].to_vec();
        assert_eq!(pack(&int3, Bits::Int3), Ok(bytes));
        // int1: bit i of byte 0 is code i.
        assert_eq!(pack(&[1, 0, 0, 1, 1], Bits::Int1), Ok(vec![0b11001]));
        // ternary: first code least significant.
        assert_eq!(pack(&[1, 2, 0, 1, 2, 2], Bits::Ternary), Ok(vec![196, 2]));
        assert_eq!(pack(&[2; 5], Bits::Ternary), Ok(vec![242]));
    }

    #[test]
    fn pack_refuses_a_code_wider_than_its_width() {
        let err = pack(&[0, 3, 4], Bits::Int2).expect_err("4 > 3");
        assert!(matches!(
            err,
            QuantError::CodeOutOfRange {
                index: 2,
                code: 4,
                max: 3,
                ..
            }
        ));
        assert!(pack(&[3], Bits::Ternary).is_err());
    }

    #[test]
    fn unpack_refuses_bytes_pack_cannot_write() {
        assert!(matches!(
            unpack(&[0, 0], Bits::Int4, 3),
            Ok(ref codes) if codes == &[0, 0, 0]
        ));
        assert!(matches!(
            unpack(&[0], Bits::Int4, 3),
            Err(QuantError::PackedLength {
                expected: 2,
                found: 1,
                ..
            })
        ));
        assert!(matches!(
            unpack(&[0, 0x10], Bits::Int4, 3),
            Err(QuantError::NonZeroPadding { offset: 1, .. })
        ));
        assert!(matches!(
            unpack(&[243], Bits::Ternary, 5),
            Err(QuantError::InvalidTernaryByte {
                offset: 0,
                byte: 243
            })
        ));
        // Two codes: the byte may only use digits 0 and 1 (value < 9).
        assert!(unpack(&[8], Bits::Ternary, 2).is_ok());
        assert!(matches!(
            unpack(&[9], Bits::Ternary, 2),
            Err(QuantError::NonZeroPadding { .. })
        ));
        assert_eq!(unpack(&[], Bits::Int3, 0), Ok(vec![]));
    }
}
