"""Peer for kiln's 8-bit W8A8 products (kiln-check-w8's speed table): PyTorch's torch._scaled_mm
with row-wise scales (e4m3 activations with a scale per row, e4m3 weights with a scale per
output channel, bf16 out), torch._int_mm for INT8 (int8 × int8 → int32, alone and with the
per-token × per-channel scaling to bf16 that kiln's epilogue does), against bf16 torch.matmul,
Llama-3-8B's projection shapes. Times only the GEMM (kiln's column also counts its activation
quantization kernel). CUDA-event medians
after warm-up, one event pair around each launch (`torch_fused_ops.median_ms`).

Usage: python3 bench/peers/torch_fp8_mm.py
"""
import torch

# The same CUDA-event median as the row-kernel peer (run as a script, this folder is on the path).
from torch_fused_ops import median_ms


def main():
    dev = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print("| shape n×k | m | torch._scaled_mm row-wise µs | torch._int_mm µs | _int_mm + scales µs | bf16 matmul µs | fp8 TFLOP/s | int8 TOP/s | bf16 TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, k, what in [(6144, 4096, "qkv"), (4096, 4096, "o"), (28672, 4096, "gate_up"), (4096, 14336, "down")]:
        w = torch.randn(n, k, device=dev) / k**0.5
        sw = w.abs().amax(dim=1, keepdim=True) / 448.0
        w8 = (w / sw).to(torch.float8_e4m3fn)
        wb = w.to(torch.bfloat16)
        si = w.abs().amax(dim=1, keepdim=True) / 127.0
        wi = (w / si).round().clamp(-127, 127).to(torch.int8)
        for m in [1, 16, 64, 512, 2048]:
            # _scaled_mm needs m padded to 16 rows, _int_mm more than 16.
            mp = max(16, (m + 15) // 16 * 16)
            mi = max(32, mp)
            x = torch.randn(mp, k, device=dev)
            sx = x.abs().amax(dim=1, keepdim=True) / 448.0
            x8 = (x / sx).to(torch.float8_e4m3fn)
            xb = x.to(torch.bfloat16)
            fp8 = 1e3 * median_ms(lambda: torch._scaled_mm(x8, w8.t(), scale_a=sx, scale_b=sw.t(), out_dtype=torch.bfloat16))
            xf = torch.randn(mi, k, device=dev)
            sxi = xf.abs().amax(dim=1, keepdim=True) / 127.0
            xi = (xf / sxi).round().clamp(-127, 127).to(torch.int8)
            wit = wi.t()
            i8 = 1e3 * median_ms(lambda: torch._int_mm(xi, wit))
            i8s = 1e3 * median_ms(lambda: (torch._int_mm(xi, wit) * sxi * si.t()).to(torch.bfloat16))
            bf16 = 1e3 * median_ms(lambda: xb @ wb.t())
            flop = 2.0 * mp * n * k
            iop = 2.0 * mi * n * k
            print(
                f"| {what} {n}×{k} | {m} | {fp8:.1f} | {i8:.1f} | {i8s:.1f} | {bf16:.1f} | {flop / fp8 / 1e6:.0f} "
                f"| {iop / i8 / 1e6:.0f} | {flop / bf16 / 1e6:.0f} |"
            )


if __name__ == "__main__":
    main()
