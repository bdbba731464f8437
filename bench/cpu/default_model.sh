#!/usr/bin/env bash
# CPU decode/prefill on the default model: kiln with its Q4_1 weights kept (--weights stored)
# and dequantized to f32 (--weights dense), and llama.cpp on the same GGUF, same prompt (the
# longest prompt of tests/fixtures/reference.json, 55 tokens), greedy, 2 threads; RUNS runs each,
# interleaved. Prints one JSON line per run. Other files: MODELS="A.gguf B.gguf" (each run with
# WEIGHTS, default "stored dense"; e.g. the files of bench/cpu/make_llama_cpp_quants.py), and
# the stored path with each activation quantization in ACTS (default "bits16"; "bits16 ggml8").
#
# Needs: a release build (cargo build --release -p kiln-server) and, for the peer, a venv with
# llama-cpp-python built from source by pip (LLAMA_PY, default /tmp/llamavenv/bin/python):
#   python3 -m venv /tmp/llamavenv && CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON \
#     -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX_VNNI=ON \
#     -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF" /tmp/llamavenv/bin/pip install llama-cpp-python==0.3.36
# (AMX off: on these machines CPUID advertises AMX but the OS has not enabled its tile state.)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${RUNS:-3}"
TOKENS="${TOKENS:-64}"
KILN="${KILN_BIN:-target/release/kiln}"
LLAMA_PY="${LLAMA_PY:-/tmp/llamavenv/bin/python}"
MODELS="${MODELS:-$("$KILN" fetch | tail -n 1)}"
WEIGHTS="${WEIGHTS:-stored dense}"
ACTS="${ACTS:-bits16}"  # activation quantization of the stored path: bits16 and/or ggml8
PROMPT="$(mktemp)"
python3 -c 'import json; r = json.load(open("tests/fixtures/reference.json")); print(max(r["prompts"], key=lambda p: len(p["ids"]))["text"], end="")' > "$PROMPT"
for _ in $(seq "$RUNS"); do
 for MODEL in $MODELS; do
  file="$(basename "$MODEL")"
  for w in $WEIGHTS; do
   for act in $ACTS; do
    [ "$w" = dense ] && [ "$act" != "${ACTS%% *}" ] && continue
    KILN_CPU_ACTIVATIONS="$act" "$KILN" generate --device cpu --model "$MODEL" --weights "$w" --json --ignore-eos --max-tokens "$((TOKENS + 1))" --prompt-file "$PROMPT" 2>/dev/null \
      | python3 -c 'import json, sys; v = json.load(sys.stdin); t = v["timings"]; print(json.dumps({"engine": "kiln", "file": sys.argv[2], "weights": sys.argv[1], "activations": sys.argv[3], "prompt_tokens": t["prompt_tokens"], "prefill_tok_s": round(t["prefill_tokens_per_s"], 1), "decode_tok_s": round(t["decode_tokens_per_s"], 1)}))' "$w" "$file" "$act"
   done
  done
  if [ -x "$LLAMA_PY" ]; then
    "$LLAMA_PY" bench/peers/llama_cpp_cpu.py "$MODEL" "$PROMPT" --tokens "$TOKENS" --runs 1 --threads 2 \
      | python3 -c 'import json, sys; b = json.load(sys.stdin)["best"]; print(json.dumps({"engine": "llama.cpp", "file": sys.argv[1], "prompt_tokens": b["prompt_tokens"], "prefill_tok_s": round(b["prefill_tokens_per_s"], 1), "decode_tok_s": round(b["decode_tokens_per_s"], 1)}))' "$file"
  fi
 done
done
rm -f "$PROMPT"
