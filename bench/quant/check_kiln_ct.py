#!/usr/bin/env python3
"""Check a directory written by `kiln quantize IN OUT --method M` against the reference library
compressed-tensors (0.20.0): its config parses as the library's QuantizationConfig; for every
quantized projection the library, given the original weight, computes the same scales
(`calculate_qparams`) and the same quantized values (`quantize`, and `pack_to_int32` for int4)
byte for byte, and the library's decompressor reads kiln's stored tensors back to the same
dequantized values.

Usage: python3 bench/quant/check_kiln_ct.py IN_DIR OUT_DIR
Needs: torch, compressed-tensors==0.20.0, safetensors. Prints one line per method and exits 1
on any difference.
"""

import json
import sys

import torch
from safetensors.torch import load_file

from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
from compressed_tensors.quantization import QuantizationConfig
from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize
from compressed_tensors.quantization.utils import calculate_qparams


def load_dir(d):
    import glob
    out = {}
    for f in sorted(glob.glob(f"{d}/*.safetensors")):
        out.update(load_file(f))
    return out


def main():
    src, dst = sys.argv[1], sys.argv[2]
    cfg = json.load(open(f"{dst}/config.json"))["quantization_config"]
    qcfg = QuantizationConfig.model_validate(cfg)
    args = next(iter(qcfg.config_groups.values())).weights
    original, stored = load_dir(src), load_dir(dst)
    bad, n = 0, 0
    for key in sorted(original):
        base = key[: -len(".weight")]
        if not key.endswith(".weight") or base + ".weight_scale" not in stored:
            continue
        n += 1
        w = original[key]
        out, inp = w.shape
        strategy = args.strategy.value if hasattr(args.strategy, "value") else args.strategy
        if strategy == "channel":
            lo, hi = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
        elif strategy == "tensor":  # --method fp8 (its input_scale comes from kiln's calibration)
            lo, hi = w.amin().reshape(1), w.amax().reshape(1)
        else:
            g = w.reshape(out, inp // args.group_size, args.group_size)
            lo, hi = g.amin(dim=2), g.amax(dim=2)
        scale, zp = calculate_qparams(lo, hi, args)
        kiln_scale = stored[base + ".weight_scale"]
        if not torch.equal(scale.reshape(kiln_scale.shape).to(kiln_scale.dtype), kiln_scale):
            bad += 1
            diff = (scale.reshape(kiln_scale.shape).float() != kiln_scale.float()).sum().item()
            print(f"{base}: {diff} scales differ from the library's")
            continue
        q = quantize(w, kiln_scale, None, args, dtype=torch.int8 if args.type == "int" else torch.float8_e4m3fn)
        if args.type == "int" and args.num_bits == 4:
            mine = stored[base + ".weight_packed"]
            same = torch.equal(pack_to_int32(q.to(torch.int8), 4), mine)
        else:
            mine = stored[base + ".weight"]
            same = torch.equal(q.view(torch.uint8) if q.dtype == torch.float8_e4m3fn else q, mine.view(torch.uint8) if mine.dtype == torch.float8_e4m3fn else mine)
        if not same:
            bad += 1
            print(f"{base}: quantized values differ from the library's")
            continue
        # The library's own unpacking of kiln's stored tensor gives the values it quantized.
        if args.type == "int" and args.num_bits == 4:
            read = unpack_from_int32(mine, 4, torch.Size([out, inp]))
        else:
            read = mine
        if not torch.equal(dequantize(read, kiln_scale, None, args), dequantize(q, kiln_scale, None, args)):
            bad += 1
            print(f"{base}: dequantized values differ")
    print(f"{dst}: {cfg['format']}, {n} projections, {bad} differ from compressed-tensors {cfg.get('version')}")
    sys.exit(1 if bad or n == 0 else 0)


if __name__ == "__main__":
    main()
