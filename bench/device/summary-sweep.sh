#!/usr/bin/env bash
# The compact tail of `run-checks.sh` modes moe, structured, fp8-sweep, fp8-forms, c1-nsys, int4-tc, fp8-max2, step-profile (its full outputs stay under $OUT):
# each file's key lines, then every output joined into one file (a device call returns few).
OUT="${OUT:-/tmp/out}"; cd "$OUT" || exit 1
grep -h "batch 64\|batch 1 \|TTFT\|masks:" structured-*.txt 2>/dev/null
# The sweep: shape, rows, form, algorithms, first pick µs, best µs, best TFLOP/s, bf16 µs.
awk -F'|' 'NF > 9 && $3 ~ /[0-9]/ {gsub(/ +/, " "); split($6, f, "("); split($7, b, "("); print $2 "|" $3 "|" $4 "|" $5 "|" f[1] "|" b[1] "|" $9 "|" $10}' lt-sweep.txt 2>/dev/null
for f in moe-check-*.txt make-moe.txt; do [ -f "$f" ] && echo "$f: $(tail -4 "$f" | tr '\n' ';' | cut -c1-600)"; done
for f in w8-check-*.txt; do echo "$f: $(tail -1 "$f")"; done
grep -hE "^\| (qkv|gate_up|down) [^|]*\| (256|512|2048) \|" w8-speed-*.txt 2>/dev/null | cut -c1-160
for f in int4-kernels.txt int4-model.txt int4-check-*.txt; do [ -f "$f" ] && echo "$f: $(grep -h "FAIL\|passed\|pass\|rows" "$f" | tail -4 | tr '\n' ';' | cut -c1-600)"; done
for f in int4-kernels.txt int4-speed-*.txt; do [ -f "$f" ] && echo "$f" && grep -hE "^\| (qkv|o|gate_up|down) [0-9]" "$f" | cut -c1-200; done
cat profile-*.txt 2>/dev/null
for f in bench-*.txt; do echo "$f: $(grep -h "output tok/s\|inter-token\|mean engine step" "$f" | tr -s ' ' | tr '\n' ';')"; done
for f in *.txt *.log; do echo "##### $f"; cat "$f"; done > all-outputs.md 2>/dev/null
rm -f -- *.txt *.log; gzip -f ncu-*.csv 2>/dev/null
