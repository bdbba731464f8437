"""Schema-driven fuzzing of `kiln serve` against its own `/openapi.json` (schemathesis).

Requests are generated from the document's request schemas (valid ones, and invalid ones that
break a schema on purpose), sent over loopback, and every answer is checked against the
document: no 5xx; the status code is documented for the route; the content type is documented
for that status (a streamed reply is `text/event-stream`, each event valid against the
document's event schema); the body matches the documented schema; a request that breaks the
schema is refused (4xx). Two checks of our own come on top: a request naming a model other
than the served one is a 404 on every route that takes `model`, and every route answers 2xx
at least once (the generating ones streamed too), so the run reached past validation.

    python tests/python/openapi_fuzz.py --base-url http://127.0.0.1:8000 [--max-time 60] [--seed N]

Run as a script, it starts schemathesis's CLI with this file as its hooks module: generation
stops after `--max-time` seconds and the run is killed 150 s after that (a request may take
up to 120 s). The seed is random and
printed at the end; `--seed N` replays a run. Requests stay cheap, since the server generates
real text on the CPU: each generating request asks for at most MAX_TOKENS tokens (set by a hook,
not by the document: any `max_tokens` the context leaves room for is valid). With
KILN_FUZZ_LOG=FILE, one JSON line per call says what the run reached.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request

import schemathesis
from hypothesis import strategies as st

import ast_parse_gc_off

# Hypothesis parses source from both worker threads; on CPython 3.11.7 (CI's) that can raise a
# spurious SystemError that fails the run (see the module). Imported as the hooks module, this
# runs in schemathesis's own process.
ast_parse_gc_off.install()

# Tokens one generated request may ask for (per choice).
MAX_TOKENS = 4
# The served model name, handed from the launcher to the hooks module.
MODEL_ENV = "KILN_FUZZ_MODEL"
GENERATING = {"/v1/completions", "/v1/chat/completions"}
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "unknown_model_is_404",
    "every_route_succeeds",
    "negative_data_rejection",
]


def served_model():
    return os.environ.get(MODEL_ENV, "")


def cheap(path, body):
    """A generating request's body with `max_tokens` (and chat's `max_completion_tokens`) at
    most MAX_TOKENS, and set when absent."""
    if path not in GENERATING or not isinstance(body, dict):
        return body
    body = dict(body)
    keys = ["max_tokens", "max_completion_tokens"] if path == "/v1/chat/completions" else ["max_tokens"]
    for k in keys:
        v = body.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > MAX_TOKENS:
            body[k] = MAX_TOKENS
    # Chat's default is whatever the context leaves: thousands of tokens on a CPU.
    if all(not isinstance(body.get(k), int) for k in keys):
        body["max_tokens"] = MAX_TOKENS
    return body


# Fields a body keeps when the hook thins it out: without them every request is a 400.
ESSENTIAL = {"prompt", "messages", "tokens"}
# Output constraints, at most one per request (the server names the two that clash; the
# document cannot say it).
CONSTRAINTS = ["response_format", "guided_json", "guided_regex", "guided_choice", "guided_grammar"]


def passable(body):
    """A body generated as valid, with what the document cannot say made true: one output
    constraint (the first it has), a prompt of at least one token (an empty one is refused
    by design) and tool-call arguments that are a JSON object's text. Without it most valid-by-schema generating requests are refused, and a slow
    run could end without one streamed answer."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    for k in [c for c in CONSTRAINTS if c in body][1:]:
        del body[k]
    if body.get("prompt") in ("", []):
        body["prompt"] = "Hello"
    # A tool call's `arguments` is JSON text (the document can only say "a string").
    messages = body.get("messages")
    if isinstance(messages, list):
        body["messages"] = [json_arguments(m) for m in messages]
    return body


def json_object_text(text):
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def json_arguments(message):
    """`message` with each tool call's `arguments` made the text of a JSON object where it is
    not (the server refuses other JSON too: arguments are named)."""
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if not isinstance(calls, list):
        return message
    fixed = []
    for call in calls:
        f = call.get("function") if isinstance(call, dict) else None
        if isinstance(f, dict) and isinstance(f.get("arguments"), str) and not json_object_text(f["arguments"]):
            call = dict(call, function=dict(f, arguments="{}"))
        fixed.append(call)
    return dict(message, tool_calls=fixed)


@schemathesis.hook
def flatmap_body(ctx, body):
    """Bodies as generated, or thinned to a few of their fields (a body with all thirty-odd
    optional fields random is nearly always refused by one of them, and the run would never
    get past validation); most name the served model (or none) so they get past the model
    check, the rest keep their random name and must be 404; half the generating ones stream."""
    if not isinstance(body, dict):
        return st.just(body)
    keys = sorted(body)

    def build(model, keep, stream):
        b = {k: v for k, v in body.items() if keep is None or k in keep or k in ESSENTIAL}
        if stream:
            b["stream"] = True
        if model == "served" and "model" in body:
            b["model"] = served_model()
        elif model == "absent":
            b.pop("model", None)
        return b

    keep = st.one_of(st.none(), st.sets(st.sampled_from(keys), max_size=4)) if keys else st.none()
    # Generated booleans are mostly false: streams (and their SSE schema) need a push.
    stream = st.booleans() if ctx.operation is not None and ctx.operation.path in GENERATING else st.just(False)
    return st.builds(build, st.sampled_from(["served", "absent", "generated"]), keep, stream)


@schemathesis.hook
def flatmap_path_parameters(ctx, path_parameters):
    if ctx.operation is None or ctx.operation.path != "/v1/models/{id}":
        return st.just(path_parameters)
    return st.sampled_from([dict(path_parameters, id=served_model()), path_parameters])


@schemathesis.hook
def before_call(ctx, case, kwargs):
    # Every phase (the coverage phase does not go through the flatmap hooks) is kept cheap, and
    # its valid-by-schema bodies passable.
    if case.meta is not None and case.meta.generation.mode.value == "positive":
        case.body = passable(case.body)
    case.body = cheap(case.operation.path, case.body)


@schemathesis.hook
def after_call(ctx, case, response):
    """With KILN_FUZZ_LOG set: one JSON line per call (route, generation mode, status, error
    code, param and message, content type)."""
    log = os.environ.get("KILN_FUZZ_LOG")
    if not log:
        return
    err = {}
    if response.headers.get("content-type", [""])[0].startswith("application/json"):
        try:
            err = response.json().get("error") or {}
        except Exception:  # a 2xx that is not an object, or not JSON: the checks report it
            err = {}
    with open(log, "a") as f:
        rec = {
            "op": case.operation.label,
            "mode": case.meta.generation.mode.value if case.meta else None,
            "status": response.status_code,
            "code": err.get("code"),
            "param": err.get("param"),
            "msg": (err.get("message") or "")[:120],
            "type": response.headers.get("content-type", [""])[0],
        }
        f.write(json.dumps(rec) + "\n")


@schemathesis.check
def unknown_model_is_404(ctx, response, case):
    """A request that parsed and names another model is refused with 404 `model_not_found`."""
    if case.method.upper() != case.operation.method.upper():
        return None  # the coverage phase's probes of undocumented methods (405)
    path = case.operation.path
    if path == "/v1/models/{id}":
        asked = (case.path_parameters or {}).get("id")
    elif isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        asked = case.body["model"]
    else:
        return None
    if asked == served_model() or response.status_code in (400, 413, 415):
        return None
    if response.status_code != 404:
        raise AssertionError(f"model {asked!r} is not served, yet the answer is {response.status_code}")
    code = response.json().get("error", {}).get("code")
    if code not in ("model_not_found", "not_found"):
        raise AssertionError(f"model {asked!r}: 404 with code {code!r}")
    return None


@schemathesis.check
class every_route_succeeds:
    """Every operation answered 2xx at least once, and each generating route streamed at least
    once: the run reached past validation, and the SSE schema was exercised."""

    def __init__(self):
        self.tested = set()
        self.reached = set()

    def after_response(self, ctx, response, case):
        label = case.operation.label
        self.tested.add(label)
        if 200 <= response.status_code < 300:
            self.reached.add(label)
            if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
                self.reached.add(label + " (streamed)")

    def after_run(self, ctx):
        want = self.tested | {f"POST {p} (streamed)" for p in GENERATING if f"POST {p}" in self.tested}
        missing = want - self.reached
        if missing:
            raise AssertionError("never answered 2xx: " + ", ".join(sorted(missing)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True, help="the server's root, e.g. http://127.0.0.1:8000")
    ap.add_argument("--max-time", type=int, default=60, help="seconds of generation (the run is stopped 60 s later)")
    ap.add_argument("--max-examples", type=int, default=60, help="generated cases per operation and phase")
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random, printed)")
    args = ap.parse_args()
    base = args.base_url.rstrip("/")
    host = urllib.parse.urlsplit(base).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"refusing to fuzz {base}: loopback only")
    with urllib.request.urlopen(f"{base}/v1/models", timeout=10) as r:
        model = json.load(r)["data"][0]["id"]
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, SCHEMATHESIS_HOOKS="openapi_fuzz", **{MODEL_ENV: model})
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{base}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--mode",
        "all",
        "--max-examples",
        str(args.max_examples),
        "--max-time",
        str(args.max_time),
        "--request-timeout",
        # A generating request may queue behind others on a 2-core CPU: seed 1136466635 had
        # two answered after more than 30 s (all within 120). A hang still fails the run at
        # `bound` below.
        "120",
        "--workers",
        "2",
        "--continue-on-failure",
        "--no-color",
        "--generation-database",
        "none",
    ]
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    print("+", " ".join(cmd[1:]), flush=True)
    # Generation stops at --max-time; requests then in flight end within --request-timeout.
    bound = args.max_time + 150
    # schemathesis keeps state in ./.schemathesis: a scratch directory keeps it out of the tree.
    with tempfile.TemporaryDirectory(prefix="kiln-openapi-fuzz-") as scratch:
        try:
            rc = subprocess.run(cmd, env=env, cwd=scratch, timeout=bound).returncode
        except subprocess.TimeoutExpired:
            sys.exit(f"the fuzz run did not end within {bound} s")
    sys.exit(rc)


if __name__ == "__main__":
    main()
