//! The Lark grammar (llguidance's dialect) that makes a model write tool calls in its
//! template's format: the call's JSON embedded as a schema (`%json`), the function's name a
//! constant and its `parameters` the arguments' schema (Mistral's `[ARGS]` format: the name
//! a literal before `[ARGS]`, the arguments' schema alone). `tool_choice: "required"` and a
//! named function are enforced with it.

use crate::text::tool_calls::{
    ToolFormat, HERMES_CLOSE, HERMES_OPEN, MISTRAL_ARGS, MISTRAL_TRIGGER,
};
use serde_json::{json, Value as Json};

/// One function the grammar may call.
#[derive(Debug, Clone, Copy)]
pub struct CallableTool<'a> {
    pub name: &'a str,
    /// The arguments' JSON schema (OpenAI's `function.parameters`); `None`: any object.
    pub parameters: Option<&'a Json>,
    /// OpenAI's `strict`: every keyword of the schema must hold (one the compiler cannot
    /// enforce refuses it, as `response_format`'s strict schemas), not only those it can.
    pub strict: bool,
}

/// The options of each `%json` schema: the separators the templates' `tojson` (Python's
/// `json.dumps`) writes, no free whitespace (a small model could otherwise spend its tokens
/// on blanks), and llguidance's lenient mode: OpenAI takes any JSON schema for a
/// (non-strict) function, so keywords the compiler cannot enforce (`uniqueItems`, `not`,
/// `if`, unknown `format`s, …) are left unenforced rather than refused; a `strict` one's
/// must all hold.
fn layout(strict: bool) -> Json {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": ",
           "lenient": !strict})
}

/// Where a call's arguments are in [`call_schema`]'s document.
fn arguments_pointer(format: ToolFormat) -> String {
    format!("/properties/{}", format.arguments_key())
}

/// The schema of one call's JSON: `{"name": <const>, <args key>: <parameters>}`.
pub fn call_schema(format: ToolFormat, tool: CallableTool) -> Json {
    let key = format.arguments_key();
    let mut args = object_schema(tool);
    // llguidance resolves a `$ref` against the root of the whole `%json` document, and the
    // parameters are no longer that root: their `#/$defs/…` (what pydantic writes for enums
    // and nested models) would miss. Rewritten to where they now are, every tool keeps its
    // own definitions, so two tools' same-named `$defs` cannot collide.
    rebase_refs(&mut args, &arguments_pointer(format));
    json!({
        "type": "object",
        "properties": {"name": {"const": tool.name}, key: args},
        "required": ["name", key],
        "additionalProperties": false,
        "x-guidance": layout(tool.strict),
    })
}

/// A function's arguments schema as a `%json` document of its own (Mistral's `[ARGS]`
/// format embeds it so; a server checks a tool's `parameters` with it).
pub fn arguments_schema(tool: CallableTool) -> Json {
    let mut schema = object_schema(tool);
    if let Some(o) = schema.as_object_mut() {
        o.insert("x-guidance".into(), layout(tool.strict));
    }
    schema
}

/// The arguments' schema, always of an object: a call's arguments are an object (the parser
/// drops a call whose arguments are not), but `{}` or a schema without `type` matches any
/// JSON value. Such a schema gets `"type": "object"` (vLLM turns `{}` into an empty object
/// schema the same way); no schema: any object.
fn object_schema(tool: CallableTool) -> Json {
    let mut schema = tool
        .parameters
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}));
    if let Some(o) = schema.as_object_mut() {
        o.entry("type").or_insert_with(|| json!("object"));
    }
    close_objects(&mut schema);
    schema
}

/// Objects that list their `properties` and say nothing of others take no others
/// (`additionalProperties: false`), as vLLM's default grammar backend (xgrammar) reads a
/// tool's schema: llguidance's JSON Schema default (any other key) let a model invent
/// arguments a tool does not have, e.g. for `{"properties": {}}`. An object schema without
/// `properties` stays open (`{}` or no parameters: any object).
fn close_objects(schema: &mut Json) {
    let Json::Object(o) = schema else {
        if let Json::Array(a) = schema {
            a.iter_mut().for_each(close_objects);
        }
        return;
    };
    if o.contains_key("properties") && !o.contains_key("additionalProperties") {
        o.insert("additionalProperties".into(), Json::Bool(false));
    }
    for (k, v) in o.iter_mut() {
        match k.as_str() {
            // name → schema maps
            "properties" | "patternProperties" | "$defs" | "definitions" => {
                if let Json::Object(m) = v {
                    m.values_mut().for_each(close_objects);
                }
            }
            // a schema or a list of them
            "items"
            | "prefixItems"
            | "additionalProperties"
            | "anyOf"
            | "oneOf"
            | "allOf"
            | "not"
            | "if"
            | "then"
            | "else"
            | "contains" => close_objects(v),
            _ => {}
        }
    }
}

/// Rewrites the document-local `$ref`s of `schema` (`#`, `#/…`) as if `schema` sat at the
/// JSON pointer `at` of a larger document. Values that are data, not schemas (`const`,
/// `enum`, `default`, `examples`), are left alone, and the keys of name → schema maps
/// (`properties`, `$defs`, …) are names, not keywords.
fn rebase_refs(schema: &mut Json, at: &str) {
    match schema {
        Json::Object(o) => {
            for (k, v) in o.iter_mut() {
                match k.as_str() {
                    "$ref" => {
                        // Only `#` and `#/…` (an anchor or another document is left as
                        // written, and refused as it would be anyway).
                        let new = match v.as_str().and_then(|r| r.strip_prefix('#')) {
                            Some("" | "/") => format!("#{at}"),
                            Some(r) if r.starts_with('/') => format!("#{at}{r}"),
                            _ => continue,
                        };
                        *v = new.into();
                    }
                    "const" | "enum" | "default" | "examples" => {}
                    "properties" | "patternProperties" | "$defs" | "definitions"
                    | "dependentSchemas" | "dependencies" => {
                        if let Some(m) = v.as_object_mut() {
                            m.values_mut().for_each(|s| rebase_refs(s, at));
                        }
                    }
                    _ => rebase_refs(v, at),
                }
            }
        }
        Json::Array(a) => a.iter_mut().for_each(|s| rebase_refs(s, at)),
        _ => {}
    }
}

/// The grammar for one call of any of `tools` (several when `parallel`). `special_token`
/// gives the id of a token the grammar's vocabulary holds as special (Mistral's
/// `[TOOL_CALLS]` and `[ARGS]`; Qwen's `<tool_call>`, an added token llguidance treats as
/// special for its `<…>` spelling), which the grammar must name by id: a text literal never
/// matches a special token, so the model could not write its trained token. `None`: the
/// text is written as text.
pub fn call_grammar(
    format: ToolFormat,
    tools: &[CallableTool],
    parallel: bool,
    special_token: &dyn Fn(&str) -> Option<u32>,
) -> String {
    let mut g = String::new();
    let alternatives: Vec<String> = (0..tools.len()).map(|i| format!("fn_{i}")).collect();
    let one = alternatives.join(" | ");
    let lit = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let control = |s: &str| match special_token(s) {
        Some(id) => format!("<[{id}]>"),
        None => lit(s),
    };
    match format {
        ToolFormat::Hermes => {
            let open = match special_token(HERMES_OPEN) {
                Some(id) => format!("<[{id}]> {}", lit("\n")),
                None => lit(&format!("{HERMES_OPEN}\n")),
            };
            let close = match special_token(HERMES_CLOSE) {
                Some(id) => format!("{} <[{id}]>", lit("\n")),
                None => lit(&format!("\n{HERMES_CLOSE}")),
            };
            if parallel {
                g += &format!("start: block ({} block)*\n", lit("\n"));
            } else {
                g += "start: block\n";
            }
            g += &format!("block: {open} call {close}\n");
            g += &format!("call: {one}\n");
        }
        ToolFormat::Llama3Json => {
            if parallel {
                g += &format!("start: call ({} call)*\n", lit("; "));
            } else {
                g += "start: call\n";
            }
            g += &format!("call: {one}\n");
        }
        ToolFormat::Mistral => {
            let trigger = control(MISTRAL_TRIGGER);
            let calls = if parallel {
                format!("call ({} call)*", lit(", "))
            } else {
                "call".to_string()
            };
            // v0.3's template writes `[TOOL_CALLS] [` (its model was trained on the space);
            // the parser takes either.
            g += &format!(
                "start: {trigger} {}? {} {calls} {}\n",
                lit(" "),
                lit("["),
                lit("]")
            );
            g += &format!("call: {one}\n");
        }
        ToolFormat::MistralArgs => {
            let trigger = control(MISTRAL_TRIGGER);
            if parallel {
                g += &format!("start: {trigger} call ({trigger} call)*\n");
            } else {
                g += &format!("start: {trigger} call\n");
            }
            g += &format!("call: {one}\n");
            let args = control(MISTRAL_ARGS);
            for (i, t) in tools.iter().enumerate() {
                let schema = arguments_schema(*t);
                g += &format!("fn_{i}: {} {args} %json {schema}\n", lit(t.name));
            }
            return g;
        }
    }
    for (i, t) in tools.iter().enumerate() {
        g += &format!("fn_{i}: %json {}\n", call_schema(format, *t));
    }
    g
}

/// The text that starts a call where a grammar may wait for it (`tool_choice: auto`): the
/// Hermes block's opening and Mistral's `[TOOL_CALLS]`. Llama 3's JSON calls have none (a
/// call is the whole answer, which may as well be text).
pub fn lazy_trigger(format: ToolFormat) -> Option<&'static str> {
    match format {
        ToolFormat::Hermes => Some(HERMES_OPEN),
        ToolFormat::Mistral | ToolFormat::MistralArgs => Some(MISTRAL_TRIGGER),
        ToolFormat::Llama3Json => None,
    }
}

/// An answer in `answer` (a JSON schema as `%json` takes it, its layout in `x-guidance`) or
/// calls as [`call_grammar`] writes them: `tool_choice: auto` beside a JSON
/// `response_format`, where the model either calls a function or answers in the schema.
pub fn answer_or_calls(
    format: ToolFormat,
    tools: &[CallableTool],
    parallel: bool,
    special_token: &dyn Fn(&str) -> Option<u32>,
    answer: &Json,
) -> String {
    let calls = call_grammar(format, tools, parallel, special_token);
    // The call grammar's first rule is its `start`; renamed, it is one alternative.
    debug_assert!(calls.starts_with("start:"));
    let calls = calls.replacen("start:", "calls:", 1);
    format!("start: answer | calls\nanswer: %json {answer}\n{calls}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hermes_grammar_names_each_function_and_embeds_its_schema() {
        let p = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
        let tools = [
            CallableTool {
                name: "get_weather",
                parameters: Some(&p),
                strict: false,
            },
            CallableTool {
                name: "now",
                parameters: None,
                strict: false,
            },
        ];
        let g = call_grammar(ToolFormat::Hermes, &tools, true, &|_| None);
        assert!(g.starts_with("start: block (\"\\n\" block)*\n"), "{g}");
        assert!(
            g.contains("block: \"<tool_call>\\n\" call \"\\n</tool_call>\"\n"),
            "{g}"
        );
        assert!(g.contains("call: fn_0 | fn_1\n"), "{g}");
        let line = g.lines().find(|l| l.starts_with("fn_0: %json ")).unwrap();
        let schema: Json = serde_json::from_str(&line["fn_0: %json ".len()..]).unwrap();
        assert_eq!(schema["properties"]["name"]["const"], "get_weather");
        // Its listed properties the only ones (see `close_objects`).
        let mut closed = p.clone();
        closed["additionalProperties"] = json!(false);
        assert_eq!(schema["properties"]["arguments"], closed);
        let single = call_grammar(ToolFormat::Hermes, &tools[..1], false, &|_| None);
        assert!(single.starts_with("start: block\n"), "{single}");
    }

    /// Tags the vocabulary holds as special tokens are named by id: a literal would not
    /// match the token, so the model could not write its trained `<tool_call>`.
    #[test]
    fn hermes_tags_that_are_special_tokens_are_named_by_id() {
        let tools = [CallableTool {
            name: "now",
            parameters: None,
            strict: false,
        }];
        let ids = |s: &str| match s {
            HERMES_OPEN => Some(7),
            HERMES_CLOSE => Some(8),
            _ => None,
        };
        let g = call_grammar(ToolFormat::Hermes, &tools, true, &ids);
        assert!(
            g.contains("block: <[7]> \"\\n\" call \"\\n\" <[8]>\n"),
            "{g}"
        );
    }

    /// The `%json` document of the call's schema alone.
    fn fn_schema(g: &str, i: usize) -> Json {
        let prefix = format!("fn_{i}: %json ");
        let line = g.lines().find(|l| l.starts_with(&prefix)).unwrap();
        serde_json::from_str(&line[prefix.len()..]).unwrap()
    }

    /// `$ref`s inside `parameters` point where the parameters now are in the call's
    /// document (llguidance resolves them against its root); values that are data stay.
    #[test]
    fn refs_in_parameters_are_rebased_into_the_call_schema() {
        let p = json!({"type": "object",
            "$defs": {"Unit": {"enum": ["celsius", "fahrenheit"]},
                      "Pair": {"type": "array", "items": {"$ref": "#/$defs/Unit"}}},
            "properties": {"unit": {"$ref": "#/$defs/Unit"}, "pair": {"$ref": "#/$defs/Pair"},
                           "self": {"$ref": "#"}, "$ref": {"const": {"$ref": "#/x"}},
                           "old": {"$ref": "#/definitions/Old"}, "far": {"$ref": "other.json#/a"}},
            "definitions": {"Old": {"type": "string"}}});
        let tools = [CallableTool {
            name: "f",
            parameters: Some(&p),
            strict: false,
        }];
        for (format, key) in [
            (ToolFormat::Hermes, "arguments"),
            (ToolFormat::Llama3Json, "parameters"),
        ] {
            let s = fn_schema(&call_grammar(format, &tools, false, &|_| None), 0);
            let a = &s["properties"][key];
            let at = format!("#/properties/{key}");
            let props = &a["properties"];
            assert_eq!(props["unit"]["$ref"], format!("{at}/$defs/Unit"));
            assert_eq!(props["pair"]["$ref"], format!("{at}/$defs/Pair"));
            assert_eq!(
                a["$defs"]["Pair"]["items"]["$ref"],
                format!("{at}/$defs/Unit")
            );
            assert_eq!(props["self"]["$ref"], at);
            assert_eq!(props["old"]["$ref"], format!("{at}/definitions/Old"));
            // A property named `$ref`, a `const` value and another document's ref as given.
            assert_eq!(props["$ref"], json!({"const": {"$ref": "#/x"}}));
            assert_eq!(props["far"]["$ref"], "other.json#/a");
        }
        // Mistral's `[ARGS]` format embeds the parameters as the document: refs as written.
        let g = call_grammar(ToolFormat::MistralArgs, &tools, false, &|_| None);
        assert!(g.contains(r##"{"$ref":"#/$defs/Unit"}"##), "{g}");
    }

    /// Arguments are an object, whatever the `parameters` say: `{}` (and a schema without
    /// `type`) would let a forced call's arguments be any JSON value.
    #[test]
    fn arguments_are_always_an_object() {
        let empty = json!({});
        let untyped = json!({"properties": {"a": {"type": "integer"}}});
        let typed = json!({"type": ["object", "null"]});
        for (p, want) in [
            (Some(&empty), json!("object")),
            (Some(&untyped), json!("object")),
            (None, json!("object")),
            (Some(&typed), json!(["object", "null"])),
        ] {
            let t = CallableTool {
                name: "f",
                parameters: p,
                strict: false,
            };
            let s = fn_schema(&call_grammar(ToolFormat::Hermes, &[t], false, &|_| None), 0);
            assert_eq!(s["properties"]["arguments"]["type"], want, "{p:?}");
            assert_eq!(arguments_schema(t)["type"], want, "{p:?}");
        }
    }

    #[test]
    fn llama_and_mistral_grammars() {
        let tools = [CallableTool {
            name: "f",
            parameters: None,
            strict: false,
        }];
        let g = call_grammar(ToolFormat::Llama3Json, &tools, false, &|_| None);
        assert!(g.starts_with("start: call\n"), "{g}");
        assert!(g.contains("\"parameters\""), "{g}");
        let g = call_grammar(ToolFormat::Mistral, &tools, true, &|s| {
            (s == MISTRAL_TRIGGER).then_some(5)
        });
        assert!(
            g.starts_with("start: <[5]> \" \"? \"[\" call (\", \" call)* \"]\"\n"),
            "{g}"
        );
    }

    #[test]
    fn mistral_args_grammar_writes_name_then_arguments() {
        let p = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let tools = [CallableTool {
            name: "get_weather",
            parameters: Some(&p),
            strict: false,
        }];
        let ids = |s: &str| match s {
            MISTRAL_TRIGGER => Some(5),
            MISTRAL_ARGS => Some(32),
            _ => None,
        };
        let g = call_grammar(ToolFormat::MistralArgs, &tools, true, &ids);
        assert!(g.starts_with("start: <[5]> call (<[5]> call)*\n"), "{g}");
        let line = g.lines().find(|l| l.starts_with("fn_0: ")).unwrap();
        let prefix = "fn_0: \"get_weather\" <[32]> %json ";
        assert!(line.starts_with(prefix), "{g}");
        let schema: Json = serde_json::from_str(&line[prefix.len()..]).unwrap();
        assert_eq!(schema["properties"], p["properties"]);
        // Without the control tokens, their text.
        let g = call_grammar(ToolFormat::MistralArgs, &tools, false, &|_| None);
        assert!(g.starts_with("start: \"[TOOL_CALLS]\" call\n"), "{g}");
        assert!(g.contains("fn_0: \"get_weather\" \"[ARGS]\" %json "), "{g}");
    }
}
