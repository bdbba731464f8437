"""Conformance of `kiln serve` with the official `openai` Python client.

Runs against a live server (loopback) and checks what OpenAI SDK users rely on: listing
models, completions, chat, streaming chat equal to non-streaming chat under greedy decoding
(and streamed completions equal to non-streamed ones for a seeded sampler), usage in the last
stream chunk, logprobs, n > 1, stop strings, and that invalid requests raise
`openai.BadRequestError` (HTTP 400) with OpenAI's error body.

    python tests/python/openai_conformance.py --base-url http://127.0.0.1:8000/v1

Prints one line per check and a final `N passed, M failed` line; exits non-zero on failure.
The client is built with `max_retries=0` so a refusal is seen as it is, never retried.
"""

import argparse
import sys
import traceback

import openai


def check_models(client, model):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert model in ids, ids
    assert all(m.object == "model" for m in models.data)


def check_completion(client, model):
    r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.object == "text_completion"
    assert len(r.choices) == 1 and r.choices[0].text, r
    assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def check_chat(client, model):
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=16, temperature=0
    )
    assert r.object == "chat.completion"
    msg = r.choices[0].message
    assert msg.role == "assistant" and "Paris" in msg.content, msg


def collect_chat_stream(stream):
    text, finish, usage, roles = "", None, None, []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    return text, finish, usage, roles


def check_chat_stream_equals_non_stream(client, model):
    messages = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name three colors."}]
    full = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0)
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    text, finish, usage, roles = collect_chat_stream(stream)
    assert roles == ["assistant"], roles
    assert text == full.choices[0].message.content, (text, full.choices[0].message.content)
    assert finish == full.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens
    assert usage.prompt_tokens == full.usage.prompt_tokens


def check_completion_stream_equals_non_stream_seeded(client, model):
    args = dict(model=model, prompt="Once upon a time", max_tokens=16, temperature=0.9, top_p=0.95, seed=42)
    full = client.completions.create(**args)
    text = "".join(c.choices[0].text for c in client.completions.create(stream=True, **args) if c.choices)
    assert text == full.choices[0].text, (text, full.choices[0].text)


def check_n_and_stop(client, model):
    r = client.completions.create(model=model, prompt="Hello", max_tokens=4, temperature=0.8, seed=1, n=2)
    assert sorted(c.index for c in r.choices) == [0, 1]
    full = client.completions.create(model=model, prompt="1, 2, 3, 4, 5,", max_tokens=12, temperature=0).choices[0].text
    assert " 8" in full, full
    cut = client.completions.create(model=model, prompt="1, 2, 3, 4, 5,", max_tokens=12, temperature=0, stop=[" 8"])
    assert cut.choices[0].text == full[: full.index(" 8")], (cut.choices[0].text, full)
    assert cut.choices[0].finish_reason == "stop"


def check_logprobs(client, model):
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens, (len(content), r.usage)
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)


def expect_400(fn, param=None):
    try:
        fn()
    except openai.BadRequestError as e:
        assert e.status_code == 400
        body = e.body
        assert isinstance(body, dict) and isinstance(body.get("message"), str) and body.get("type"), body
        if param is not None:
            assert body.get("param") == param, body
        return
    raise AssertionError("expected a 400 BadRequestError")


def check_bad_requests(client, model):
    msgs = [{"role": "user", "content": "hi"}]
    cmpl, chat = client.completions.create, client.chat.completions.create
    expect_400(lambda: cmpl(model=model, prompt="", max_tokens=4), "prompt")
    expect_400(lambda: cmpl(model=model, prompt="hi", max_tokens=0), "max_tokens")
    expect_400(lambda: cmpl(model=model, prompt="hi", max_tokens=4, temperature=-1), "temperature")
    expect_400(lambda: cmpl(model=model, prompt="hi", max_tokens=4, top_p=0), "top_p")
    expect_400(lambda: cmpl(model=model, prompt="hi", max_tokens=4, n=0), "n")
    expect_400(lambda: cmpl(model=model, prompt="hi", max_tokens=10**9), "max_tokens")
    expect_400(lambda: chat(model=model, messages=[], max_tokens=4), "messages")
    expect_400(lambda: chat(model=model, messages=msgs, max_tokens=4, temperature=1000), "temperature")
    expect_400(lambda: chat(model=model, messages=msgs, max_completion_tokens=10**9), "max_completion_tokens")
    expect_400(lambda: chat(model=model, messages=[{"role": "wizard", "content": "x"}], max_tokens=4), "messages[0].role")
    expect_400(lambda: chat(model=model, messages=msgs, max_tokens=4, extra_body={"top_p": "high"}), "top_p")
    try:
        cmpl(model="no-such-model", prompt="hi", max_tokens=1)
        raise AssertionError("expected 404")
    except openai.NotFoundError as e:
        assert e.body.get("param") == "model", e.body


CHECKS = [
    check_models,
    check_completion,
    check_chat,
    check_chat_stream_equals_non_stream,
    check_completion_stream_equals_non_stream_seeded,
    check_n_and_stop,
    check_logprobs,
    check_bad_requests,
]


def main(checks=CHECKS, doc=__doc__):
    """Runs `checks` against the server named on the command line (shared with the other
    conformance scripts of this folder)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--model", help="default: the first model the server lists")
    a = ap.parse_args()
    client = openai.OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0, timeout=300)
    model = a.model or client.models.list().data[0].id
    passed = failed = 0
    for check in checks:
        try:
            check(client, model)
            passed += 1
            print(f"ok   {check.__name__}")
        except Exception:
            failed += 1
            print(f"FAIL {check.__name__}")
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
