"""Structured output through the official `openai` Python client against a running camelid.

Usage: python test_structured.py BASE_URL MODEL   (run by crates/camelid/tests/serve_binary.rs)
`beta.chat.completions.parse` with a pydantic model returns a parsed object for 20 seeds;
strict `json_schema` outputs validate with `jsonschema`; `json_object` parses; regex and
choice outputs match; a broken schema is a 400 naming the field. Temperature 1 (but for
json_object): the 135M default model writes valid JSON only because the grammar makes it.
Exits non-zero on the first failed check.
"""
import json
import re
import os
import sys
from typing import List, Literal

import jsonschema
import openai
from pydantic import BaseModel, Field

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from clientcheck import check, done  # noqa: E402

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test")


class Pet(BaseModel):
    name: str = Field(max_length=16)
    species: Literal["cat", "dog", "fish"]


class Person(BaseModel):
    name: str = Field(max_length=24)
    age: int
    pets: List[Pet] = Field(max_length=2)


ask = [{"role": "user", "content": "Describe a person and their pets."}]
for seed in range(20):
    r = client.beta.chat.completions.parse(model=model, messages=ask, response_format=Person,
                                           temperature=1.0, seed=seed, max_tokens=200)
    msg = r.choices[0].message
    check(isinstance(msg.parsed, Person), f"seed {seed}: parsed {msg.parsed!r} from {msg.content!r}")
    check(r.choices[0].finish_reason == "stop", f"seed {seed}: finish {r.choices[0].finish_reason}")

schema = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 30},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
        "genres": {"type": "array", "items": {"enum": ["drama", "comedy", "horror"]}, "maxItems": 3},
        "rating": {"type": "number"},
    },
    "required": ["title", "year", "genres", "rating"],
    "additionalProperties": False,
}
fmt = {"type": "json_schema", "json_schema": {"name": "film", "schema": schema, "strict": True}}
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name a film."}],
                                   response_format=fmt, temperature=1.0, seed=7, n=4, max_tokens=200)
check(len(r.choices) == 4, "n=4")
for c in r.choices:
    v = json.loads(c.message.content)
    jsonschema.validate(v, schema)
    check(True, "validates")

text = ""
for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name a film."}],
                                            response_format=fmt, temperature=1.0, seed=8, max_tokens=200,
                                            stream=True):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
jsonschema.validate(json.loads(text), schema)
check(True, "streamed output validates")

# Any object: keys and strings are unbounded, so the model must close them itself (at
# temperature 1 this 135M model rambles inside a string past any budget).
for ask_for in ["a cat's name and age", "a city's name and country", "a book's title and year"]:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"A JSON object with {ask_for}."}],
                                       response_format={"type": "json_object"}, temperature=0.0, max_tokens=300)
    check(isinstance(json.loads(r.choices[0].message.content), dict), "json_object parses")

rx = r"\(\d{3}\) \d{3}-\d{4}"
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "A phone number?"}],
                                   temperature=1.0, seed=1, n=3, max_tokens=30,
                                   extra_body={"structured_outputs": {"regex": rx}})
for c in r.choices:
    check(re.fullmatch(rx, c.message.content), f"regex: {c.message.content!r}")

options = ["positive", "negative", "neutral"]
r = client.completions.create(model=model, prompt="Sentiment of 'I love it':", temperature=1.0, seed=2,
                              n=3, max_tokens=8, extra_body={"guided_choice": options})
for c in r.choices:
    check(c.text in options, f"choice: {c.text!r}")

try:
    client.chat.completions.create(model=model, messages=ask, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/none"}}}}})
    check(False, "a broken schema must fail")
except openai.BadRequestError as e:
    check(e.status_code == 400, "400")
    check(e.body.get("param") == "response_format.json_schema.schema", f"param: {e.body}")

done("structured output")
