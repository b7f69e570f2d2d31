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
}

/// The JSON layout the grammar writes: the separators the templates' `tojson` (Python's
/// `json.dumps`) writes, and no free whitespace (a small model could otherwise spend its
/// tokens on blanks).
fn layout() -> Json {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// The schema of one call's JSON: `{"name": <const>, <args key>: <parameters>}`.
pub fn call_schema(format: ToolFormat, tool: CallableTool) -> Json {
    let key = format.arguments_key();
    json!({
        "type": "object",
        "properties": {"name": {"const": tool.name}, key: arguments_schema(tool)},
        "required": ["name", key],
        "additionalProperties": false,
        "x-guidance": layout(),
    })
}

/// A function's arguments schema (any object when it has none).
fn arguments_schema(tool: CallableTool) -> Json {
    tool.parameters
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}))
}

/// The grammar for one call of any of `tools` (several when `parallel`). `control_token`
/// gives the id of a control token's text in the model's vocabulary (Mistral's
/// `[TOOL_CALLS]`, `[ARGS]`), which the grammar names by id; `None`: written as text.
pub fn call_grammar(
    format: ToolFormat,
    tools: &[CallableTool],
    parallel: bool,
    control_token: &dyn Fn(&str) -> Option<u32>,
) -> String {
    let mut g = String::new();
    let alternatives: Vec<String> = (0..tools.len()).map(|i| format!("fn_{i}")).collect();
    let one = alternatives.join(" | ");
    let lit = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let control = |s: &str| match control_token(s) {
        Some(id) => format!("<[{id}]>"),
        None => lit(s),
    };
    match format {
        ToolFormat::Hermes => {
            let block = format!(
                "{} {} {}",
                lit(&format!("{HERMES_OPEN}\n")),
                "call",
                lit(&format!("\n{HERMES_CLOSE}"))
            );
            if parallel {
                g += &format!("start: block ({} block)*\n", lit("\n"));
            } else {
                g += "start: block\n";
            }
            g += &format!("block: {block}\n");
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
            g += &format!("start: {trigger} {} {calls} {}\n", lit("["), lit("]"));
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
                let mut schema = arguments_schema(*t);
                if let Some(o) = schema.as_object_mut() {
                    o.insert("x-guidance".into(), layout());
                }
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
            },
            CallableTool {
                name: "now",
                parameters: None,
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
        assert_eq!(schema["properties"]["arguments"], p);
        let single = call_grammar(ToolFormat::Hermes, &tools[..1], false, &|_| None);
        assert!(single.starts_with("start: block\n"), "{single}");
    }

    #[test]
    fn llama_and_mistral_grammars() {
        let tools = [CallableTool {
            name: "f",
            parameters: None,
        }];
        let g = call_grammar(ToolFormat::Llama3Json, &tools, false, &|_| None);
        assert!(g.starts_with("start: call\n"), "{g}");
        assert!(g.contains("\"parameters\""), "{g}");
        let g = call_grammar(ToolFormat::Mistral, &tools, true, &|s| {
            (s == MISTRAL_TRIGGER).then_some(5)
        });
        assert!(
            g.starts_with("start: <[5]> \"[\" call (\", \" call)* \"]\"\n"),
            "{g}"
        );
    }

    #[test]
    fn mistral_args_grammar_writes_name_then_arguments() {
        let p = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let tools = [CallableTool {
            name: "get_weather",
            parameters: Some(&p),
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
