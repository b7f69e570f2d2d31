//! The Lark grammar (llguidance's dialect) that makes a model write tool calls in its
//! template's format: the call's JSON embedded as a schema (`%json`), the function's name a
//! constant and its `parameters` the arguments' schema. `tool_choice: "required"` and a
//! named function are enforced with it.

use crate::text::tool_calls::{ToolFormat, HERMES_CLOSE, HERMES_OPEN};
use serde_json::{json, Value as Json};

/// One function the grammar may call.
#[derive(Debug, Clone, Copy)]
pub struct CallableTool<'a> {
    pub name: &'a str,
    /// The arguments' JSON schema (OpenAI's `function.parameters`); `None`: any object.
    pub parameters: Option<&'a Json>,
}

/// The schema of one call's JSON: `{"name": <const>, <args key>: <parameters>}`, written
/// with the separators the parsers and templates use and no free whitespace (a small model
/// could otherwise spend its tokens on blanks).
pub fn call_schema(format: ToolFormat, tool: CallableTool) -> Json {
    let args = tool
        .parameters
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}));
    let key = format.arguments_key();
    json!({
        "type": "object",
        "properties": {"name": {"const": tool.name}, key: args},
        "required": ["name", key],
        "additionalProperties": false,
        "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "},
    })
}

/// The grammar for one call of any of `tools` (several when `parallel`). `trigger_token` is
/// the id of Mistral's `[TOOL_CALLS]` control token (a grammar names control tokens by id).
pub fn call_grammar(
    format: ToolFormat,
    tools: &[CallableTool],
    parallel: bool,
    trigger_token: Option<u32>,
) -> String {
    let mut g = String::new();
    let alternatives: Vec<String> = (0..tools.len()).map(|i| format!("fn_{i}")).collect();
    let one = alternatives.join(" | ");
    let lit = |s: &str| serde_json::to_string(s).expect("a string serializes");
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
            let trigger = match trigger_token {
                Some(id) => format!("<[{id}]>"),
                None => lit(crate::text::tool_calls::MISTRAL_TRIGGER),
            };
            let calls = if parallel {
                format!("call ({} call)*", lit(", "))
            } else {
                "call".to_string()
            };
            g += &format!("start: {trigger} {} {calls} {}\n", lit("["), lit("]"));
            g += &format!("call: {one}\n");
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
        let g = call_grammar(ToolFormat::Hermes, &tools, true, None);
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
        let single = call_grammar(ToolFormat::Hermes, &tools[..1], false, None);
        assert!(single.starts_with("start: block\n"), "{single}");
    }

    #[test]
    fn llama_and_mistral_grammars() {
        let tools = [CallableTool {
            name: "f",
            parameters: None,
        }];
        let g = call_grammar(ToolFormat::Llama3Json, &tools, false, None);
        assert!(g.starts_with("start: call\n"), "{g}");
        assert!(g.contains("\"parameters\""), "{g}");
        let g = call_grammar(ToolFormat::Mistral, &tools, true, Some(5));
        assert!(
            g.starts_with("start: <[5]> \"[\" call (\", \" call)* \"]\"\n"),
            "{g}"
        );
    }
}
