#!/usr/bin/env bash
# The 1B-shape files of docs/perf.md ("A 1B-shape model"): Llama 3.2 1B's shapes with seeded
# random weights and the default model's tokenizer (the synth_gguf example), as F16, then
# Q4_1 / Q4_K_M / Q8_0 by `kiln quantize`. Made once into OUT (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/kiln/bench-1b); prints the quantized files' paths, one line,
# for `MODELS="$(bench/cpu/make_1b_shape.sh)" WEIGHTS=stored bash bench/cpu/default_model.sh`.
# Needs ~4.6 GB of disk and a release build (cargo build --release -p kiln-server).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln/bench-1b}"
KILN="${KILN_BIN:-target/release/kiln}"
TYPES="${TYPES:-q4_1 q4_k_m q8_0}"
mkdir -p "$OUT"
f16="$OUT/llama1b-f16.gguf"
if [ ! -s "$f16" ]; then
  tokenizer="$("$KILN" fetch | tail -n 1)"
  cargo run -q --release -p kiln-models --example synth_gguf -- "$tokenizer" llama3.2-1b "$f16.tmp" 0 >&2
  mv "$f16.tmp" "$f16"
fi
paths=()
for t in $TYPES; do
  q="$OUT/llama1b-$t.gguf"
  [ -s "$q" ] || "$KILN" quantize --type "$t" "$f16" "$q" >&2
  paths+=("$q")
done
echo "${paths[*]}"
