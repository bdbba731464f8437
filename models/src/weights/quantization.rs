//! `quantization_config` of a Hugging Face `config.json`: which pre-quantized form the
//! checkpoint's projections are stored in, or a refusal naming the field kiln does not read.
//!
//! - `awq`, `gptq`: packed INT4 ([`super::packed`]);
//! - `compressed-tensors` (LLM Compressor): `pack-quantized` 4-bit integers (W4A16, packed like
//!   GPTQ's words but one row per output; [`super::packed`]), `float-quantized` /
//!   `naive-quantized` FP8 and `int-quantized` / `naive-quantized` INT8 ([`super::scaled`]);
//! - `fp8` (DeepSeek-V3, HF FineGrainedFP8): e4m3 weights with 2-D block scales
//!   (`weight_block_size`, `weight_scale_inv`; [`super::scaled`]).
//!
//! Invariant: every field that would change the values kiln reads is either read or refused;
//! fields that only describe how the checkpoint was made (observers, calibration, versions) and
//! activation quantization (kiln runs activations unquantized; see [`super::scaled`]) are not.

use super::packed::{PackedConfig, PackedKind};
use super::scaled::{ScaleLayout, ScaledConfig, ScaledElem};
use serde_json::Value;

/// How a checkpoint's projections are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantization {
    Packed(PackedConfig),
    Scaled(ScaledConfig),
}

/// `(field, why)`: a `quantization_config` kiln does not read.
pub type Refusal = (String, String);

fn refuse<T>(field: &str, why: impl Into<String>) -> Result<T, Refusal> {
    Err((format!("quantization_config.{field}"), why.into()))
}

/// The stored form `config` declares; `None` for an unquantized checkpoint.
pub fn from_hf(config: &Value) -> Result<Option<Quantization>, Refusal> {
    let Some(q) = config.get("quantization_config") else { return Ok(None) };
    match q.get("quant_method").and_then(Value::as_str).unwrap_or("") {
        "awq" | "gptq" => PackedConfig::from_hf(config).map(|c| c.map(Quantization::Packed)),
        "compressed-tensors" => compressed_tensors(q).map(Some),
        "fp8" => block_fp8(q).map(Some),
        m => refuse(
            "quant_method",
            format!("'{m}' is not supported (kiln reads 'awq', 'gptq', 'compressed-tensors' and 'fp8')"),
        ),
    }
}

/// DeepSeek-style FP8: `{"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}`.
fn block_fp8(q: &Value) -> Result<Quantization, Refusal> {
    if let Some(f) = q.get("fmt").and_then(Value::as_str).filter(|f| *f != "e4m3") {
        return refuse("fmt", format!("'{f}': kiln reads e4m3 FP8 weights"));
    }
    let block = match q
        .get("weight_block_size")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(Value::as_u64).collect::<Vec<_>>())
    {
        Some(b) if b.len() == 2 && b.iter().all(|x| x.is_some_and(|x| x > 0)) => {
            [b[0].unwrap_or(1) as usize, b[1].unwrap_or(1) as usize]
        }
        _ => {
            return refuse("weight_block_size", "two positive block sizes are required (per-tensor 'fp8' is not read)")
        }
    };
    Ok(Quantization::Scaled(ScaledConfig {
        elem: ScaledElem::Fp8E4M3,
        layout: ScaleLayout::Block(block),
        scale_name: "weight_scale_inv",
        zero_point: false,
    }))
}

/// One `config_groups` entry's weight scheme, as far as it decides the stored values.
#[derive(Clone, Debug, PartialEq)]
struct WeightArgs {
    format: String,
    num_bits: Option<i64>,
    kind: String,
    symmetric: bool,
    strategy: String,
    group_size: Option<i64>,
    block: Option<Vec<i64>>,
}

/// A `kv_cache_scheme` kiln reads: FP8 e4m3 with one static, symmetric scale per tensor — a
/// `k_scale` and `v_scale` per layer, which `--kv-cache-dtype fp8` takes instead of calibrating.
fn kv_cache_scheme(kv: &Value) -> Result<(), Refusal> {
    let field = |f: &str| format!("kv_cache_scheme.{f}");
    let (bits, kind) = (kv.get("num_bits").and_then(Value::as_i64), kv.get("type").and_then(Value::as_str));
    if (bits, kind) != (Some(8), Some("float")) {
        return refuse(&field("type"), "only an FP8 (8-bit float) KV cache is read");
    }
    if kv.get("strategy").and_then(Value::as_str).is_some_and(|s| s != "tensor") {
        return refuse(&field("strategy"), "only one K and one V scale per layer (`tensor`) is read");
    }
    if kv.get("dynamic").and_then(Value::as_bool) == Some(true) {
        return refuse(&field("dynamic"), "dynamic KV scales are not stored; use --kv-cache-dtype fp8 to calibrate");
    }
    if kv.get("symmetric").and_then(Value::as_bool) == Some(false) {
        return refuse(&field("symmetric"), "an asymmetric KV cache is not supported");
    }
    Ok(())
}

fn compressed_tensors(q: &Value) -> Result<Quantization, Refusal> {
    let empty = |v: Option<&Value>| v.is_none_or(|v| v.is_null() || v.as_object().is_some_and(|o| o.is_empty()));
    if !empty(q.get("sparsity_config")) {
        return refuse("sparsity_config", "sparse compressed-tensors checkpoints are not supported");
    }
    if !empty(q.get("transform_config")) {
        return refuse("transform_config", "rotation transforms are not supported");
    }
    if !empty(q.get("kv_cache_scheme")) {
        kv_cache_scheme(&q["kv_cache_scheme"])?;
    }
    let top_format = q.get("format").and_then(Value::as_str).unwrap_or("");
    let Some(groups) = q.get("config_groups").and_then(Value::as_object).filter(|g| !g.is_empty()) else {
        return refuse("config_groups", "no quantization groups");
    };
    let mut scheme: Option<WeightArgs> = None;
    for (name, g) in groups {
        let field = format!("config_groups.{name}.weights");
        let w = g.get("weights").filter(|w| !w.is_null());
        let Some(w) = w else { return refuse(&field, "groups without quantized weights are not supported") };
        if w.get("dynamic").and_then(Value::as_bool) == Some(true) {
            return refuse(&format!("{field}.dynamic"), "dynamically quantized weights are not a stored form");
        }
        let args = WeightArgs {
            format: g.get("format").and_then(Value::as_str).unwrap_or(top_format).to_owned(),
            num_bits: w.get("num_bits").and_then(Value::as_i64),
            kind: w.get("type").and_then(Value::as_str).unwrap_or("int").to_owned(),
            symmetric: w.get("symmetric").and_then(Value::as_bool).unwrap_or(true),
            strategy: w.get("strategy").and_then(Value::as_str).unwrap_or("tensor").to_owned(),
            group_size: w.get("group_size").and_then(Value::as_i64),
            block: w
                .get("block_structure")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_i64).collect()),
        };
        match &scheme {
            Some(s) if *s != args => {
                return refuse("config_groups", "groups with different weight schemes are not supported")
            }
            _ => scheme = Some(args),
        }
    }
    let Some(w) = scheme else { return refuse("config_groups", "no quantization groups") };
    let group = || match w.group_size {
        Some(g) if g > 0 => Ok(g as usize),
        g => refuse("config_groups.*.weights.group_size", format!("{g:?}: a positive group size")),
    };
    let layout = match w.strategy.as_str() {
        "tensor" => ScaleLayout::Tensor,
        "channel" => ScaleLayout::Channel,
        "group" => ScaleLayout::Group(group()?),
        "block" => match w.block.as_deref() {
            Some(&[bo, bi]) if bo > 0 && bi > 0 => ScaleLayout::Block([bo as usize, bi as usize]),
            b => return refuse("config_groups.*.weights.block_structure", format!("{b:?}: two positive sizes")),
        },
        s => {
            return refuse(
                "config_groups.*.weights.strategy",
                format!("'{s}' (kiln reads tensor, channel, group, block)"),
            )
        }
    };
    match (w.format.as_str(), w.kind.as_str(), w.num_bits) {
        ("pack-quantized", "int", Some(4)) => {
            let group = match layout {
                ScaleLayout::Group(g) if g % 8 == 0 => Some(g),
                ScaleLayout::Channel => None,
                _ => return refuse("config_groups.*.weights.strategy", "4-bit weights in groups of 8k inputs or per channel"),
            };
            Ok(Quantization::Packed(PackedConfig { kind: PackedKind::Compressed { zero_point: !w.symmetric }, group }))
        }
        ("pack-quantized", ..) => refuse("config_groups.*.weights.num_bits", "pack-quantized weights of 4-bit integers only"),
        ("float-quantized" | "naive-quantized", "float", Some(8)) if w.symmetric => Ok(Quantization::Scaled(ScaledConfig {
            elem: ScaledElem::Fp8E4M3,
            layout,
            scale_name: "weight_scale",
            zero_point: false,
        })),
        ("int-quantized" | "naive-quantized", "int", Some(8)) => Ok(Quantization::Scaled(ScaledConfig {
            elem: ScaledElem::Int8,
            layout,
            scale_name: "weight_scale",
            zero_point: !w.symmetric,
        })),
        (f, t, b) => refuse(
            "format",
            format!("'{f}' with {t} weights of {b:?} bits (kiln reads pack-quantized int4, float-quantized fp8, int-quantized int8)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ct(weights: Value, format: &str) -> Value {
        json!({"quantization_config": {"quant_method": "compressed-tensors", "format": format,
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}},
            "ignore": ["lm_head"], "kv_cache_scheme": null, "sparsity_config": {}, "transform_config": {}}})
    }

    #[test]
    fn compressed_tensors_schemes_map_to_stored_forms() {
        let w4 = json!({"num_bits": 4, "type": "int", "symmetric": false, "strategy": "group", "group_size": 128});
        assert_eq!(
            from_hf(&ct(w4, "pack-quantized")).unwrap(),
            Some(Quantization::Packed(PackedConfig {
                kind: PackedKind::Compressed { zero_point: true },
                group: Some(128)
            }))
        );
        let fp8 = json!({"num_bits": 8, "type": "float", "symmetric": true, "strategy": "block", "block_structure": [128, 128]});
        let Some(Quantization::Scaled(s)) = from_hf(&ct(fp8, "float-quantized")).unwrap() else { panic!() };
        assert_eq!((s.elem, s.layout), (ScaledElem::Fp8E4M3, ScaleLayout::Block([128, 128])));
        let int8 = json!({"num_bits": 8, "type": "int", "symmetric": true, "strategy": "channel"});
        let Some(Quantization::Scaled(s)) = from_hf(&ct(int8, "int-quantized")).unwrap() else { panic!() };
        assert_eq!((s.elem, s.layout, s.zero_point), (ScaledElem::Int8, ScaleLayout::Channel, false));
        let ds =
            json!({"quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}});
        let Some(Quantization::Scaled(s)) = from_hf(&ds).unwrap() else { panic!() };
        assert_eq!((s.scale_name, s.layout), ("weight_scale_inv", ScaleLayout::Block([128, 128])));
    }

    #[test]
    fn what_kiln_does_not_read_is_refused_naming_the_field() {
        let field = |v: Value| from_hf(&v).unwrap_err().0;
        let w8 = json!({"num_bits": 8, "type": "int", "strategy": "channel"});
        let mut sparse = ct(w8.clone(), "int-quantized");
        sparse["quantization_config"]["sparsity_config"] = json!({"format": "sparse-24"});
        assert_eq!(field(sparse), "quantization_config.sparsity_config");
        let kv = |scheme: Value| {
            let mut c = ct(w8.clone(), "int-quantized");
            c["quantization_config"]["kv_cache_scheme"] = scheme;
            c
        };
        // An FP8 per-tensor KV scheme is read (its scales load with the weights); others are not.
        assert!(from_hf(&kv(json!({"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": false}))).is_ok());
        assert_eq!(field(kv(json!({"num_bits": 8, "type": "int"}))), "quantization_config.kv_cache_scheme.type");
        let per_head = json!({"num_bits": 8, "type": "float", "strategy": "attn_head"});
        assert_eq!(field(kv(per_head)), "quantization_config.kv_cache_scheme.strategy");
        let dynamic = json!({"num_bits": 8, "type": "float", "dynamic": true});
        assert_eq!(field(kv(dynamic)), "quantization_config.kv_cache_scheme.dynamic");
        let w2 = json!({"num_bits": 2, "type": "int", "strategy": "group", "group_size": 128});
        assert_eq!(field(ct(w2, "pack-quantized")), "quantization_config.config_groups.*.weights.num_bits");
        let tg = json!({"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16});
        assert_eq!(field(ct(tg, "nvfp4-pack-quantized")), "quantization_config.config_groups.*.weights.strategy");
        assert_eq!(field(ct(w8, "marlin-24")), "quantization_config.format");
        assert_eq!(
            field(json!({"quantization_config": {"quant_method": "bitsandbytes"}})),
            "quantization_config.quant_method"
        );
        assert_eq!(
            field(json!({"quantization_config": {"quant_method": "fp8"}})),
            "quantization_config.weight_block_size"
        );
        assert_eq!(from_hf(&json!({})).unwrap(), None);
    }
}
