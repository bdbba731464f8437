"""Structured output and tool calling of `kiln serve` with the official `openai` client.

Runs against a live server (loopback), after `openai_conformance.py`:
- every reply under `response_format: json_schema` (strict) validates against its schema
  (Python `jsonschema`), for the schemas of `structured_schemas.py`; `json_object` gives an object;
- `guided_regex` and `guided_choice` hold on 100 seeded sampled choices each, and a seed
  reproduces its output;
- `client.chat.completions.parse` with a Pydantic model returns a parsed object;
- a tool-calling round trip (tools -> tool_calls -> tool result -> answer), streamed and not;
  streamed, the call arrives as OpenAI streams it (id, type and name first, then the argument
  text in pieces as generated) and its pieces join to the unstreamed arguments byte for byte;
- bad schemas, regexes, grammars and tool choices are 400 naming the field, never a 5xx.

    python tests/python/structured_conformance.py --base-url http://127.0.0.1:8000/v1

Requests run a few at a time so the engine batches them; `max_tokens` stays small.
"""

import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pydantic

import openai_conformance
from structured_schemas import SCHEMAS

WORKERS = 8


def schema_reply(client, model, item):
    name, prompt, schema = item
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"{prompt} Answer in JSON."}],
        max_tokens=96,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}},
    )
    return name, schema, r.choices[0]


def check_json_schemas(client, model):
    assert len(SCHEMAS) >= 30, len(SCHEMAS)
    with ThreadPoolExecutor(WORKERS) as pool:
        replies = list(pool.map(lambda s: schema_reply(client, model, s), SCHEMAS))
    bad = []
    for name, schema, choice in replies:
        text = choice.message.content
        try:
            assert choice.finish_reason == "stop", f"finish_reason {choice.finish_reason}"
            jsonschema.validate(json.loads(text), schema)
        except Exception as e:  # collect every failure, then report them together
            bad.append(f"{name}: {e!r:.200} in {text!r:.300}")
    assert not bad, "\n".join(bad)
    print(f"     {len(replies)} schemas, every reply valid")


def check_json_object(client, model):
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Describe a cat in JSON."}],
        max_tokens=64,
        temperature=0,
        response_format={"type": "json_object"},
    )
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    c = client.completions.create(
        model=model,
        prompt="A JSON object with one key:",
        max_tokens=48,
        temperature=0,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "k", "schema": {"type": "object", "properties": {"k": {"type": "integer"}}, "required": ["k"], "additionalProperties": False}}}},
    )
    assert c.choices[0].finish_reason == "stop", c
    assert isinstance(json.loads(c.choices[0].text)["k"], int), c.choices[0].text


def sampled(client, model, prompt, seed, extra):
    r = client.completions.create(
        model=model, prompt=prompt, max_tokens=16, temperature=1.0, seed=seed, n=10, extra_body=extra
    )
    return [c.text for c in r.choices]


def check_regex_and_choice_seeded(client, model):
    rx = r"[0-9]{3}-[0-9]{4}"
    choices = ["red", "green", "blue", "light yellow"]
    with ThreadPoolExecutor(WORKERS) as pool:
        rx_out = pool.map(lambda s: sampled(client, model, "Call me at", s, {"guided_regex": rx}), range(10))
        ch_out = pool.map(lambda s: sampled(client, model, "My favourite color is", s, {"guided_choice": choices}), range(10))
        rx_out, ch_out = [t for ts in rx_out for t in ts], [t for ts in ch_out for t in ts]
    assert len(rx_out) == 100 and all(re.fullmatch(rx, t) for t in rx_out), [t for t in rx_out if not re.fullmatch(rx, t)]
    assert len(ch_out) == 100 and all(t in choices for t in ch_out), [t for t in ch_out if t not in choices]
    assert len(set(rx_out)) > 10, "sampling still varies under the constraint"
    again = sampled(client, model, "Call me at", 3, {"guided_regex": rx})
    assert again == rx_out[30:40], (again, rx_out[30:40])


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=20)
    country: str = pydantic.Field(max_length=20)
    population_millions: int = pydantic.Field(ge=0, le=50)


def check_parse_with_pydantic(client, model):
    r = client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "Tell me about Paris as JSON."}],
        max_tokens=64,
        temperature=0,
        response_format=City,
    )
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, City), r
    assert parsed.name, parsed


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def round_trip(client, model, stream):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    args = dict(model=model, messages=messages, tools=[WEATHER], max_tokens=48, temperature=0)
    if stream:
        calls, finish, content = {}, None, ""
        for chunk in client.chat.completions.create(tool_choice=NAMED, stream=True, **args):
            for c in chunk.choices:
                content += c.delta.content or ""
                finish = c.finish_reason or finish
                for tc in c.delta.tool_calls or []:
                    if tc.index not in calls:
                        # OpenAI's first chunk of a call: id, type and name, empty arguments.
                        assert tc.id and tc.type == "function" and tc.function.name and tc.function.arguments == "", tc
                        calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": "", "pieces": 0}
                    else:
                        # Later chunks: the next piece of the argument text, nothing else.
                        assert tc.id is None and tc.function.name is None and tc.function.arguments, tc
                        calls[tc.index]["arguments"] += tc.function.arguments
                        calls[tc.index]["pieces"] += 1
        assert content == "" and finish == "tool_calls" and len(calls) == 1, (content, finish, calls)
        call = calls[0]
        assert call["pieces"] > 1, f"the arguments came in one piece, not as generated: {call}"
        unstreamed = client.chat.completions.create(tool_choice=NAMED, **args).choices[0].message.tool_calls[0]
        assert call["arguments"] == unstreamed.function.arguments, (call, unstreamed)
    else:
        r = client.chat.completions.create(tool_choice=NAMED, **args)
        msg = r.choices[0].message
        assert r.choices[0].finish_reason == "tool_calls" and msg.content is None, r
        assert len(msg.tool_calls) == 1, msg
        tc = msg.tool_calls[0]
        call = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}
    assert call["id"] and call["name"] == "get_weather", call
    a = json.loads(call["arguments"])
    jsonschema.validate(a, WEATHER["function"]["parameters"])
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"city": a["city"], "temperature": 18, "sky": "sunny"})},
    ]
    final = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=32, temperature=0)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls, final
    return final.choices[0].message.content


def check_tool_round_trip(client, model):
    print(f"     answer: {round_trip(client, model, False)!r:.80}")


def check_tool_round_trip_streamed(client, model):
    round_trip(client, model, True)


def check_required_tool_choice(client, model):
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Weather in Rome, please."}],
        tools=[WEATHER, {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}}, "required": ["tz"], "additionalProperties": False}}}],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=48,
        temperature=0,
    )
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and len(calls) == 1, r
    assert calls[0].function.name in ("get_weather", "get_time")


def expect_400(fn, param):
    try:
        fn()
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.body.get("param") == param, e.body
        return e.body["message"]
    raise AssertionError(f"expected a 400 naming {param}")


def check_bad_structured_requests(client, model):
    msgs = [{"role": "user", "content": "hi"}]
    chat, cmpl = client.chat.completions.create, client.completions.create

    def fmt(schema):
        return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}

    m = expect_400(lambda: chat(model=model, messages=msgs, max_tokens=4, response_format=fmt({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})), "response_format")
    assert "missing" in m, m
    expect_400(lambda: chat(model=model, messages=msgs, max_tokens=4, response_format=fmt({"type": "wibble"})), "response_format")
    expect_400(lambda: chat(model=model, messages=msgs, max_tokens=4, response_format={"type": "xml"}), "response_format.type")
    expect_400(lambda: cmpl(model=model, prompt="hi", max_tokens=4, extra_body={"guided_regex": "(unclosed"}), "guided_regex")
    expect_400(lambda: cmpl(model=model, prompt="hi", max_tokens=4, extra_body={"guided_grammar": "start: nowhere"}), "guided_grammar")
    expect_400(lambda: cmpl(model=model, prompt="hi", max_tokens=4, extra_body={"guided_choice": []}), "guided_choice")
    expect_400(lambda: cmpl(model=model, prompt="hi", max_tokens=4, extra_body={"guided_regex": "a", "guided_choice": ["a"]}), "guided_choice")
    expect_400(lambda: chat(model=model, messages=msgs, max_tokens=4, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice.function.name")
    expect_400(lambda: chat(model=model, messages=msgs, max_tokens=4, tool_choice="required"), "tool_choice")


CHECKS = [
    check_json_schemas,
    check_json_object,
    check_regex_and_choice_seeded,
    check_parse_with_pydantic,
    check_tool_round_trip,
    check_tool_round_trip_streamed,
    check_required_tool_choice,
    check_bad_structured_requests,
]


if __name__ == "__main__":
    sys.exit(openai_conformance.main(CHECKS, __doc__))
