#!/usr/bin/env python3
"""PyTorch eager peer for kiln's generated row kernels (issue: foundation, proof on the GPU).

Runs the same operation as each kiln kernel the way an HF model writes it in eager PyTorch,
at the same shapes and dtype, and reports the median time (CUDA events, after warm-up) and
the bandwidth with kiln's byte accounting: every input read once plus every output written
once. Usage: python3 bench/peers/torch_fused_ops.py [--rows 4096] [--width 4096] [--dtype bf16]
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F


def median_ms(fn, reps=50, warmup=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def rms_norm(x, w, eps=1e-5):
    # HF LlamaRMSNorm.forward
    dt = x.dtype
    h = x.to(torch.float32)
    var = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(var + eps)
    return w * h.to(dt)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    ap.add_argument("--json", help="write results here too")
    a = ap.parse_args()
    dt = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[a.dtype]
    R, W = a.rows, a.width
    es = torch.tensor([], dtype=dt).element_size()
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    rnd = lambda *s: (torch.rand(*s, device=dev, generator=g, dtype=torch.float32) * 2 - 1).to(dt)
    x, r, u = rnd(R, W), rnd(R, W), rnd(R, W)
    w, b = rnd(W), rnd(W)
    hd = 64
    pos = torch.randint(0, 4096, (R,), device=dev, generator=g)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, device=dev, dtype=torch.float32) / hd))

    def rope():
        # HF LlamaRotaryEmbedding + apply_rotary_pos_emb on [rows, heads, head_dim]
        freqs = pos[:, None].float() * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(dt)[:, None, :], emb.sin().to(dt)[:, None, :]
        q = x.view(R, W // hd, hd)
        return (q * cos) + (rotate_half(q) * sin)

    def add_rms():
        h = x + r
        return h, rms_norm(h, w)

    ops = {
        # name: (fn, bytes read + written)
        "rms_norm": (lambda: rms_norm(x, w), (2 * R * W + W) * es),
        "add_rms_norm": (add_rms, (4 * R * W + W) * es),
        "layer_norm": (lambda: F.layer_norm(x, (W,), w, b, 1e-5), (2 * R * W + 2 * W) * es),
        "silu_mul": (lambda: F.silu(x) * u, 3 * R * W * es),
        "gelu_tanh_mul": (lambda: F.gelu(x, approximate="tanh") * u, 3 * R * W * es),
        "rope_half": (rope, 2 * R * W * es + R * 4),
        "softmax": (lambda: torch.softmax(x, dim=-1), 2 * R * W * es),
        "bias_add": (lambda: x + b, (2 * R * W + W) * es),
        "residual_add": (lambda: x + r, 3 * R * W * es),
        "cast_to_f32": (lambda: x.float(), R * W * (es + 4)),
    }
    big = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=dev)
    big2 = torch.empty_like(big)
    copy_ms = median_ms(lambda: big2.copy_(big))
    copy_gbs = 2 * big.numel() / copy_ms / 1e6
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, rows={R} width={W} dtype={a.dtype}")
    print(f"| op | torch eager µs | GB/s | % of copy ({copy_gbs:.0f} GB/s) |")
    print("|---|---|---|---|")
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_gbs": copy_gbs, "ops": {}}
    for name, (fn, nbytes) in ops.items():
        ms = median_ms(fn)
        gbs = nbytes / ms / 1e6
        res["ops"][name] = {"us": ms * 1e3, "gbs": gbs}
        print(f"| {name} | {ms*1e3:.1f} | {gbs:.0f} | {100*gbs/copy_gbs:.0f}% |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
