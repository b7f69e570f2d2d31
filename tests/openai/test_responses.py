"""The official `openai` client's Responses API (`client.responses`) against a running camelid.

Usage: python test_responses.py BASE_URL MODEL   (run by crates/camelid/tests/serve_binary.rs)
The server serves MODEL with tests/fixtures/chat-templates/qwen2.5-tools.jinja (it renders
tools), so `tool_choice: "required"` forces a call. Exits non-zero on the first failed check.
"""
import json
import os
import sys

import openai

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from clientcheck import check, done  # noqa: E402

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test")


# A plain answer: the same text as the chat endpoint gives, with its usage.
r = client.responses.create(model=model, input="Name a fruit.", max_output_tokens=8, temperature=0)
chat = client.chat.completions.create(model=model, max_tokens=8, temperature=0,
                                      messages=[{"role": "user", "content": "Name a fruit."}])
check(r.object == "response" and r.id.startswith("resp"), f"object: {r.object} {r.id}")
check(r.output_text == chat.choices[0].message.content,
      f"responses {r.output_text!r} == chat {chat.choices[0].message.content!r}")
check(r.usage.input_tokens == chat.usage.prompt_tokens
      and r.usage.output_tokens == chat.usage.completion_tokens, f"usage: {r.usage}")
check(r.status in ("completed", "incomplete"), f"status {r.status}")
if chat.choices[0].finish_reason == "length":
    check(r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens",
          f"cut by max_output_tokens: {r.incomplete_details}")

# Log-probabilities with `include`: an entry per output token, spelling the text, with the
# alternatives asked for; the chat endpoint's numbers; the same entries streamed; none without.
lp = client.responses.create(model=model, input="Name a fruit.", max_output_tokens=8, temperature=0,
                             include=["message.output_text.logprobs"], top_logprobs=2)
entries = lp.output[0].content[0].logprobs
chat_lp = client.chat.completions.create(model=model, max_tokens=8, temperature=0, logprobs=True,
                                         top_logprobs=2,
                                         messages=[{"role": "user", "content": "Name a fruit."}])
# (An answer that ended has its end-of-turn token too, which shows no text.)
check(len(entries) == lp.usage.output_tokens - (1 if lp.status == "completed" else 0),
      f"an entry per output token: {len(entries)} for {lp.usage.output_tokens} ({lp.status})")
check("".join(e.token for e in entries) == lp.output_text,
      f"the entries spell the text: {[e.token for e in entries]} vs {lp.output_text!r}")
check(all(len(e.top_logprobs) == 2 for e in entries), "two alternatives each")
want = [(c.token, c.logprob) for c in chat_lp.choices[0].logprobs.content]
check([(e.token, e.logprob) for e in entries] == want[:len(entries)],
      f"the chat endpoint's log-probabilities: {entries} vs {want}")
streamed = []
for e in client.responses.create(model=model, input="Name a fruit.", max_output_tokens=8,
                                 temperature=0, include=["message.output_text.logprobs"],
                                 top_logprobs=2, stream=True):
    if e.type == "response.output_text.delta":
        streamed.extend((x.token, x.logprob) for x in e.logprobs)
check(streamed == [(e.token, e.logprob) for e in entries], f"streamed entries: {streamed}")
check(r.output[0].content[0].logprobs == [], "no entries without `include`")

# Instructions are the system message; a list of items is a conversation.
r2 = client.responses.create(model=model, instructions="Answer in one word.", temperature=0,
                             max_output_tokens=8, input=[
                                 {"role": "user", "content": "Name a fruit."},
                                 {"role": "assistant", "content": r.output_text},
                                 {"role": "user", "content": [{"type": "input_text", "text": "Another?"}]}])
check(isinstance(r2.output_text, str) and r2.usage.input_tokens > r.usage.input_tokens,
      f"a conversation with instructions: {r2.usage}")

# Streamed through the SDK's helper: its accumulated response equals the whole one.
with client.responses.stream(model=model, input="Name a fruit.", max_output_tokens=8,
                             temperature=0) as stream:
    deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
    final = stream.get_final_response() if r.status == "completed" else None
check("".join(deltas) == r.output_text, f"streamed {''.join(deltas)!r} == whole {r.output_text!r}")
if final is not None:
    check(final.output_text == r.output_text, "the helper's final response")

# Raw events: created first, sequence numbers in order, completed or incomplete last.
events = list(client.responses.create(model=model, input="Hi", max_output_tokens=4, stream=True))
kinds = [e.type for e in events]
check(kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete"),
      f"event order: {kinds}")
check([e.sequence_number for e in events] == list(range(len(events))), "sequence numbers")

# Structured output: a JSON schema through `text.format`.
schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["answer"], "additionalProperties": False}
j = client.responses.create(model=model, input="Is the sky blue?", temperature=0, max_output_tokens=40,
                            text={"format": {"type": "json_schema", "name": "yes_no", "schema": schema,
                                             "strict": True}})
check(json.loads(j.output_text)["answer"] in ("yes", "no"), f"json: {j.output_text!r}")

# Tools: a forced call comes back as a `function_call` item, valid against its schema; its
# output goes back as a `function_call_output` item.
tools = [{"type": "function", "name": "get_weather", "description": "The weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"], "additionalProperties": False}, "strict": True}]
t = client.responses.create(model=model, input="What is the weather in Paris?", tools=tools,
                            tool_choice="required", parallel_tool_calls=False, temperature=0,
                            max_output_tokens=100)
calls = [o for o in t.output if o.type == "function_call"]
check(t.status == "completed" and len(calls) == 1 and calls[0].name == "get_weather",
      f"one call: {t.status} {t.output}")
args = json.loads(calls[0].arguments)
check(isinstance(args.get("city"), str), f"arguments: {args}")
with client.responses.stream(model=model, input="What is the weather in Paris?", tools=tools,
                             tool_choice="required", parallel_tool_calls=False, temperature=0,
                             max_output_tokens=100) as stream:
    by_item = {}
    for e in stream:
        if e.type == "response.function_call_arguments.delta":
            by_item[e.output_index] = by_item.get(e.output_index, "") + e.delta
    streamed_final = stream.get_final_response()
want = {i: o.arguments for i, o in enumerate(t.output) if o.type == "function_call"}
check(by_item == want, f"streamed arguments per call {by_item!r} == {want!r}")
check([o.type for o in streamed_final.output] == [o.type for o in t.output], "the helper's final output")
back = client.responses.create(model=model, tools=tools, temperature=0, max_output_tokens=8, input=[
    {"role": "user", "content": "What is the weather in Paris?"},
    {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
     "arguments": calls[0].arguments},
    {"type": "function_call_output", "call_id": calls[0].call_id, "output": "18 degrees, sunny"}])
check(back.status in ("completed", "incomplete"), "a call's output sent back")

# Errors: OpenAI's, naming the field.
for kwargs, param in [({"previous_response_id": "resp_x"}, "previous_response_id"),
                      ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
                      ({"temperature": 5}, "temperature")]:
    try:
        client.responses.create(model=model, input="Hi", **kwargs)
        check(False, f"{param} is refused")
    except openai.BadRequestError as e:
        check(e.body.get("param") == param, f"{param}: {e.body}")

done("responses")
