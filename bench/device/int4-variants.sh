#!/usr/bin/env bash
# The W4A16 tensor-core kernel's variants on one GPU (run after run-checks.sh has unpacked
# .device/): quads per step (KILN_INT4_MMA_Q) × blocks per SM aimed for by the split of k
# (KILN_INT4_MMA_BLOCKS_PER_SM), each a full kiln-check-int4 (correctness, then the speed
# table into $OUT/int4-qQ-bB.txt); prints the tensor-core column at a few row counts.
# VARIANTS: space-separated Q,B pairs (default "2,2 1,4 2,4 2,8").
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
for v in ${VARIANTS:-2,2 1,4 2,4 2,8}; do
  v="${v/,/ }"
  set -- $v
  f="$OUT/int4-q$1-b$2.txt"
  KILN_INT4_MMA_Q=$1 KILN_INT4_MMA_BLOCKS_PER_SM=$2 timeout 120 .device/kiln-check-int4 > "$f" 2>&1
  echo "=== q$1 b$2: rc $? $(grep -c '^FAIL' "$f") failures; $(grep 'comparisons' "$f")"
  grep -E '^\| (qkv|o|gate_up|down) [0-9×]+ \| (1|8|16|64|128|512) \|' "$f" | awk -F'|' '{printf "%s m%s: mma %s deq %s dense %s\n", $2, $3, $5, $6, $7}'
done
