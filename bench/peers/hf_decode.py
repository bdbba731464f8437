#!/usr/bin/env python3
"""Plain PyTorch / Hugging Face transformers decode baseline (a peer for kiln).

What it measures: greedy decoding speed of a Llama-shaped model in transformers, bf16, one GPU.
The weights are RANDOM (built from a LlamaConfig, nothing is downloaded): decode speed depends
only on the shapes, so this is a fair peer as long as the shapes match the real model.

"decode tok/s" is the number of tokens produced per second by the decode steps only, summed over
the batch: one decode step feeds one token per sequence and yields one new token per sequence.
The prompt (prefill) is not part of it; generate mode reports its time as ttft_ms (a warmed-up
prefill-only forward). agree_generate (graph/compiled, when generate ran too) is the fraction of
tokens equal to generate()'s: a check that the loop really decodes, not a speed number.

Modes (--mode, comma separated):
  generate  model.generate(), greedy, exactly N new tokens (eos cannot stop it). A prefill-only
            forward is timed separately; decode_tok_s = B*(N-1) / (t_generate - t_prefill),
            because the first of the N tokens comes out of the prefill. total_tok_s = B*N / t_generate.
  graph     hand-written greedy loop over a transformers StaticCache. The prompt runs eagerly once;
            one decode step (forward of 1 token per sequence + argmax) is captured in a
            torch.cuda.CUDAGraph and replayed. decode_tok_s = B*N / time of N replays.
  compiled  the same loop with the step under torch.compile(mode="max-autotune", fullgraph=True)
            (gpt-fast style; inductor captures CUDA graphs itself). compile_s is the time of the
            first calls (compile, autotune, graph recording). Slow to start (100+ s at 8B): opt-in.

Run: python3 bench/peers/hf_decode.py --preset llama3-8b --batch 1,64 --mode generate,graph
Each result is one line `peer=<mode> preset=... decode_tok_s=...` (or `error=...`); --json adds a
JSON line per result. --tiny/--device cpu/--dtype are for testing the logic without a GPU.
"""
import argparse
import contextlib
import gc
import inspect
import json
import statistics
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
PRESETS = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                      rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE,
                      max_position_embeddings=8192, tie_word_embeddings=False),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
                         rms_norm_eps=1e-5, rope_theta=100000.0, rope_scaling=None,
                         max_position_embeddings=8192, tie_word_embeddings=True),
}
# --tiny: same structure (GQA, rope type, tying), toy sizes, to test the code paths on a CPU.
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=1000)
# Steps run before the timed ones in graph/compiled mode (eager warm-up, then warm-up replays);
# they are real decode steps, so the static cache needs room for them too.
EAGER_WARMUP, REPLAY_WARMUP, CACHE_MARGIN = 3, 3, 16


def build_config(preset, tiny):
    kw = dict(PRESETS[preset], **(TINY if tiny else {}))
    theta, scaling = kw.pop("rope_theta"), kw.pop("rope_scaling")
    if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters:  # transformers 5.x
        kw["rope_parameters"] = dict(scaling or {"rope_type": "default"}, rope_theta=theta)
    else:  # 4.x spelling
        kw.update(rope_theta=theta, rope_scaling=scaling)
    # No eos/pad ids: nothing may stop generate() early.
    return LlamaConfig(**kw, attn_implementation="sdpa", bos_token_id=None, eos_token_id=None,
                       pad_token_id=None)


def no_init_context():
    # Skipping transformers' weight init saves minutes at 8B; the weights are filled below instead.
    for mod in ("transformers.initialization", "transformers.modeling_utils"):
        try:
            return getattr(__import__(mod, fromlist=["no_init_weights"]), "no_init_weights")()
        except (ImportError, AttributeError):
            pass
    return contextlib.nullcontext()


def build_model(config, device, dtype, seed):
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in bf16 directly: no fp32 copy of 8B weights anywhere
    try:
        with torch.device(device), no_init_context():
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(prev)
    if config.tie_word_embeddings:  # tying happens inside the init that no_init_weights skipped
        model.tie_weights()
        if model.lm_head.weight is not model.model.embed_tokens.weight:
            raise RuntimeError("tie_word_embeddings is set but lm_head is not tied")
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # a tied lm_head/embedding is listed once
            if p.ndim == 1:
                p.fill_(1.0)  # RMSNorm weights (Llama has no biases)
            else:
                p.normal_(0.0, 0.02)
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise RuntimeError(f"non-finite weights after init: {bad[:3]}")
    return model.eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def make_static_cache(model, batch, max_len, device, dtype):
    from transformers import StaticCache
    try:  # older transformers need batch/device/dtype up front; 5.x swallows them and allocates lazily
        return StaticCache(config=model.config, max_batch_size=batch, max_cache_len=max_len,
                           device=device, dtype=dtype)
    except TypeError as first:
        try:
            return StaticCache(config=model.config, max_cache_len=max_len)
        except TypeError as second:
            raise RuntimeError(f"StaticCache construction failed both ways: ({first}) / ({second}); "
                               f"signature {inspect.signature(StaticCache.__init__)}") from second


def forward_kwargs(model):
    # transformers renamed the cache argument (past_key_values -> cache) and dropped cache_position.
    params = inspect.signature(model.forward).parameters
    cache_kw = "past_key_values" if "past_key_values" in params else "cache"
    return cache_kw, "cache_position" in params


def run_generate(model, prompt, n_new, device):
    mask = torch.ones_like(prompt)

    def prefill():
        return model(input_ids=prompt, attention_mask=mask, use_cache=True, logits_to_keep=1)

    def generate(n):
        return model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, num_beams=1)

    prefill(); generate(min(n_new, 8))  # warm-up: cuBLAS handles, allocator, lazy init
    t_pre = statistics.median(timed(prefill, device)[0] for _ in range(3))
    t_gen, out = timed(lambda: generate(n_new), device)
    if out.shape[1] != prompt.shape[1] + n_new:
        raise RuntimeError(f"generate returned {out.shape[1] - prompt.shape[1]} tokens, not {n_new}")
    b = prompt.shape[0]
    res = dict(decode_tok_s=b * (n_new - 1) / max(t_gen - t_pre, 1e-9), total_tok_s=b * n_new / t_gen,
               ttft_ms=t_pre * 1e3)
    return res, out[:, prompt.shape[1]:]


def run_static_loop(model, prompt, n_new, device, dtype, mode):
    """Greedy decode over a StaticCache; the step is a CUDA graph (graph) or torch.compile (compiled)."""
    b, p = prompt.shape
    total = EAGER_WARMUP + REPLAY_WARMUP + n_new  # decode steps after the prefill
    cache = make_static_cache(model, b, p + total + CACHE_MARGIN, device, dtype)
    cache_kw, wants_cache_position = forward_kwargs(model)
    positions = torch.arange(p, p + total + 1, device=device)  # position of the token fed at step k
    tok = torch.zeros(b, 1, dtype=torch.long, device=device)  # static input: token ids
    pos = torch.zeros(1, dtype=torch.long, device=device)  # static input: cache position
    hist = torch.zeros(b, total + 1, dtype=torch.long, device=device)  # every generated token

    def forward_one(ids, at):
        kw = {cache_kw: cache, "use_cache": True, "position_ids": at.view(1, 1).expand(b, 1)}
        if wants_cache_position:
            kw["cache_position"] = at
        return model(input_ids=ids, **kw).logits[:, -1]

    # Prefill, eager, once. 5.x StaticCache counts written tokens itself (a device tensor), so every
    # step below, warm-up or not, must be a real step at the next position.
    pre_kw = {cache_kw: cache, "use_cache": True, "logits_to_keep": 1}
    if wants_cache_position:
        pre_kw["cache_position"] = torch.arange(p, device=device)
    # (Not timed: it would be a cold single run; generate mode reports a warmed-up ttft_ms.)
    tok.copy_(model(input_ids=prompt, **pre_kw).logits[:, -1].argmax(-1, keepdim=True))
    hist[:, 0].copy_(tok[:, 0])
    res, k = {}, 0

    if mode == "graph":
        def step():  # writes its argmax back into the input: the next replay reads it
            tok.copy_(forward_one(tok, pos).argmax(-1, keepdim=True))
    else:
        torch._dynamo.reset()  # fresh compile per batch size, so compile_s is honest
        compiled = torch.compile(lambda ids, at: forward_one(ids, at).argmax(-1, keepdim=True),
                                 mode="max-autotune", fullgraph=True, dynamic=False)
        mark = getattr(torch.compiler, "cudagraph_mark_step_begin", lambda: None)

        def step():
            mark()  # tell inductor's CUDA-graph trees that the previous step's outputs are consumed
            tok.copy_(compiled(tok, pos))

    def one(run):
        nonlocal k
        pos.copy_(positions[k:k + 1])
        run()
        k += 1
        hist[:, k].copy_(tok[:, 0])

    use_graph = mode == "graph" and device.type == "cuda"
    t_warm = time.perf_counter()
    if use_graph:
        side = torch.cuda.Stream(device)  # capture needs warm-up on a side stream first
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(EAGER_WARMUP):
                one(step)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()  # recorded, not executed: k does not move
        run = graph.replay
    else:  # compiled mode, or CPU testing (no capture there: the same step runs eagerly)
        for _ in range(EAGER_WARMUP):
            one(step)
        run = step
    for _ in range(REPLAY_WARMUP):
        one(run)
    sync(device)
    if mode == "compiled":
        res["compile_s"] = time.perf_counter() - t_warm
    t_dec, _ = timed(lambda: [one(run) for _ in range(n_new)], device)
    res["decode_tok_s"] = b * n_new / t_dec
    if mode == "graph" and not use_graph:
        res["note"] = "eager-no-capture"
    return res, hist[:, :n_new]


def main():
    ap = argparse.ArgumentParser(description="transformers decode peer for kiln (random weights)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="llama3-8b")
    ap.add_argument("--batch", default="1", help="batch size, or a comma list such as 1,64")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--mode", default="generate,graph", help="comma list of generate,graph,compiled")
    ap.add_argument("--json", action="store_true", help="also print one JSON line per result")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    batches = [int(x) for x in a.batch.split(",") if x]
    modes = [m.strip() for m in a.mode.split(",") if m.strip()]
    for m in modes:
        if m not in ("generate", "graph", "compiled"):
            ap.error(f"unknown mode {m}")
    device = torch.device(a.device)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[a.dtype]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch={torch.__version__} transformers={transformers.__version__} device={name}", flush=True)

    t0 = time.perf_counter()
    model = build_model(build_config(a.preset, a.tiny), device, dtype, a.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model preset={a.preset}{' (tiny)' if a.tiny else ''} params={n_params / 1e6:.1f}M "
          f"dtype={a.dtype} attn={model.config._attn_implementation} "
          f"built_in={time.perf_counter() - t0:.1f}s", flush=True)

    gen = torch.Generator(device="cpu").manual_seed(a.seed)
    with torch.inference_mode():
        for b in batches:
            prompt = torch.randint(0, model.config.vocab_size, (b, a.prompt_len), generator=gen).to(device)
            reference = None  # generate()'s tokens, to check the static loops decode the same thing
            for mode in modes:
                head = f"peer={mode} preset={a.preset} batch={b} prompt={a.prompt_len} new={a.new_tokens}"
                try:
                    if mode == "generate":
                        res, toks = run_generate(model, prompt, a.new_tokens, device)
                        reference = toks
                    else:
                        res, toks = run_static_loop(model, prompt, a.new_tokens, device, dtype, mode)
                        if reference is not None:  # bf16 rounding may flip a few near-tied argmaxes
                            res["agree_generate"] = (toks == reference).float().mean().item()
                except Exception as e:  # one failing mode must not lose the others
                    res = {"error": f"{type(e).__name__}: {e}".replace("\n", " ")[:400]}
                line = head + "".join(
                    f" {k}={v:.2f}" if isinstance(v, float) else f" {k}={v}" for k, v in res.items())
                print(line, flush=True)
                if a.json:
                    print(json.dumps(dict(peer=mode, preset=a.preset, batch=b, prompt=a.prompt_len,
                                          new=a.new_tokens, tiny=a.tiny, device=name, **res)), flush=True)
                toks = None
                gc.collect()  # drop this mode's cache and graph before the next one allocates
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            del prompt, reference


if __name__ == "__main__":
    main()
