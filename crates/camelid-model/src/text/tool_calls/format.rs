//! Which call format a chat template teaches (as llama.cpp's `chat.cpp` and vLLM's tool
//! parsers tell them apart), and whether a template renders `tools` at all.

use crate::error::Error;
use crate::text::template::{ChatTemplate, Message};
use serde_json::Value as Json;

/// The call formats of the templates camelid serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// Hermes / Qwen2.5 / Qwen3: `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`,
    /// one block per call.
    Hermes,
    /// Llama 3.1 / 3.2: the whole answer is `{"name": …, "parameters": {…}}`, optionally after
    /// `<|python_tag|>`; several calls separated by `;`.
    Llama3Json,
    /// Mistral (v3 tokenizers): `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]`.
    Mistral,
    /// Mistral's newer templates (v0.3 tekken, Mistral-Small-3.x, Magistral, Devstral):
    /// `[TOOL_CALLS]name[ARGS]{…}` per call (an optional `[CALL_ID]id` before `[ARGS]`).
    MistralArgs,
}

pub const HERMES_OPEN: &str = "<tool_call>";
pub const HERMES_CLOSE: &str = "</tool_call>";
pub const PYTHON_TAG: &str = "<|python_tag|>";
pub const MISTRAL_TRIGGER: &str = "[TOOL_CALLS]";
pub const MISTRAL_ARGS: &str = "[ARGS]";
pub const MISTRAL_CALL_ID: &str = "[CALL_ID]";

impl ToolFormat {
    /// The format a template writes calls in, from what its source writes (llama.cpp's
    /// detection); templates that show none of them get Hermes, the commonest.
    pub fn for_template(template: &ChatTemplate) -> ToolFormat {
        let src = match template {
            ChatTemplate::Jinja { source, .. } => source.as_str(),
            ChatTemplate::Builtin(_) => "",
        };
        if src.contains(MISTRAL_TRIGGER) && src.contains(MISTRAL_ARGS) {
            ToolFormat::MistralArgs
        } else if src.contains(MISTRAL_TRIGGER) {
            ToolFormat::Mistral
        } else if src.contains(HERMES_OPEN) {
            ToolFormat::Hermes
        } else if src.contains("<|start_header_id|>")
            && (src.contains(PYTHON_TAG) || src.contains("\"parameters\""))
        {
            ToolFormat::Llama3Json
        } else {
            ToolFormat::Hermes
        }
    }

    /// Whether the template teaches pythonic calls (`[get_weather(city="Paris")]`: vLLM's
    /// Llama 3.2 and Gemma 3 pythonic templates, Llama 4's), which camelid does not read:
    /// taken for Hermes, such a model's calls would come back as text.
    pub fn template_teaches_pythonic(template: &ChatTemplate) -> bool {
        match template {
            ChatTemplate::Jinja { source, .. } => {
                source.contains("func_name1(") || source.contains("[func_name(")
            }
            ChatTemplate::Builtin(_) => false,
        }
    }

    /// The text that starts a call; the client must see it (not skipped as a special token).
    pub fn trigger(self) -> &'static str {
        match self {
            ToolFormat::Hermes => HERMES_OPEN,
            ToolFormat::Llama3Json => PYTHON_TAG,
            ToolFormat::Mistral | ToolFormat::MistralArgs => MISTRAL_TRIGGER,
        }
    }

    /// The key a call's arguments go under.
    pub fn arguments_key(self) -> &'static str {
        match self {
            ToolFormat::Llama3Json => "parameters",
            _ => "arguments",
        }
    }
}

/// Whether `template` renders `tools` into the prompt: a conversation rendered with them
/// names every function (by name) that it does not name without them. A template that
/// ignores `tools` (SmolLM2's, the built-ins) cannot offer them to the model. A render
/// passing `max_bytes` is an error ([`Error::TooLong`]), not a no.
pub fn renders_tools(
    template: &ChatTemplate,
    tools: &[Json],
    max_bytes: usize,
) -> crate::error::Result<bool> {
    let probe = [Message::new("user", "?")];
    let kwargs = Default::default();
    let render = |tools| match template.render_bounded(&probe, tools, true, &kwargs, max_bytes) {
        Ok(text) => Ok(Some(text)),
        Err(e @ Error::TooLong(_)) => Err(e),
        Err(_) => Ok(None),
    };
    let (Some(with), Some(without)) = (render(Some(tools))?, render(None)?) else {
        return Ok(false);
    };
    Ok(tools.iter().all(|t| {
        let name = t
            .pointer("/function/name")
            .and_then(Json::as_str)
            .unwrap_or_default();
        with.matches(name).count() > without.matches(name).count()
    }))
}
