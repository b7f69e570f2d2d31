"""Tool calling through the official `openai` client against `camelid serve --chat-template
tests/fixtures/chat-templates/qwen2.5-tools.jinja` (the default model with Qwen2.5's tools template).

Usage: python test_tools.py BASE_URL MODEL   (run by crates/camelid/tests/serve_binary.rs)
Exits non-zero on the first failed check.
"""
import json
import os
import sys

import jsonschema
import openai

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from clientcheck import check, done  # noqa: E402

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test")


SCHEMAS = {
    "get_weather": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 1, "maxLength": 24},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city", "unit", "days"],
        "additionalProperties": False,
    },
    "get_time": {
        "type": "object",
        "properties": {"timezone": {"type": "string", "enum": ["UTC", "CET", "PST"]}},
        "required": ["timezone"],
        "additionalProperties": False,
    },
}
tools = [
    {"type": "function", "function": {"name": n, "description": f"{n.replace('_', ' ')}", "parameters": s}}
    for n, s in SCHEMAS.items()
]
msgs = [{"role": "user", "content": "What is the weather in Paris this week?"}]


def valid_call(tc, names, what):
    check(tc.type == "function" and tc.id.startswith("call_"), f"{what}: call shape {tc}")
    check(tc.function.name in names, f"{what}: name {tc.function.name!r} in {names}")
    args = json.loads(tc.function.arguments)
    try:
        jsonschema.validate(args, SCHEMAS[tc.function.name])
    except jsonschema.ValidationError as e:
        check(False, f"{what}: arguments {args} against the schema: {e.message}")
    return args


# `required`: every seed gives at least one call, each valid against its function's schema.
for seed in range(8):
    r = client.chat.completions.create(
        model=model, messages=msgs, tools=tools, tool_choice="required", seed=seed,
        temperature=1.0, max_tokens=160, parallel_tool_calls=False,
    )
    c = r.choices[0]
    check(c.finish_reason == "tool_calls", f"seed {seed}: finish_reason {c.finish_reason!r}")
    check(c.message.tool_calls and len(c.message.tool_calls) == 1, f"seed {seed}: one call {c.message}")
    valid_call(c.message.tool_calls[0], SCHEMAS, f"seed {seed}")

# A named function: that one, valid.
for seed in range(3):
    r = client.chat.completions.create(
        model=model, messages=msgs, tools=tools, seed=seed, temperature=1.0, max_tokens=160,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = r.choices[0].message.tool_calls
    check(calls and len(calls) == 1 and calls[0].function.name == "get_time", f"named: {r.choices[0].message}")
    valid_call(calls[0], ["get_time"], "named")

# Streamed: the client puts the deltas together into the same valid call as the whole answer.
for seed in range(3):
    kwargs = dict(model=model, messages=msgs, tools=tools, tool_choice="required", seed=seed,
                  temperature=1.0, max_tokens=160, parallel_tool_calls=False)
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    with client.chat.completions.stream(**kwargs) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    c = final.choices[0]
    check(c.finish_reason == "tool_calls", f"stream seed {seed}: finish_reason {c.finish_reason!r}")
    got = valid_call(c.message.tool_calls[0], SCHEMAS, f"stream seed {seed}")
    check(c.message.tool_calls[0].function.name == whole.function.name
          and got == json.loads(whole.function.arguments), f"stream seed {seed}: same call as whole")
    # By hand too: name in the first delta of the call, then argument pieces as the model
    # writes them (more than one), which make the whole answer's arguments byte for byte.
    name, pieces, first = None, [], None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for d in chunk.choices[0].delta.tool_calls or []:
            check(d.index == 0, "one call, index 0")
            if first is None:
                first = d
                check(d.id.startswith("call_") and d.function.name, f"first delta names the call: {d}")
                name = d.function.name
            elif d.function.arguments:
                check(d.id is None and d.function.name is None, f"later deltas carry arguments only: {d}")
                pieces.append(d.function.arguments)
    args = "".join(pieces)
    check(len(pieces) > 1, f"stream seed {seed}: arguments in {len(pieces)} piece(s)")
    check(name == whole.function.name and args == whole.function.arguments,
          f"stream seed {seed}: assembled {name} {args!r} vs {whole.function.arguments!r}")

# n = 2: each choice its own valid call.
r = client.chat.completions.create(model=model, messages=msgs, tools=tools, tool_choice="required",
                                   n=2, seed=11, temperature=1.0, max_tokens=160, parallel_tool_calls=False)
check(sorted(c.index for c in r.choices) == [0, 1], "n=2")
for c in r.choices:
    valid_call(c.message.tool_calls[0], SCHEMAS, f"n=2 choice {c.index}")

# A conversation that goes on after the tool's answer renders and answers.
call = r.choices[0].message.tool_calls[0]
follow = msgs + [
    {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"ok": True})},
]
r = client.chat.completions.create(model=model, messages=follow, tools=tools, tool_choice="none", max_tokens=12)
check(r.choices[0].message.tool_calls is None and isinstance(r.choices[0].message.content, str), "after the tool")

# A function the tools do not have is a 400 naming tool_choice.
try:
    client.chat.completions.create(model=model, messages=msgs, tools=tools,
                                   tool_choice={"type": "function", "function": {"name": "nope"}})
    check(False, "unknown function accepted")
except openai.BadRequestError as e:
    check(e.body and e.body.get("param") == "tool_choice", f"400 names tool_choice: {e.body}")

done("openai tools")
