#!/usr/bin/env python3
"""CPU peer for `kiln generate` on the default model: llama.cpp (through llama-cpp-python, built
from source by pip) on the same GGUF, same prompt, greedy, same thread count. Prints llama.cpp's
own prompt-eval and eval rates (from its perf counters) as JSON.

Usage: python3 bench/peers/llama_cpp_cpu.py MODEL.gguf PROMPT_FILE [--tokens 64] [--threads 2]
Setup (a throwaway venv, not part of the project): python3 -m venv /tmp/llamavenv &&
/tmp/llamavenv/bin/pip install llama-cpp-python
"""
import argparse
import json
import time

import llama_cpp
import numpy as np
from llama_cpp import Llama


def last_logits(llm):
    """The last evaluated position's logits (llama-cpp-python 0.3.36 no longer copies them into
    `Llama.scores` unless every position's logits are kept: reading `scores` gave zeros, so
    earlier runs of this peer decoded token 0 over and over; the timing per step is the same)."""
    p = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(p, shape=(llm.n_vocab(),))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("prompt_file")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    prompt = open(a.prompt_file).read()
    llm = Llama(model_path=a.model, n_threads=a.threads, n_threads_batch=a.threads, n_ctx=1024, verbose=False)
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    results = []
    for _ in range(a.runs):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        out = []
        for _ in range(a.tokens):
            tok = int(last_logits(llm).argmax())
            out.append(tok)
            llm.eval([tok])
        t2 = time.perf_counter()
        results.append({
            "prompt_tokens": len(ids),
            "prefill_tokens_per_s": len(ids) / (t1 - t0),
            # The first generated token comes from the prefill logits; `tokens` evals follow.
            "decode_tokens_per_s": a.tokens / (t2 - t1),
        })
    best = max(results, key=lambda r: r["decode_tokens_per_s"])
    print(json.dumps({"peer": "llama.cpp (llama-cpp-python)", "threads": a.threads, "runs": results, "best": best}))


if __name__ == "__main__":
    main()
