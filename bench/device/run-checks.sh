#!/usr/bin/env bash
# One device call: unpack the carried binaries (.device/*.xz), then the GPU checks and the
# first benchmarks. Run from the repository root on the GPU machine; results under $OUT.
# Usage: bench/device/run-checks.sh [checks|bench|all|sampling|fp8kv|fp8kv-read|int4-gemv|gemv-fp8kv|gguf-gpu|gguf-small|gguf-8b|gguf-rows|attn-variants|norm-quant|lt-sweep|norm-quant-lt|fused-norm-quant|fused-norm-quant-lite|w8a8-all|fp8-max|step-profile|...]
set -uo pipefail
what="${1:-all}"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export KILN_CACHE_DIR=/tmp/kiln-cache
for f in .device/*.xz; do xz -d -k -f "$f"; done
chmod +x .device/kiln .device/kiln-check-* .device/synth_gguf 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
# The 8-bit fixtures (compressed-tensors and DeepSeek-style) the 8-bit modes run on the GPU.
ct=(tests/fixtures/ct-tiny/fp8-block tests/fixtures/ct-tiny/fp8-channel tests/fixtures/ct-tiny/fp8-deepseek tests/fixtures/ct-tiny/fp8-tensor tests/fixtures/ct-tiny/int8-w8a8)
# 8B-shaped decode at 1, 16 and 64 sequences for each synth model named.
bench_decode() {
  local b=(.device/kiln bench --offline --device cuda) m c
  for m in "$@"; do
    for c in 1 16 64; do
      TAIL=4 step "bench-${m/+/-}-c$c" 150 "${b[@]}" --model "synth:$m" --num-requests $c --prompt-len 128 --output-len 128 --max-num-seqs 256
    done
  done
}
step() { local name="$1"; shift; echo "=== $name"; local t=$(date +%s); timeout "$@" 2>&1 | tee "$OUT/$name.txt" | tail -${TAIL:-25}; echo "=== $name: rc ${PIPESTATUS[0]}, $(( $(date +%s) - t )) s"; }
if [ "$what" = checks ] || [ "$what" = all ]; then
  TAIL=40 step sampler 180 .device/kiln-check-sampler --cases 400
  TAIL=12 step attention 240 .device/kiln-check-attention ${ATTN_FLAGS:-} --out "$OUT/attention.md"
  TAIL=30 step model 200 .device/kiln-check-model --model .device/smollm2-10l.gguf --fixtures tests/fixtures/reference.json
  TAIL=8 step kernels 120 .device/kiln-check-kernels --quick --only rope_kv_write,rope_kv_write_llama3,gather_rows,rope_half,add_rms_norm --out "$OUT/kernels.md"
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  b=(.device/kiln bench --offline --device cuda)
  TAIL=14 step bench-smol-b1 120 "${b[@]}" --model synth:smollm2-135m --num-requests 1 --prompt-len 128 --output-len 256
  TAIL=14 step bench-smol-b64 120 "${b[@]}" --model synth:smollm2-135m --num-requests 64 --prompt-len 128 --output-len 128 --max-num-seqs 64
  TAIL=14 step bench-8b-b1 150 "${b[@]}" --model synth:llama3-8b --num-requests 1 --prompt-len 128 --output-len 128
  TAIL=14 step bench-8b-b64 150 "${b[@]}" --model synth:llama3-8b --num-requests 64 --prompt-len 128 --output-len 128 --max-num-seqs 64 --max-batched-tokens 8192
fi
if [ "$what" = peers ]; then
  export PYTHONUNBUFFERED=1
  TAIL=8 step peer-smol 200 python3 bench/peers/hf_decode.py --preset smollm2-135m --batch 1,64 --mode generate,graph
  TAIL=8 step peer-8b 300 python3 bench/peers/hf_decode.py --preset llama3-8b --batch 1,64 --mode generate,graph
fi
if [ "$what" = bench2 ] || [ "$what" = all ]; then
  b=(.device/kiln bench --offline --device cuda)
  KILN_CUDA_GRAPHS=0 TAIL=6 step bench-8b-b1-eager 150 "${b[@]}" --model synth:llama3-8b --num-requests 1 --prompt-len 128 --output-len 128
  TAIL=6 step bench-8b-ttft2048 150 "${b[@]}" --model synth:llama3-8b --num-requests 1 --prompt-len 2048 --output-len 2 --max-batched-tokens 2048
  TAIL=14 step bench-8b-128x128-max 240 "${b[@]}" --model synth:llama3-8b --num-requests 1024 --prompt-len 128 --output-len 128 --max-num-seqs 256 --max-batched-tokens 8192
fi

if [ "$what" = fp8kv-attn ]; then
  # The attention template only: over FP8 pools, its decode speed, then the bf16-pool cases.
  TAIL=40 step attention-fp8 300 .device/kiln-check-attention --quick --fp8-only --no-speed --out "$OUT/attention-fp8.md"
  TAIL=40 step attention-speed 150 .device/kiln-check-attention --no-check --out "$OUT/attention-speed.md"
  TAIL=10 step attention-bf16 ${ATTN_BF16_S:-200} .device/kiln-check-attention --quick --no-speed --out "$OUT/attention-bf16.md"
fi

if [ "$what" = fp8kv ]; then
  # The FP8 KV cache: the attention template over e4m3 pools against the reference (and its
  # decode bandwidth next to bf16 pools and a copy); KL of FP8 KV against the model's own
  # cache on real weights (PPL_MODEL) on the GPU and on the CPU; then 8B-shaped serving with
  # bf16 and FP8 KV: long-context decode, max load, and max load with a 4 GiB KV budget.
  TAIL=40 step attention-fp8 300 .device/kiln-check-attention --quick --fp8-only --no-speed --out "$OUT/attention-fp8.md"
  TAIL=40 step attention-speed 150 .device/kiln-check-attention --no-check --out "$OUT/attention-speed.md"
  txt=tests/fixtures/perplexity/founding-documents.txt
  for d in cuda cpu; do
    TAIL=6 step "ppl-fp8kv-$d" 200 .device/kiln perplexity --device $d --model "$PPL_MODEL" --file $txt --ctx 512 --max-chunks 6 --kv-cache-dtype fp8 --kl-base "$PPL_MODEL"
  done
  for kv in auto fp8; do
    TAIL=3 step "generate-$kv" 60 .device/kiln generate --device cuda --model "$PPL_MODEL" --prompt "The Declaration of Independence says that" --max-tokens 40 --temperature 0 --kv-cache-dtype $kv
  done
  b=(.device/kiln bench --offline --device cuda --model synth:llama3-8b)
  for kv in auto fp8; do
    TAIL=8 step "bench-8b-c64-2048-$kv" 150 "${b[@]}" --kv-cache-dtype $kv --num-requests 64 --prompt-len 2048 --output-len 128 --max-num-seqs 64 --max-batched-tokens 8192
    TAIL=8 step "bench-8b-max-$kv" 150 "${b[@]}" --kv-cache-dtype $kv --num-requests 1024 --prompt-len 128 --output-len 128 --max-num-seqs 256 --max-batched-tokens 8192
    TAIL=8 step "bench-8b-max-4g-$kv" 150 "${b[@]}" --kv-cache-dtype $kv --kv-cache-memory 4GiB --num-requests 1024 --prompt-len 128 --output-len 128 --max-num-seqs 256 --max-batched-tokens 8192
  done
fi

if [ "$what" = tp ]; then
  # Tensor parallelism over NCCL (kiln-check-tp): NCCL comes from PyTorch's wheels there.
  N=$(python3 -c "import nvidia; print(list(nvidia.__path__)[0])" 2>/dev/null)
  export KILN_CUDA_LIB_DIRS="$(ls -d "$N"/*/lib 2>/dev/null | paste -sd:)${KILN_CUDA_LIB_DIRS:+:$KILN_CUDA_LIB_DIRS}"
  TAIL=30 step tp-bf16 120 .device/kiln-check-tp --model "${TP_MODEL:-.device/smollm2-3l.gguf}" --tp "${TP:-1}" --tokens 16
  TAIL=20 step tp-f32 90 .device/kiln-check-tp --model "${TP_MODEL:-.device/smollm2-3l.gguf}" --tp "${TP:-1}" --tokens 16 --dtype f32
fi

if [ "$what" = int4 ]; then
  # W4A16: the kernels against the CPU path and their speed against dense cuBLAS, the packed
  # AWQ / GPTQ fixtures on the GPU against kiln's CPU run, then 8B-shaped decode in int4 and
  # bf16 in the same call.
  TAIL=60 step int4-kernels 240 .device/kiln-check-int4
  KILN_INT4_GPU=kernels TAIL=30 step int4-model 180 .device/kiln-check-arch --vs-cpu tests/fixtures/int4-tiny/awq tests/fixtures/int4-tiny/gptq
  bench_decode llama3-8b+int4 llama3-8b
fi

if [ "$what" = fp8kv-read ] || [ "$what" = gemv-fp8kv ]; then
  # The FP8 KV attention read path (16-byte key loads, hardware e4m3 widening) against the
  # reference, and its decode speed next to bf16 pools (ATTN_SPEED_FLAGS=--speed-pools: only
  # the FP8 shapes, over both pools; ATTN_FP8_CHECK=0 skips the check).
  [ "${ATTN_FP8_CHECK:-1}" = 0 ] || TAIL=40 step attention-fp8 300 .device/kiln-check-attention --quick --fp8-only --no-speed --out "$OUT/attention-fp8.md"
  TAIL=40 step attention-speed 300 .device/kiln-check-attention --no-check ${ATTN_SPEED_FLAGS:-} --out "$OUT/attention-speed.md"
fi
if [ "$what" = int4-gemv ] || [ "$what" = gemv-fp8kv ]; then
  # The int4 kernels against the CPU and timed up to 16 rows, 8B-shaped batch-1 decode in int4
  # and in bf16, and (NCU=1) a profile of the GEMV at one row.
  TAIL=24 step int4-kernels 240 .device/kiln-check-int4 --max-rows 16
  b=(.device/kiln bench --offline --device cuda --num-requests 1 --prompt-len 128 --output-len 128)
  TAIL=8 step bench-int4-c1 150 "${b[@]}" --model synth:llama3-8b+int4
  TAIL=8 step bench-bf16-c1 150 "${b[@]}" --model synth:llama3-8b
  ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  if [ "${NCU:-0}" = 1 ] && [ -n "$ncu" ]; then
    TAIL=60 step ncu-int4-gemv 120 "$ncu" --clock-control none -k regex:kiln_i4_gemv1 -c 4 \
      --section SpeedOfLight --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis \
      .device/kiln-check-int4 --no-check --max-rows 1
  fi
fi

if [ "$what" = gguf-gpu ] || [ "$what" = gguf-small ]; then
  # GGUF 4-bit blocks (Q4_0 / Q4_1 / Q4_K) on the GPU through the int4 kernels (`--weights
  # stored`) against the CPU's dense f32 run: the default model's first 2 layers as stored
  # (Q4_1) and requantized to Q4_K_M (its Q6_K tensors load dense); then an 8B-shaped Q4_K_M
  # (synth_gguf + kiln quantize here) decoding 128 tokens at 1 and 16 sequences, stored
  # against dense bf16 in the same call.
  m=.device/smollm2-2l.gguf
  TAIL=16 step gguf-stored-q4_1 200 .device/kiln-check-model --model $m --weights stored
  TAIL=3 step quantize-small 120 .device/kiln quantize --type q4_k_m $m /tmp/s4-q4km.gguf
  TAIL=16 step gguf-stored-q4_k_m 200 .device/kiln-check-model --model /tmp/s4-q4km.gguf --weights stored
fi
if [ "$what" = gguf-gpu ] || [ "$what" = gguf-8b ]; then
  chmod +x .device/synth_gguf
  m=.device/smollm2-2l.gguf
  # Q4_K on the GPU against the CPU: a 1B-shaped Q4_K_M (its dims are whole super-blocks).
  TAIL=3 step synth-1b 120 .device/synth_gguf $m llama3.2-1b /tmp/l1-f16.gguf 0
  TAIL=6 step quantize-1b 120 .device/kiln quantize --type q4_k_m /tmp/l1-f16.gguf /tmp/l1-q4km.gguf
  rm -f /tmp/l1-f16.gguf
  TAIL=12 step gguf-stored-1b-q4_k_m 200 .device/kiln-check-model --model /tmp/l1-q4km.gguf --weights stored --dtypes f32
  TAIL=3 step synth-8b 200 .device/synth_gguf $m llama3-8b /tmp/l8-f16.gguf 0
  TAIL=3 step quantize-8b 300 .device/kiln quantize --type q4_k_m /tmp/l8-f16.gguf /tmp/l8-q4km.gguf
  rm -f /tmp/l8-f16.gguf
  for c in ${GGUF_SEQS:-1 16}; do
    for w in stored dense; do
      TAIL=8 step "bench-8b-q4km-$w-c$c" 200 .device/kiln bench --offline --device cuda --model /tmp/l8-q4km.gguf \
        --weights $w --num-requests $c --max-num-seqs $c --prompt-len 128 --output-len 128
    done
  done
fi

if [ "$what" = gguf-rows ]; then
  # The GGUF-on-GPU paths no device had run: stacks whose parts mix Q4_K with Q6_K
  # (`Weight::Rows`, a 1B-shaped Q4_K_M), 8-bit blocks as INT8 W8A16 (`KILN_W8=kernels`: Q6_K
  # in that file, then a Q8_0 file), and the int4 check with its joined q/k/v case; then the
  # 8B-shaped Q4_K_M at one sequence, stored against dense, now that no stack falls back dense.
  chmod +x .device/synth_gguf
  m=.device/smollm2-2l.gguf
  TAIL=24 step int4-kernels 240 .device/kiln-check-int4 --max-rows 8
  TAIL=3 step synth-1b 120 .device/synth_gguf $m llama3.2-1b /tmp/l1-f16.gguf 0
  TAIL=3 step quantize-1b 120 .device/kiln quantize --type q4_k_m /tmp/l1-f16.gguf /tmp/l1-q4km.gguf
  TAIL=3 step quantize-1b-q8 120 .device/kiln quantize --type q8_0 /tmp/l1-f16.gguf /tmp/l1-q8.gguf
  rm -f /tmp/l1-f16.gguf
  TAIL=12 step rows-1b-q4_k_m 200 .device/kiln-check-model --model /tmp/l1-q4km.gguf --weights stored --dtypes f32
  KILN_W8=kernels TAIL=12 step rows-w8-1b-q4_k_m 200 .device/kiln-check-model --model /tmp/l1-q4km.gguf --weights stored --dtypes f32
  KILN_W8=kernels TAIL=12 step w8-1b-q8_0 200 .device/kiln-check-model --model /tmp/l1-q8.gguf --weights stored --dtypes f32,bf16
  rm -f /tmp/l1-q8.gguf
  TAIL=3 step synth-8b 200 .device/synth_gguf $m llama3-8b /tmp/l8-f16.gguf 0
  TAIL=3 step quantize-8b 300 .device/kiln quantize --type q4_k_m /tmp/l8-f16.gguf /tmp/l8-q4km.gguf
  rm -f /tmp/l8-f16.gguf
  for w in stored dense; do
    TAIL=8 step "bench-8b-q4km-$w-c1" 200 .device/kiln bench --offline --device cuda --model /tmp/l8-q4km.gguf \
      --weights $w --num-requests 1 --max-num-seqs 1 --prompt-len 128 --output-len 128
  done
fi
if [ "$what" = norm-quant ] || [ "$what" = norm-quant-lt ]; then
  # The e4m3 norm + quantize kernels against the CPU (every dtype, model widths, timed against
  # a copy), then the attention template's check with its launch bounds as shipped and the
  # 64 × 4k speed of both pools.
  TAIL=30 step kernels-norm-quant 240 .device/kiln-check-kernels --rows 1,7,512,4096 --widths 576,2048,4096 \
    --only rms_norm_quant_e4m3,add_rms_norm_quant_e4m3,rms_norm,add_rms_norm --out "$OUT/kernels-norm-quant.md"
  TAIL=6 step attn-check 300 .device/kiln-check-attention --quick --no-speed
  TAIL=10 step attn-speed 200 .device/kiln-check-attention --no-check --speed-4k
fi
if [ "$what" = lt-sweep ] || [ "$what" = norm-quant-lt ]; then
  # Each FP8 tensor-core algorithm cuBLASLt offers for Llama-3-8B's projections at 64-2048
  # rows, timed, beside dense bf16 cuBLAS (is the heuristic's first pick the fastest?), after
  # the 8-bit kernels' check.
  TAIL=60 step lt-sweep 400 .device/kiln-check-w8 --lt-sweep
fi
if [ "$what" = fused-norm-quant ]; then
  # The norms that quantize for FP8 W8A8 projections: the 8-bit kernels' check (with rows given
  # already quantized) and the cuBLASLt algorithm sweep, the e4m3 norm kernels against the CPU,
  # SmolLM2's first 2 layers as FP8-dynamic through W8A8 (KL from the unquantized model) with
  # the fused norms and without, on the GPU and the CPU twin, then 8B-shaped decode in both.
  TAIL=70 step w8-check-sweep 400 .device/kiln-check-w8 --lt-sweep
  TAIL=30 step kernels-norm-quant 240 .device/kiln-check-kernels --rows 1,7,512,4096 --widths 576,2048,4096 \
    --only rms_norm_quant_e4m3,add_rms_norm_quant_e4m3,rms_norm,add_rms_norm --out "$OUT/kernels-norm-quant.md"
  # The FP8 / INT8 fixtures' separate q, k, v now join at upload: W8A16 against the CPU.
  KILN_W8=kernels TAIL=12 step w8-model-kernels 180 .device/kiln-check-arch --vs-cpu "${ct[@]}"
  .device/kiln convert .device/smollm2-2l.gguf /tmp/s-hf > /dev/null
  .device/kiln quantize /tmp/s-hf /tmp/s-fp8 --method fp8-dynamic | tail -1
  f=tests/fixtures/perplexity/founding-documents.txt
  for d in cuda cpu; do
    for fu in 1 0; do
      KILN_W8=w8a8 KILN_FUSED_NORM_QUANT=$fu TAIL=4 step "ppl-$d-fused$fu" 200 .device/kiln perplexity --model /tmp/s-fp8 --file "$f" --kl-base /tmp/s-hf --device "$d"
    done
  done
  b=(.device/kiln bench --offline --device cuda --model synth:llama3-8b+fp8 --prompt-len 128 --output-len 128 --max-num-seqs 256)
  for c in 1 64; do
    for fu in 1 0; do
      KILN_FUSED_NORM_QUANT=$fu TAIL=4 step "bench-fp8-c$c-fused$fu" 150 "${b[@]}" --num-requests $c
    done
  done
  KILN_FP8_LT_TUNE=8 TAIL=4 step "bench-fp8-c64-tune8" 150 "${b[@]}" --num-requests 64
fi
if [ "$what" = fused-norm-quant-lite ]; then
  # fused-norm-quant in less device time: GPU perplexity and c64 decode only.
  TAIL=70 step w8-check-sweep 300 .device/kiln-check-w8 --lt-sweep
  TAIL=12 step kernels-norm-quant 120 .device/kiln-check-kernels --rows 1,7,512,4096 --widths 576,4096 \
    --only rms_norm_quant_e4m3,add_rms_norm_quant_e4m3 --out "$OUT/kernels-norm-quant.md"
  .device/kiln convert .device/smollm2-2l.gguf /tmp/s-hf > /dev/null
  .device/kiln quantize /tmp/s-hf /tmp/s-fp8 --method fp8-dynamic | tail -1
  for fu in 1 0; do
    KILN_W8=w8a8 KILN_FUSED_NORM_QUANT=$fu TAIL=4 step "ppl-cuda-fused$fu" 100 .device/kiln perplexity --model /tmp/s-fp8 \
      --file tests/fixtures/perplexity/founding-documents.txt --kl-base /tmp/s-hf --device cuda
  done
  b=(.device/kiln bench --offline --device cuda --model synth:llama3-8b+fp8 --prompt-len 128 --output-len 128 --max-num-seqs 256 --num-requests 64)
  for fu in 1 0; do KILN_FUSED_NORM_QUANT=$fu TAIL=4 step "bench-fp8-c64-fused$fu" 100 "${b[@]}"; done
  KILN_FP8_LT_TUNE=8 TAIL=4 step bench-fp8-c64-tune8 100 "${b[@]}"
fi
if [ "$what" = w8a8-all ]; then
  # 8-bit W8A8 in one call (issue 14): the 8-bit kernels against their f64 twins (FP8 with rows
  # given already quantized, INT8 W8A8 per row × per channel through cuBLASLt IMMA and the W8A8
  # GEMV) and their speed beside bf16; the e4m3 norm kernels; the tiny 8-bit fixtures, GPU W8A8
  # against the CPU twin; SmolLM2's first 2 layers as INT8 SmoothQuant and FP8-dynamic (KL from
  # the unquantized model), GPU and CPU twin; 8B-shaped decode, fp8 (fused norms on / off),
  # int8 and bf16 at 1 and 64 sequences.
  TAIL=80 step w8-check 240 .device/kiln-check-w8
  PYTHONUNBUFFERED=1 TAIL=26 step torch-8bit-mm 120 python3 bench/peers/torch_fp8_mm.py
  TAIL=16 step kernels-norm-quant 100 .device/kiln-check-kernels --rows 1,7,512,4096 --widths 576,4096 \
    --only rms_norm_quant_e4m3,add_rms_norm_quant_e4m3,rms_norm_quant_i8,add_rms_norm_quant_i8 --out "$OUT/kernels-norm-quant.md"
  KILN_W8=w8a8 TAIL=14 step w8a8-models 120 .device/kiln-check-arch --vs-cpu "${ct[@]}"
  .device/kiln convert .device/smollm2-2l.gguf /tmp/s-hf > /dev/null
  .device/kiln quantize /tmp/s-hf /tmp/s-fp8 --method fp8-dynamic | tail -1
  .device/kiln quantize /tmp/s-hf /tmp/s-int8sq --method int8-sq | tail -1
  f=tests/fixtures/perplexity/founding-documents.txt
  for d in cuda cpu; do
    KILN_W8=w8a8 TAIL=4 step "ppl-$d-int8sq" 100 .device/kiln perplexity --model /tmp/s-int8sq --file "$f" --kl-base /tmp/s-hf --device "$d"
    for fu in 1 0; do
      KILN_W8=w8a8 KILN_FUSED_NORM_QUANT=$fu TAIL=4 step "ppl-$d-fp8-fused$fu" 100 .device/kiln perplexity --model /tmp/s-fp8 --file "$f" --kl-base /tmp/s-hf --device "$d"
    done
  done
  b=(.device/kiln bench --offline --device cuda --prompt-len 128 --output-len 128 --max-num-seqs 256)
  for c in 1 64; do
    for fu in 1 0; do
      KILN_FUSED_NORM_QUANT=$fu TAIL=4 step "bench-fp8-c$c-fused$fu" 100 "${b[@]}" --num-requests $c --model synth:llama3-8b+fp8
    done
    TAIL=4 step "bench-int8-c$c" 100 "${b[@]}" --num-requests $c --model synth:llama3-8b+int8
    TAIL=4 step "bench-bf16-c$c" 100 "${b[@]}" --num-requests $c --model synth:llama3-8b
  done
fi
if [ "$what" = fp8-max ]; then
  # 8B-shaped max load (1,024 requests of 128 / 128 at 256 sequences): FP8 W8A8 with the
  # heuristic's algorithms, with 8 timed per row-count bucket, and bf16, same call.
  b=(.device/kiln bench --offline --device cuda --prompt-len 128 --output-len 128 --max-num-seqs 256 --max-batched-tokens 8192 --num-requests 1024)
  TAIL=4 step bench-fp8-max 200 "${b[@]}" --model synth:llama3-8b+fp8
  KILN_FP8_LT_TUNE=8 TAIL=4 step bench-fp8-max-tune8 200 "${b[@]}" --model synth:llama3-8b+fp8
  TAIL=4 step bench-bf16-max 200 "${b[@]}" --model synth:llama3-8b
  [ "${INT8:-0}" = 1 ] && TAIL=4 step bench-int8-max 200 "${b[@]}" --model synth:llama3-8b+int8
fi
if [ "$what" = attn-variants ]; then
  # Attention kernel experiments: macros set through KILN_NVRTC_DEFINES (ATTN_VARIANTS:
  # ' '-separated lists such as 'A=1,B', '-' for none; the template reads none today, so an
  # experiment adds its #ifdef first). The quick check of the last variant, then 64 × 4k decode
  # speed over bf16 and FP8 pools for each (files numbered: a comma in a file name does not
  # come back), and (NCU=1) a profile of the bf16 hd128 g4 split kernel for the first and last.
  read -ra vs <<< "${ATTN_VARIANTS:--}"
  def() { [ "$1" = - ] && echo "" || echo "$1"; }
  n=${#vs[@]}
  KILN_NVRTC_DEFINES="$(def "${vs[n-1]}")" TAIL=6 step attn-check 300 .device/kiln-check-attention --quick --no-speed
  for i in "${!vs[@]}"; do
    echo "variant $i: ${vs[i]}"
    KILN_NVRTC_DEFINES="$(def "${vs[i]}")" TAIL=10 step "attn-speed-v$i" 200 .device/kiln-check-attention --no-check --speed-4k
  done
  ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
  if [ "${NCU:-0}" = 1 ] && [ -n "$ncu" ]; then
    for i in 0 $((n - 1)); do
      KILN_NVRTC_DEFINES="$(def "${vs[i]}")" TAIL=70 step "ncu-split-v$i" 150 "$ncu" --clock-control none -k regex:split_hd128_g4 -s 2 -c 1 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis --section LaunchStats \
        .device/kiln-check-attention --no-check --speed-4k
    done
  fi
fi
if [ "$what" = fused-rope ]; then
  # RoPE of computed sources (Qwen2's bias, Qwen3 / Gemma 3's per-head norm + KV write) on the
  # GPU against the CPU, then every architecture fixture (qwen3, gemma3, qwen3_moe run it) vs HF.
  TAIL=12 step kernels-rope 150 .device/kiln-check-kernels --quick --only rope_half_bias,rope_kv_write_bias,qk_norm_rope_write,qk_norm_rope_write_llama3,rope_half,rope_kv_write --out "$OUT/kernels-rope.md"
  TAIL=40 step arch 240 .device/kiln-check-arch tests/fixtures/arch-tiny/*/
fi

if [ "$what" = arch ]; then
  # Every architecture's tiny fixture on the GPU against HF, then the attention template (head
  # dims 32 to 256, sliding windows) and the Llama model check after the decoder rewrite.
  TAIL=120 step arch 300 .device/kiln-check-arch tests/fixtures/arch-tiny/*/
  TAIL=12 step attention 240 .device/kiln-check-attention --quick --no-speed --out "$OUT/attention.md"
  TAIL=30 step model 200 .device/kiln-check-model --model "$(ls .device/smollm2-*l.gguf | head -1)" --fixtures tests/fixtures/reference.json --dtypes bf16
fi

if [ "$what" = w8 ]; then
  # W8A16 (FP8 / INT8 weights kept 8-bit): the kernels against the CPU reference and their
  # speed against dense cuBLAS, the compressed-tensors / DeepSeek fixtures on the GPU against
  # kiln's CPU run, the int4 kernels again (shared module), then 8B-shaped decode in fp8 and
  # bf16 in the same call.
  TAIL=60 step w8-kernels 240 .device/kiln-check-w8
  KILN_W8=kernels TAIL=30 step w8-model 180 .device/kiln-check-arch --vs-cpu "${ct[@]}"
  TAIL=4 step int4-kernels 180 .device/kiln-check-int4 --no-speed
  bench_decode llama3-8b+fp8 llama3-8b
fi

if [ "$what" = w8a8 ]; then
  # FP8 W8A8 with cuBLASLt applying the scales (outer vectors, 128×128 blocks) and the W8A8
  # GEMV: the kernels against the CPU twin and their speed, the FP8 fixtures through W8A8 on
  # the GPU against the CPU's W8A8 twin, the other settings again, then 8B-shaped decode and
  # prefill in fp8 and bf16 in the same call.
  TAIL=75 step w8-kernels 300 .device/kiln-check-w8
  KILN_W8A8_BLOCKS=1 TAIL=3 step w8-kernels-blocks 200 .device/kiln-check-w8 --no-speed
  KILN_W8=w8a8 TAIL=40 step w8a8-model 180 .device/kiln-check-arch --vs-cpu "${ct[@]}"
  KILN_W8=kernels TAIL=3 step w8-model-kernels 180 .device/kiln-check-arch --vs-cpu "${ct[@]}"
  TAIL=3 step w8-model-dense 180 .device/kiln-check-arch --vs-cpu "${ct[@]}"
  TAIL=3 step int4-kernels 180 .device/kiln-check-int4 --no-speed
  bench_decode llama3-8b+fp8 llama3-8b
  b=(.device/kiln bench --offline --device cuda)
  for m in llama3-8b+fp8 llama3-8b; do
    TAIL=4 step "bench-${m/+/-}-prefill" 150 "${b[@]}" --model "synth:$m" --num-requests 16 --prompt-len 1024 --output-len 4 --max-num-seqs 256 --max-batched-tokens 8192
    TAIL=4 step "bench-${m/+/-}-max" 200 "${b[@]}" --model "synth:$m" --num-requests 1024 --prompt-len 128 --output-len 128 --max-num-seqs 256 --max-batched-tokens 8192
  done
fi

if [ "$what" = w8a8-ppl ]; then
  # FP8 W8A8 on real weights: SmolLM2 cut to its first layers (PPL_MODEL, default 10) to an HF
  # directory, then FP8-dynamic (per-channel weights, per-token activations) by kiln quantize;
  # perplexity and KL from the unquantized model on the founding-documents text, W8A16 and
  # W8A8, on the GPU (bf16) and the CPU (f32, W8A8 through the CPU twin).
  .device/kiln convert "${PPL_MODEL:-.device/smollm2-10l.gguf}" /tmp/s-hf > /dev/null
  .device/kiln quantize /tmp/s-hf /tmp/s-fp8 --method fp8-dynamic | tail -1
  f=tests/fixtures/perplexity/founding-documents.txt
  for dev in cuda cpu; do
    for w in "" w8a8; do
      KILN_W8=$w TAIL=4 step "ppl-$dev-${w:-w8a16}" 300 .device/kiln perplexity --model /tmp/s-fp8 --file "$f" --kl-base /tmp/s-hf --device "$dev"
    done
  done
fi

if [ "$what" = recheck ]; then
  # After a refactor of the quantized GPU products: both kernel families against the CPU, the
  # 8-bit fixtures through the kernels and dequantized at load, every architecture against HF.
  TAIL=3 step w8-kernels 240 .device/kiln-check-w8 --no-speed
  TAIL=3 step int4-kernels 180 .device/kiln-check-int4 --no-speed
  KILN_W8=kernels TAIL=3 step w8-model-kernels 180 .device/kiln-check-arch --vs-cpu "${ct[@]}"
  TAIL=3 step w8-model-dense 180 .device/kiln-check-arch --vs-cpu "${ct[@]}"
  TAIL=3 step arch 300 .device/kiln-check-arch tests/fixtures/arch-tiny/*/
fi

if [ "$what" = headdims ]; then
  # Head dims 80 and 96: the attention template against the dense reference (every route),
  # then whole random checkpoints of those head dims on the GPU against kiln's CPU run.
  TAIL=12 step attention 300 .device/kiln-check-attention --quick --no-speed --out "$OUT/attention.md"
  step make-hd 120 python3 bench/device/make_headdim_checkpoints.py /tmp/hd
  TAIL=30 step arch-hd 200 .device/kiln-check-arch --vs-cpu /tmp/hd/phi3-hd96 /tmp/hd/llama-hd80
fi

if [ "$what" = final ]; then
  b=(.device/kiln bench --offline --device cuda)
  TAIL=12 step attention 200 .device/kiln-check-attention --quick --out "$OUT/attention.md"
  TAIL=4 step model 120 .device/kiln-check-model --model .device/smollm2-10l.gguf --fixtures tests/fixtures/reference.json
  for c in 1 8 64; do
    TAIL=4 step "bench-smol-c$c" 120 "${b[@]}" --model synth:smollm2-135m --num-requests $c --prompt-len 128 --output-len 256 --max-num-seqs 256
    TAIL=4 step "bench-8b-c$c" 120 "${b[@]}" --model synth:llama3-8b --num-requests $c --prompt-len 128 --output-len 256 --max-num-seqs 256
  done
  TAIL=4 step bench-8b-ttft128 60 "${b[@]}" --model synth:llama3-8b --num-requests 1 --prompt-len 128 --output-len 2
  TAIL=4 step bench-8b-ttft2048 60 "${b[@]}" --model synth:llama3-8b --num-requests 1 --prompt-len 2048 --output-len 2 --max-batched-tokens 2048
  TAIL=6 step bench-8b-128x128 120 "${b[@]}" --model synth:llama3-8b --num-requests 1024 --prompt-len 128 --output-len 128 --max-num-seqs 256 --max-batched-tokens 8192
  TAIL=6 step bench-8b-2048x128 120 "${b[@]}" --model synth:llama3-8b --num-requests 256 --prompt-len 2048 --output-len 128 --max-num-seqs 256 --max-batched-tokens 8192
  TAIL=6 step bench-8b-1000x1000 240 "${b[@]}" --model synth:llama3-8b --num-requests 256 --prompt-len 1000 --output-len 1000 --max-num-seqs 256 --max-batched-tokens 8192
  # Cold start of a server with a warm kernel cache: kiln build, then time kiln serve to "ready".
  step build 120 .device/kiln build
  for i in 1 2; do
    t0=$(date +%s.%N); .device/kiln serve --device cuda --model .device/smollm2-10l.gguf --port 0 > "$OUT/serve$i.log" 2>&1 &
    pid=$!; for _ in $(seq 1 200); do grep -q "ready in" "$OUT/serve$i.log" && break; sleep 0.05; done
    echo "serve cold start $i: $(python3 -c "import time; print(round(time.time() - $t0, 2))") s wall; $(grep -o 'ready in [^ ]* [a-z]*' "$OUT/serve$i.log")"
    kill -TERM $pid; wait $pid
  done
fi

if [ "$what" = attn-sweep ]; then
  b=(.device/kiln bench --offline --device cuda)
  TAIL=14 step attention 200 .device/kiln-check-attention --quick --out "$OUT/attention.md"
  TAIL=5 step bench-8b-1000x1000 240 "${b[@]}" --model synth:llama3-8b --num-requests 256 --prompt-len 1000 --output-len 1000 --max-num-seqs 256 --max-batched-tokens 8192
  TAIL=5 step bench-8b-c64 120 "${b[@]}" --model synth:llama3-8b --num-requests 64 --prompt-len 128 --output-len 256 --max-num-seqs 256
fi

if [ "$what" = warm ]; then
  b=(.device/kiln bench --offline --device cuda)
  TAIL=3 step bench-8b-ttft128 60 "${b[@]}" --model synth:llama3-8b --num-requests 1 --prompt-len 128 --output-len 2
  TAIL=3 step bench-8b-ttft2048 60 "${b[@]}" --model synth:llama3-8b --num-requests 1 --prompt-len 2048 --output-len 2 --max-batched-tokens 2048
  TAIL=3 step bench-8b-c1 60 "${b[@]}" --model synth:llama3-8b --num-requests 1 --prompt-len 128 --output-len 256
  TAIL=3 step bench-smol-c1 60 "${b[@]}" --model synth:smollm2-135m --num-requests 1 --prompt-len 128 --output-len 256
  step build 120 .device/kiln build
  for i in 1 2; do
    t0=$(python3 -c "import time; print(time.time())"); .device/kiln serve --device cuda --model .device/smollm2-10l.gguf --port 0 > "$OUT/serve$i.log" 2>&1 &
    pid=$!; for _ in $(seq 1 200); do grep -q "ready in" "$OUT/serve$i.log" && break; sleep 0.05; done
    echo "serve start $i: $(python3 -c "import time; print(round(time.time() - $t0, 2))") s wall; $(grep -o 'ready in [^ ]* [a-z]*' "$OUT/serve$i.log")"
    kill -TERM $pid; wait $pid
  done
fi

# Sampled requests (temperature 0.8, top-p 0.9, seeded): the device sampler (auto) against the
# host path (logits copied to the CPU) in the same call.
if [ "$what" = sampling ] || [ "$what" = all ]; then
  b=(.device/kiln bench --offline --device cuda --temperature 0.8 --top-p 0.9)
  for where in auto host; do
    TAIL=4 step "bench-smol-b1-sampled-$where" 120 "${b[@]}" --sampling $where --model synth:smollm2-135m --num-requests 1 --prompt-len 128 --output-len 256
    TAIL=4 step "bench-8b-b64-sampled-$where" 150 "${b[@]}" --sampling $where --model synth:llama3-8b --num-requests 64 --prompt-len 128 --output-len 128 --max-num-seqs 64 --max-batched-tokens 8192
  done
fi

# Structured output on the GPU (issue 17): a 64-request json_schema batch against the same batch
# unconstrained through `kiln serve --device cuda`, with the server's per-token mask times.
# `structured`: SmolLM2 cut to 2 layers (a model step of ~1 ms, so the constraint's share is an
# upper bound); `structured-8b`: Llama-3-8B's shapes with random weights and SmolLM2's tokenizer
# (an F16 GGUF written here by the synth_gguf example), the model size the issue's target names.
if [ "$what" = structured ] || [ "$what" = structured-8b ]; then
  model=.device/smollm2-2l.gguf
  if [ "$what" = structured-8b ]; then
    model=/tmp/synth-8b.gguf
    step synth-8b 300 .device/synth_gguf .device/smollm2-2l.gguf llama3-8b $model
  fi
  .device/kiln serve --device cuda --model $model --port 8011 --max-num-seqs 64 > "$OUT/serve-$what.log" 2>&1 &
  pid=$!; for _ in $(seq 1 1800); do grep -q "ready in" "$OUT/serve-$what.log" && break; sleep 0.1; done
  tail -3 "$OUT/serve-$what.log"
  export PYTHONUNBUFFERED=1
  TAIL=12 step $what-64x64 240 python3 bench/structured_throughput.py --base-url http://127.0.0.1:8011/v1 --batch 64 --tokens 64 --rounds 3
  TAIL=6 step $what-1x64 120 python3 bench/structured_throughput.py --base-url http://127.0.0.1:8011/v1 --batch 1 --tokens 64 --rounds 3 --repeats 3
  kill -TERM $pid; wait $pid
fi

# The cuBLASLt FP8 sweep over scale forms (outer-vector, none, alpha vector) at 256-2048 rows.
if [ "$what" = fp8-sweep ]; then
  KILN_SWEEP_ROWS=256,512,2048 TAIL=40 step lt-sweep 200 .device/kiln-check-w8 --lt-sweep
fi
# The engine's FP8 forms (`KILN_FP8_FORM`) checked against the twin and timed per product, then
# at full load beside the default (8B shapes, 1,024 requests of 128 / 128 at 256 sequences).
if [ "$what" = fp8-forms ]; then
  for form in unscaled; do
    KILN_FP8_FORM=$form TAIL=3 step "w8-check-$form" 120 .device/kiln-check-w8 --no-speed
    KILN_FP8_FORM=$form TAIL=40 step "w8-speed-$form" 120 .device/kiln-check-w8 --no-check
  done
  m=(.device/kiln bench --offline --device cuda --num-requests 1024 --prompt-len 128 --output-len 128 --max-num-seqs 256 --max-batched-tokens 8192)
  for form in outer unscaled; do
    KILN_W8=w8a8 KILN_FP8_FORM=$form TAIL=5 step "bench-fp8-max-$form" 120 "${m[@]}" --model synth:llama3-8b+fp8
    KILN_W8=w8a8 KILN_FP8_FORM=$form TAIL=5 step "bench-fp8-c64-$form" 120 "${m[@]:0:5}" --num-requests 64 --prompt-len 128 --output-len 128 --max-num-seqs 256 --model synth:llama3-8b+fp8
    KILN_W8=w8a8 KILN_FP8_FORM=$form TAIL=5 step "bench-fp8-c1-$form" 120 "${m[@]:0:5}" --num-requests 1 --prompt-len 128 --output-len 128 --model synth:llama3-8b+fp8
  done
  TAIL=5 step "bench-bf16-max" 120 "${m[@]}" --model synth:llama3-8b
fi
# W4A16 and bf16 at one sequence (8B shapes); where a 256-sequence step's time goes: GPU kernel
# totals (nsys) of one wave (4 prefill steps, 128 decode steps at 256 rows), FP8 and bf16.
if [ "$what" = c1-nsys ]; then
  b=(.device/kiln bench --offline --device cuda --num-requests 1 --prompt-len 128 --output-len 128)
  TAIL=4 step bench-int4-c1 150 "${b[@]}" --model synth:llama3-8b+int4
  TAIL=4 step bench-bf16-c1 150 "${b[@]}" --model synth:llama3-8b
  nsys=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
  echo "nsys: ${nsys:-none}"
  if [ -n "$nsys" ]; then
    w=(.device/kiln bench --offline --device cuda --num-requests 256 --prompt-len 128 --output-len 128 --max-num-seqs 256 --max-batched-tokens 8192)
    for mdl in llama3-8b+fp8 llama3-8b; do
      "$nsys" profile -q -t cuda --cuda-graph-trace=node -o "/tmp/prof-${mdl/+/-}" -f true "${w[@]}" --model "synth:$mdl" > /dev/null 2>&1
      "$nsys" stats -q -r cuda_gpu_kern_sum -f csv "/tmp/prof-${mdl/+/-}.nsys-rep" > "$OUT/nsys-${mdl/+/-}.csv" 2>&1
      echo "=== nsys $mdl (top kernels: time %, total ns, instances, ..., name)"; head -22 "$OUT/nsys-${mdl/+/-}.csv" | cut -c1-200
    done
  fi
fi

# Mixture of experts on the GPU (issue 11): the grouped path (default on a GPU) and the
# per-expert one (KILN_MOE_GROUPED=0) against kiln's CPU run on the Mixtral and Qwen3-MoE
# fixtures, then decode and prefill speed of both on a random Qwen3-MoE-shaped checkpoint.
if [ "$what" = moe ]; then
  moe=(tests/fixtures/arch-tiny/mixtral tests/fixtures/arch-tiny/qwen3_moe)
  TAIL=12 step moe-check-grouped 150 .device/kiln-check-arch --vs-cpu "${moe[@]}"
  KILN_MOE_GROUPED=0 TAIL=6 step moe-check-per-expert 150 .device/kiln-check-arch --vs-cpu "${moe[@]}"
  step make-moe 150 python3 bench/device/make_moe_checkpoint.py /tmp/moe 4
  b=(.device/kiln bench --offline --device cuda --model /tmp/moe --prompt-len 128 --output-len 64 --max-num-seqs 256)
  for c in 1 64; do
    TAIL=5 step "bench-moe-grouped-c$c" 150 "${b[@]}" --num-requests $c
    KILN_MOE_GROUPED=0 TAIL=5 step "bench-moe-per-expert-c$c" 150 "${b[@]}" --num-requests $c
  done
fi

# FP8 with the default form choice (unscaled from 64 rows): the 8-bit check, then 1 / 64 /
# full-load sequences beside bf16 at full load (8B shapes).
if [ "$what" = fp8-default ]; then
  TAIL=3 step w8-check-default 120 .device/kiln-check-w8 --no-speed
  m=(.device/kiln bench --offline --device cuda --prompt-len 128 --output-len 128 --max-num-seqs 256 --max-batched-tokens 8192)
  TAIL=5 step bench-fp8-max-default 120 "${m[@]}" --num-requests 1024 --model synth:llama3-8b+fp8
  TAIL=5 step bench-bf16-max-default 120 "${m[@]}" --num-requests 1024 --model synth:llama3-8b
  TAIL=5 step bench-fp8-c1-default 120 "${m[@]}" --num-requests 1 --model synth:llama3-8b+fp8
  TAIL=5 step bench-fp8-c64-default 120 "${m[@]}" --num-requests 64 --model synth:llama3-8b+fp8
fi

# Decode attention speed at head dims 128 / 96 / 80 (issue 11: the padded rows and idle
# threads of 80 and 96), no checks.
if [ "$what" = attn-heads ]; then
  TAIL=14 step attention-heads 200 .device/kiln-check-attention --no-check --speed-heads --out "$OUT/attention-heads.md"
fi
# MoE routing by the #[fused] kernels: each against the CPU (GPU check; widths of 8, 60 and 128
# experts), the MoE fixtures against the CPU, then the Qwen3-30B-A3B-shaped model (4 layers)
# with the kernel's routing and with the host's (KILN_MOE_ROUTE=host), alternating, twice.
if [ "$what" = moe-route ]; then
  TAIL=8 step moe-route-kernels 120 .device/kiln-check-kernels --only moe_route_top2,moe_route_top8 --widths 8,60,128 --rows 1,7,64,512 --no-baselines --out "$OUT/moe-route-kernels.md"
  TAIL=8 step top2-sample 120 .device/kiln-gpu-check-samples --only top2 --quick --no-baselines --out "$OUT/top2-sample.md"
  TAIL=8 step moe-route-arch 150 .device/kiln-check-arch --vs-cpu tests/fixtures/arch-tiny/mixtral tests/fixtures/arch-tiny/qwen3_moe
  step make-moe 150 python3 bench/device/make_moe_checkpoint.py /tmp/moe 4
  b=(.device/kiln bench --offline --device cuda --model /tmp/moe --prompt-len 128 --output-len 64 --max-num-seqs 256)
  for round in 1 2; do
    for c in 1 64; do
      TAIL=5 step "bench-moe-route-kernel-c$c-r$round" 150 "${b[@]}" --num-requests $c
      KILN_MOE_ROUTE=host TAIL=5 step "bench-moe-route-host-c$c-r$round" 150 "${b[@]}" --num-requests $c
    done
  done
fi

# The tensor-core int4 GEMV (issue 14): every int4 kernel against the CPU and timed to 16 rows
# (8 warps a block; then 4, speed only), the AWQ / GPTQ fixtures, then 8B-shaped decode at 1
# and 8 sequences with the tensor-core GEMV, with the block GEMV (KILN_INT4_TC_GEMV=0) and in
# bf16, alternating, twice; at 16 / 32 sequences the tensor-core GEMV in launches of 8 rows
# (KILN_INT4_TC_MAX_ROWS) against the default; NCU=1 adds a profile of the new kernel at one row.
if [ "$what" = int4-tc ]; then
  TAIL=40 step int4-kernels 240 .device/kiln-check-int4 --max-rows 16
  KILN_INT4_TC_WARPS=4 TAIL=20 step int4-speed-w4 120 .device/kiln-check-int4 --no-check --max-rows 8
  KILN_INT4_GPU=kernels TAIL=14 step int4-model 180 .device/kiln-check-arch --vs-cpu tests/fixtures/int4-tiny/awq tests/fixtures/int4-tiny/gptq
  b=(.device/kiln bench --offline --device cuda --prompt-len 128 --output-len 128 --max-num-seqs 256)
  for round in 1 2; do
    for c in 1 8; do
      TAIL=4 step "bench-int4-tc-c$c-r$round" 150 "${b[@]}" --model synth:llama3-8b+int4 --num-requests $c
      KILN_INT4_TC_GEMV=0 TAIL=4 step "bench-int4-block-c$c-r$round" 150 "${b[@]}" --model synth:llama3-8b+int4 --num-requests $c
      TAIL=4 step "bench-bf16-c$c-r$round" 150 "${b[@]}" --model synth:llama3-8b --num-requests $c
    done
  done
  KILN_INT4_TC_WARPS=4 TAIL=4 step "bench-int4-tc4-c1" 150 "${b[@]}" --model synth:llama3-8b+int4 --num-requests 1
  for c in 16 32; do
    KILN_INT4_TC_MAX_ROWS=$c TAIL=4 step "bench-int4-tc$c-c$c" 150 "${b[@]}" --model synth:llama3-8b+int4 --num-requests $c
    TAIL=4 step "bench-int4-c$c" 150 "${b[@]}" --model synth:llama3-8b+int4 --num-requests $c
    TAIL=4 step "bench-bf16-c$c" 150 "${b[@]}" --model synth:llama3-8b --num-requests $c
  done
  ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  if [ "${NCU:-0}" = 1 ] && [ -n "$ncu" ]; then
    TAIL=60 step ncu-int4-tcgemv 120 "$ncu" --clock-control none -k regex:kiln_i4_tcgemv -c 4 \
      --section SpeedOfLight --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis \
      .device/kiln-check-int4 --no-check --max-rows 1
  fi
fi
# FP8 at full load (issue 14) as a server would be set for it: 1,024 and 2,048 requests of
# 128 / 128 at 256 and 512 sequences, FP8 weights with bf16 and with FP8 KV, beside bf16 at
# the same settings.
if [ "$what" = fp8-max2 ]; then
  m=(.device/kiln bench --offline --device cuda --prompt-len 128 --output-len 128 --max-batched-tokens 8192)
  for s in 256 512; do
    r=$((4 * s))
    TAIL=5 step "bench-bf16-max-s$s" 150 "${m[@]}" --num-requests $r --max-num-seqs $s --model synth:llama3-8b
    TAIL=5 step "bench-fp8-max-s$s" 150 "${m[@]}" --num-requests $r --max-num-seqs $s --model synth:llama3-8b+fp8
    TAIL=5 step "bench-fp8-fp8kv-max-s$s" 150 "${m[@]}" --num-requests $r --max-num-seqs $s --model synth:llama3-8b+fp8 --kv-cache-dtype fp8
  done
fi
# Where a 512-sequence decode step's GPU time goes (issue 14: FP8 at full load), per kernel:
# Nsight Compute's kernel durations (no cache flush, clocks as they run, eager launches) over
# two runs that differ only in output length (8 and 20 tokens for 512 requests of 128), so the
# difference is 12 pure decode steps; FP8 weights + FP8 KV, then bf16; then one W4A16 sequence.
if [ "$what" = step-profile ]; then
  ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
  echo "ncu: ${ncu:-none}"
  # `decode_profile TAG TIMEOUT BENCH...`: BENCH profiled at 8 and 20 output tokens, the 12
  # steps between summed per kernel into $OUT/profile-TAG.txt.
  decode_profile() {
    local tag=$1 limit=$2 len; shift 2
    for len in 8 20; do
      KILN_CUDA_GRAPHS=0 TAIL=3 step "ncu-$tag-$len" "$limit" "$ncu" --metrics gpu__time_duration.sum \
        --cache-control none --clock-control none -o "/tmp/rep-$tag-$len" -f "$@" --output-len $len
      "$ncu" -i "/tmp/rep-$tag-$len.ncu-rep" --csv --page raw > "$OUT/ncu-$tag-$len.csv" 2>&1
    done
    python3 bench/device/kernel_times.py "$OUT/ncu-$tag-20.csv" "$OUT/ncu-$tag-8.csv" --steps 12 | tee "$OUT/profile-$tag.txt"
  }
  if [ -n "$ncu" ]; then
    p=(.device/kiln bench --offline --device cuda --num-requests 512 --max-num-seqs 512 --prompt-len 128 --max-batched-tokens 8192)
    # PROFILES picks some (one FP8 run of 512 requests under ncu took over 110 s on an H100, so
    # the three may not fit one 600 s call: e.g. PROFILES=fp8, then PROFILES="bf16 int4").
    for what_p in ${PROFILES:-fp8 bf16 int4}; do
      case $what_p in
        fp8) decode_profile llama3-8b-fp8 280 "${p[@]}" --model synth:llama3-8b+fp8 --kv-cache-dtype fp8 ;;
        bf16) decode_profile llama3-8b 280 "${p[@]}" --model synth:llama3-8b ;;
        int4) decode_profile int4-c1 200 .device/kiln bench --offline --device cuda --num-requests 1 --prompt-len 128 --model synth:llama3-8b+int4 ;;
      esac
    done
  fi
fi
