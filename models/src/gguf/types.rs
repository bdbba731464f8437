//! GGML tensor element types as they appear in a GGUF tensor-info record.
//!
//! Invariants:
//! - `GgmlType::from_id` knows every type id that llama.cpp has assigned, so that a file holding
//!   types we cannot dequantize still parses and its tensors can still be bounds-checked;
//!   only ids nobody assigned are "unknown".
//! - A tensor's byte size is `n_elements / block_len * block_bytes`, and `n_elements` must be a
//!   multiple of `block_len` along the innermost dimension (ggml requires it per row).

use kiln_runtime::device::quant::QuantFormat;

/// A GGML storage type. Discriminants are the on-disk ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2K = 10,
    Q3K = 11,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    Q8K = 15,
    Iq2Xxs = 16,
    Iq2Xs = 17,
    Iq3Xxs = 18,
    Iq1S = 19,
    Iq4Nl = 20,
    Iq3S = 21,
    Iq2S = 22,
    Iq4Xs = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    Iq1M = 29,
    Bf16 = 30,
    Tq1_0 = 34,
    Tq2_0 = 35,
    Mxfp4 = 39,
}

impl GgmlType {
    /// Maps an on-disk id to a type; `None` for ids never assigned (or retired: 4, 5, 31-33).
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            16 => Iq2Xxs,
            17 => Iq2Xs,
            18 => Iq3Xxs,
            19 => Iq1S,
            20 => Iq4Nl,
            21 => Iq3S,
            22 => Iq2S,
            23 => Iq4Xs,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => Iq1M,
            30 => Bf16,
            34 => Tq1_0,
            35 => Tq2_0,
            39 => Mxfp4,
            _ => return None,
        })
    }

    /// The on-disk id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// (elements per block, bytes per block).
    pub fn block_layout(self) -> (u64, u64) {
        use GgmlType::*;
        match self {
            F32 => (1, 4),
            F16 => (1, 2),
            Bf16 => (1, 2),
            F64 => (1, 8),
            I8 => (1, 1),
            I16 => (1, 2),
            I32 => (1, 4),
            I64 => (1, 8),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Iq4Nl => (32, 18),
            Mxfp4 => (32, 17),
            Q2K => (256, 84),
            Q3K => (256, 110),
            Q4K => (256, 144),
            Q5K => (256, 176),
            Q6K => (256, 210),
            Q8K => (256, 292),
            Iq2Xxs => (256, 66),
            Iq2Xs => (256, 74),
            Iq3Xxs => (256, 98),
            Iq1S => (256, 50),
            Iq3S => (256, 110),
            Iq2S => (256, 82),
            Iq4Xs => (256, 136),
            Iq1M => (256, 56),
            Tq1_0 => (256, 54),
            Tq2_0 => (256, 66),
        }
    }

    /// Whether `dequantize` supports this type.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(self, F32 | F16 | Bf16) || self.quant_format().is_some()
    }

    /// The type of a block format (the one table between the two; [`Self::quant_format`] is its
    /// inverse).
    pub fn of_quant_format(format: QuantFormat) -> GgmlType {
        use GgmlType::*;
        match format {
            QuantFormat::Q4_0 => Q4_0,
            QuantFormat::Q4_1 => Q4_1,
            QuantFormat::Q5_0 => Q5_0,
            QuantFormat::Q5_1 => Q5_1,
            QuantFormat::Q8_0 => Q8_0,
            QuantFormat::Q2_K => Q2K,
            QuantFormat::Q3_K => Q3K,
            QuantFormat::Q4_K => Q4K,
            QuantFormat::Q5_K => Q5K,
            QuantFormat::Q6_K => Q6K,
        }
    }

    /// The block format kiln keeps quantized (and multiplies without dequantizing), if any.
    pub fn quant_format(self) -> Option<QuantFormat> {
        QuantFormat::ALL.into_iter().find(|&f| GgmlType::of_quant_format(f) == self)
    }

    /// The name llama.cpp prints for this type (e.g. `q4_1`), used in error messages and dumps.
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q8_0 => "q8_0",
            Q8_1 => "q8_1",
            Q2K => "q2_K",
            Q3K => "q3_K",
            Q4K => "q4_K",
            Q5K => "q5_K",
            Q6K => "q6_K",
            Q8K => "q8_K",
            Iq2Xxs => "iq2_xxs",
            Iq2Xs => "iq2_xs",
            Iq3Xxs => "iq3_xxs",
            Iq1S => "iq1_s",
            Iq4Nl => "iq4_nl",
            Iq3S => "iq3_s",
            Iq2S => "iq2_s",
            Iq4Xs => "iq4_xs",
            I8 => "i8",
            I16 => "i16",
            I32 => "i32",
            I64 => "i64",
            F64 => "f64",
            Iq1M => "iq1_m",
            Bf16 => "bf16",
            Tq1_0 => "tq1_0",
            Tq2_0 => "tq2_0",
            Mxfp4 => "mxfp4",
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_unknown_ids_are_rejected() {
        let mut known = 0;
        for id in 0..64u32 {
            if let Some(t) = GgmlType::from_id(id) {
                assert_eq!(t.id(), id);
                known += 1;
            }
        }
        assert_eq!(known, 32);
        for retired in [4, 5, 31, 32, 33, 36, 40, 1000] {
            assert!(GgmlType::from_id(retired).is_none(), "id {retired}");
        }
    }

    #[test]
    fn block_layouts_of_supported_types() {
        // Q4_0: f16 scale + 16 bytes of nibbles; Q4_1 adds an f16 min; Q8_0: f16 + 32 i8.
        assert_eq!(GgmlType::Q4_0.block_layout(), (32, 2 + 16));
        assert_eq!(GgmlType::Q4_1.block_layout(), (32, 2 + 2 + 16));
        assert_eq!(GgmlType::Q8_0.block_layout(), (32, 2 + 32));
        assert_eq!(GgmlType::Bf16.block_layout(), (1, 2));
    }
}
