#!/usr/bin/env python3
"""Make quantized GGUF files of a model with llama.cpp's own quantizer (through
llama-cpp-python's `llama_model_quantize`), for checking kiln against llama.cpp on the same
files and for the CPU benchmark. The input's quantized tensors are dequantized to F32 by
llama.cpp first (`allow_requantize`), then quantized; no importance matrix.

Usage: python3 bench/cpu/make_llama_cpp_quants.py MODEL.gguf OUT_DIR [--types q4_0,q8_0,q4_k_m,q6_k]
Writes OUT_DIR/<stem>.<TYPE>.gguf for each type (skipped when it exists) and prints the paths.
Setup (a throwaway venv, not part of the project): see bench/peers/llama_cpp_cpu.py.

On a model whose rows are not multiples of 256 (SmolLM2-135M: hidden 576), llama.cpp keeps
k-quant types only for the tensors whose rows allow them (ffn_down, 1536) and falls back to
Q5_0 / Q5_1 / Q8_0 elsewhere, as it prints; the files are what any llama.cpp user gets.
"""
import argparse
import ctypes
import os

import llama_cpp

TYPES = {
    "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
    "q5_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_0,
    "q5_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_1,
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q2_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K,
    "q3_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q3_K_M,
    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out_dir")
    ap.add_argument("--types", default="q4_0,q8_0,q4_k_m,q6_k")
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    stem = os.path.basename(a.model).split(".")[0]
    for t in a.types.split(","):
        out = os.path.join(a.out_dir, f"{stem}.{t.upper()}.gguf")
        if not os.path.exists(out):
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = TYPES[t]
            params.allow_requantize = True
            params.nthread = os.cpu_count() or 1
            tmp = out + ".tmp"
            rc = llama_cpp.llama_model_quantize(a.model.encode(), tmp.encode(), ctypes.byref(params))
            if rc != 0:
                raise SystemExit(f"llama_model_quantize {t} failed: {rc}")
            os.replace(tmp, out)
        print(out)


if __name__ == "__main__":
    main()
