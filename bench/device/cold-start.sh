#!/usr/bin/env bash
# A real-size checkpoint from cold (GPU engine issue, item 5): write an 8B-shaped HF checkpoint
# with `kiln synth-model`, read its files once sequentially (the disk's bandwidth, in the same
# call), then time `kiln serve --model DIR` from process start to the first token of a
# completion, with an empty kernel cache and then a warm one. Run on the GPU machine from the
# repository root with the carried .device/ (bench/device/pack.sh); results under $OUT.
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
for f in .device/kiln.xz .device/smollm2-10l.gguf.xz; do [ -e "$f" ] || continue; xz -d -k -f "$f"; done
chmod +x .device/kiln
D="${SYNTH_DIR:-/tmp/synth-8b}"; PRESET="${PRESET:-llama3-8b}"
now() { python3 -c 'import time; print(time.time())'; }
t=$(now); .device/kiln synth-model --preset "$PRESET" "$D" > "$OUT/synth.txt" 2>&1; echo "synth-model: $(python3 -c "print(round($(now) - $t, 1))") s"
# synth-model writes weights and config only: take the default model's tokenizer (its ids are
# all inside the 8B vocabulary).
.device/kiln convert .device/smollm2-10l.gguf /tmp/tok > /dev/null && cp /tmp/tok/tokenizer* "$D"/
du -sb "$D" | awk '{printf "checkpoint: %.2f GB\n", $1 / 1e9}'
sync
if (echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null; then echo "page cache dropped before each read"; dropped=1; else echo "page cache NOT dropped (no permission): the files may be read from memory"; dropped=0; fi
t=$(now); cat "$D"/*.safetensors > /dev/null; r=$(python3 -c "print(round($(now) - $t, 2))")
python3 -c "import os, glob; n = sum(os.path.getsize(f) for f in glob.glob('$D/*.safetensors')); print(f'sequential read: $r s, {n / 1e9 / $r:.2f} GB/s')"
for run in empty-cache warm-cache; do
  [ "$run" = empty-cache ] && rm -rf /tmp/kiln-cold-cache
  [ "$dropped" = 1 ] && { sync; echo 3 > /proc/sys/vm/drop_caches; }
  t0=$(now)
  KILN_CACHE_DIR=/tmp/kiln-cold-cache .device/kiln serve --device "${DEVICE:-cuda}" --model "$D" --port 8123 > "$OUT/serve-$run.log" 2>&1 &
  pid=$!
  python3 - "$t0" "$run" <<'PY'
import json, sys, time, urllib.request
t0, run = float(sys.argv[1]), sys.argv[2]
base = "http://127.0.0.1:8123"
def get(path, body=None):
    req = urllib.request.Request(base + path, body, {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=300))
# The server listens at once and answers 503 until the model is loaded: retry until it serves.
ready = None
while True:
    try:
        if ready is None:
            name = get("/v1/models")["data"][0]["id"]
        body = json.dumps({"model": name, "prompt": "Hello", "max_tokens": 1}).encode()
        get("/v1/completions", body)
        break
    except Exception:
        if time.time() - t0 > 300:
            sys.exit(f"{run}: no completion after 300 s")
        time.sleep(0.02)
print(f"{run}: first token {time.time() - t0:.2f} s after process start")
PY
  kill -TERM $pid; wait $pid
  grep -o 'ready in [^ ]* [a-z]*' "$OUT/serve-$run.log" | head -1
done
