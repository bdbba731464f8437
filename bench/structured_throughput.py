"""Throughput of constrained decoding against the same batch unconstrained (issue 17 target).

Sends BATCH chat requests at once to a running `kiln serve` (plain HTTP from the standard
library, so it runs where no client package is installed), twice: unconstrained (with
`ignore_eos`), and under a `json_schema` response format whose outputs cannot end before
`max_tokens` (an array of at least TOKENS digits). So both runs generate exactly TOKENS tokens
per request and their tokens per second compare like with like. The two runs alternate for
ROUNDS rounds (A B A B ...), so a change in machine load during the benchmark hits both alike;
the ratio is of the summed times. Then the time to first token of one request with a schema
the server has not seen, against the same request unconstrained (medians of REPEATS), and the
server's per-token mask time (`/metrics`).

    python bench/structured_throughput.py --base-url http://127.0.0.1:8000/v1 [--batch 64 --tokens 64]
"""

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import urllib.request


def post(base_url, path, body, stream=False):
    """POSTs `body` as JSON; the parsed reply, or (streaming) the open response."""
    req = urllib.request.Request(
        base_url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    r = urllib.request.urlopen(req, timeout=600)
    return r if stream else json.loads(r.read())


def run_batch(base_url, model, batch, tokens, constrained):
    schema = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": tokens}

    def one(i):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"List some digits ({i})."}],
            "max_tokens": tokens,
            "temperature": 0,
        }
        if constrained:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "digits", "schema": schema}}
        else:
            body["ignore_eos"] = True
        return post(base_url, "/chat/completions", body)["usage"]["completion_tokens"]

    t = time.perf_counter()
    with ThreadPoolExecutor(batch) as pool:
        total = sum(pool.map(one, range(batch)))
    dt = time.perf_counter() - t
    return total, dt


def ttft(base_url, model, schema):
    body = {"model": model, "messages": [{"role": "user", "content": "A person."}], "max_tokens": 2,
            "temperature": 0, "stream": True}
    if schema:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    t = time.perf_counter()
    first = None
    for line in post(base_url, "/chat/completions", body, stream=True):
        line = line.decode().strip()
        if first is not None or not line.startswith("data: ") or line == "data: [DONE]":
            continue
        choices = json.loads(line[6:]).get("choices") or [{}]
        if choices[0].get("delta", {}).get("content") or choices[0].get("finish_reason"):
            first = time.perf_counter() - t
    return first


def metric(base_url, name):
    """The value of `name` on the server's /metrics (0 when absent)."""
    text = urllib.request.urlopen(base_url.rsplit("/v1", 1)[0] + "/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def mask_seconds(base_url):
    return metric(base_url, "kiln_constraint_mask_seconds_total")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    url = a.base_url
    model = json.loads(urllib.request.urlopen(url + "/models").read())["data"][0]["id"]
    run_batch(url, model, 4, 4, False)  # warm up
    free_tok = free_s = json_tok = json_s = 0
    for r in range(a.rounds):
        ft, fs = run_batch(url, model, a.batch, a.tokens, False)
        m0 = mask_seconds(url)
        jt, js = run_batch(url, model, a.batch, a.tokens, True)
        masks = mask_seconds(url) - m0
        print(f"round {r}: unconstrained {ft / fs:.1f} tok/s, json_schema {jt / js:.1f} tok/s "
              f"(masks {1000 * masks:.0f} ms of {js:.1f} s: {100 * masks / js:.2f}%)")
        free_tok, free_s, json_tok, json_s = free_tok + ft, free_s + fs, json_tok + jt, json_s + js
    free, cons = free_tok / free_s, json_tok / json_s
    print(f"batch {a.batch} x {a.tokens} tokens, {a.rounds} rounds: unconstrained {free:.1f} tok/s "
          f"({free_tok} in {free_s:.2f} s), json_schema {cons:.1f} tok/s ({json_tok} in {json_s:.2f} s): "
          f"{100 * cons / free:.1f}%")
    plain, fresh = [], []
    for i in range(a.repeats):
        plain.append(ttft(url, model, None))
        schema = {"type": "object", "properties": {f"field_{i}_{time.time_ns()}": {"type": "string"}, "age": {"type": "integer"}}}
        fresh.append(ttft(url, model, schema))
    p, f = statistics.median(plain), statistics.median(fresh)
    print(f"TTFT (median of {a.repeats}): unconstrained {1000 * p:.1f} ms, new schema {1000 * f:.1f} ms: {f / p:.2f}x")
    masks = metric(url, "kiln_constraint_masks_total")
    p99 = metric(url, "kiln_constraint_mask_p99_seconds")
    mx = metric(url, "kiln_constraint_mask_max_seconds")
    print(f"masks: {masks:.0f}, p99 {1e6 * p99:.0f} us, max {1e6 * mx:.0f} us (the server's /metrics)")


if __name__ == "__main__":
    main()
