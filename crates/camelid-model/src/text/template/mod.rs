//! Chat templates: FastChat's built-in conversation formats (byte for byte, `builtin`) and
//! HF jinja `chat_template`s rendered with minijinja (HF's helpers in `jinja_fns`), under an
//! instruction budget and a byte bound on the output.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

mod builtin;
mod jinja_fns;

pub use builtin::{Builtin, BUILTINS};
use jinja_fns::{raise_exception, strftime_now, tojson, too_long, CappedBuf};

/// One chat message as a template sees it (HF's `apply_chat_template` dicts): fields a
/// message does not have are left out, so `message.tool_calls is defined` reads as in HF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// An assistant message's calls, OpenAI's shape (`{"id", "type", "function": {"name",
    /// "arguments"}}`) with `arguments` an object, as HF templates expect it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Json>>,
    /// A `tool` message's answer to this call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// An assistant turn's thinking, kept apart from its content (Qwen3's templates show
    /// it again for the turns after the last user message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The message's `name` as the client gave it (a tool result's function: Hermes 2 Pro's
    /// template requires it), passed through as transformers and vLLM pass the dict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
            reasoning_content: None,
            name: None,
        }
    }
}

/// The template a model renders its conversations with.
/// Extra variables for a jinja chat template, by name.
pub type TemplateKwargs = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone)]
pub enum ChatTemplate {
    Builtin(&'static Builtin),
    Jinja {
        source: String,
        bos_token: String,
        eos_token: String,
    },
}

/// Instructions a chat template may run for one render: over 100× what the published tools
/// templates take for the most messages and tools a request may carry (1024 and 128 render
/// within 200 000), and well under a second of CPU.
const TEMPLATE_FUEL: u64 = 20_000_000;

impl ChatTemplate {
    pub fn name(&self) -> String {
        match self {
            ChatTemplate::Builtin(b) => b.name.to_string(),
            ChatTemplate::Jinja { .. } => "jinja".to_string(),
        }
    }

    /// Built-in by name, or the model's jinja template for `"jinja"`/`"model"`.
    pub fn builtin(name: &str) -> Result<Self> {
        Builtin::by_name(name)
            .map(ChatTemplate::Builtin)
            .ok_or_else(|| {
                let names: Vec<_> = BUILTINS.iter().map(|b| b.name).collect();
                Error::Template(format!(
                    "unknown template {name:?} (built-ins: {})",
                    names.join(", ")
                ))
            })
    }

    /// FastChat-style choice from a model name or path.
    pub fn for_model_name(name: &str) -> &'static Builtin {
        let n = name.to_lowercase();
        let pick = if n.contains("vicuna") {
            "vicuna_v1.1"
        } else if n.contains("llama-3") || n.contains("llama3") {
            "llama-3"
        } else if n.contains("llama-2") || n.contains("llama2") {
            "llama-2"
        } else if n.contains("alpaca") {
            "alpaca"
        } else if n.contains("mistral") || n.contains("mixtral") {
            "mistral"
        } else if n.contains("gemma") {
            "gemma"
        } else if n.contains("smollm") || n.contains("qwen") || n.contains("chatml") {
            "chatml"
        } else {
            "one_shot"
        };
        Builtin::by_name(pick).expect("built-in exists")
    }

    /// Text that ends an assistant turn for this template, besides EOS tokens.
    pub fn stop_strings(&self) -> Vec<String> {
        match self {
            ChatTemplate::Builtin(b) => b.stop_str.map(String::from).into_iter().collect(),
            ChatTemplate::Jinja { .. } => vec![],
        }
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(
            messages,
            None,
            add_generation_prompt,
            &TemplateKwargs::new(),
        )
    }

    /// [`Self::render`] with extra variables for a jinja template (vLLM's
    /// `chat_template_kwargs`, e.g. Qwen3's `enable_thinking`); they cannot replace
    /// `messages`, `tools`, `add_generation_prompt` or the special tokens. Built-in templates
    /// have no variables and ignore them. `tools` (OpenAI's function definitions) reach a
    /// jinja template as HF's `apply_chat_template(tools=…)` passes them; a built-in template
    /// cannot render them.
    pub fn render_with(
        &self,
        messages: &[Message],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
        kwargs: &TemplateKwargs,
    ) -> Result<String> {
        self.render_bounded(messages, tools, add_generation_prompt, kwargs, usize::MAX)
    }

    /// [`Self::render_with`] that stops, with an error, once the text passes `max_bytes`
    /// (what a client's input renders to is bounded while it renders).
    pub fn render_bounded(
        &self,
        messages: &[Message],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
        kwargs: &TemplateKwargs,
        max_bytes: usize,
    ) -> Result<String> {
        match self {
            ChatTemplate::Builtin(b) => {
                if tools.is_some_and(|t| !t.is_empty()) {
                    return Err(Error::Template(format!(
                        "the built-in template {:?} cannot render tools",
                        b.name
                    )));
                }
                // Built-in formats only join the messages: nothing grows while rendering.
                let text = b.render(messages, add_generation_prompt)?;
                if text.len() > max_bytes {
                    return Err(Error::TooLong(too_long(max_bytes)));
                }
                Ok(text)
            }
            ChatTemplate::Jinja {
                source,
                bos_token,
                eos_token,
            } => {
                let mut env = minijinja::Environment::new();
                // HF's `apply_chat_template` (and vLLM through it) compiles templates with
                // these two on: templates written over several lines without `-` markers
                // (TinyLlama's, Zephyr's) count on them to drop the newlines between tags.
                env.set_trim_blocks(true);
                env.set_lstrip_blocks(true);
                // A template is the model file's code, run on each request: its instructions
                // are counted, so one that loops (always, or on some message) ends in an
                // error instead of holding a worker and its request slot for good.
                env.set_fuel(Some(TEMPLATE_FUEL));
                minijinja_contrib::add_to_environment(&mut env);
                env.set_unknown_method_callback(
                    minijinja_contrib::pycompat::unknown_method_callback,
                );
                env.add_function("raise_exception", raise_exception);
                env.add_function("strftime_now", strftime_now);
                let json_over = Arc::new(AtomicBool::new(false));
                let (flag, spent) = (json_over.clone(), Arc::new(AtomicUsize::new(0)));
                env.add_filter("tojson", move |v: &minijinja::Value, indent, kwargs| {
                    tojson(v, indent, kwargs, max_bytes, &spent, &flag)
                });
                // Undefined values as Jinja2 takes them in these two (Hermes 2 Pro's tool
                // template reads a parameterless tool's `properties` so): no pairs, length 0.
                env.add_filter("items", |v: &minijinja::Value| {
                    if v.is_undefined() {
                        Ok(minijinja::Value::from(Vec::<minijinja::Value>::new()))
                    } else {
                        minijinja::filters::items(v)
                    }
                });
                let length = |v: &minijinja::Value| {
                    if v.is_undefined() {
                        Ok(0)
                    } else {
                        minijinja::filters::length(v)
                    }
                };
                env.add_filter("length", length);
                env.add_filter("count", length);
                let source = generation_blocks(source);
                env.add_template("chat", &source).map_err(|e| {
                    Error::Template(format!("cannot parse the model's chat_template: {e}"))
                })?;
                let tmpl = env
                    .get_template("chat")
                    .map_err(|e| Error::Template(e.to_string()))?;
                // The fixed variables are the template's inputs, never a client's.
                let fixed = [
                    "messages",
                    "tools",
                    "add_generation_prompt",
                    "bos_token",
                    "eos_token",
                ];
                let mut extra: TemplateKwargs = kwargs
                    .iter()
                    .filter(|(k, _)| !fixed.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                // As transformers renders (`documents=None`): `documents is not none` is false.
                extra
                    .entry("documents".to_string())
                    .or_insert(serde_json::Value::Null);
                let tools = tools.filter(|t| !t.is_empty());
                let mut out = CappedBuf::new(max_bytes);
                let ctx = minijinja::context! {
                    messages => messages,
                    tools => tools,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => bos_token,
                    eos_token => eos_token,
                    ..minijinja::Value::from_serialize(extra)
                };
                let rendered = tmpl.render_captured_to(ctx, &mut out).map(drop);
                match rendered {
                    Ok(()) => Ok(String::from_utf8(out.buf).expect("minijinja writes UTF-8")),
                    Err(_) if out.over || json_over.load(Ordering::Relaxed) => {
                        Err(Error::TooLong(too_long(max_bytes)))
                    }
                    Err(e) => Err(Error::Template(format!(
                        "rendering the model's chat_template: {e}"
                    ))),
                }
            }
        }
    }
}

/// transformers' `{% generation %}…{% endgeneration %}` (its `AssistantTracker` extension,
/// which TRL's training templates use to mark what the assistant says) renders its body: here
/// it becomes `{% if true %}…{% endif %}`, whitespace markers kept. minijinja has no such tag.
/// (The rewrite reads the source as text: the tag spelled inside a string, a comment or a
/// `raw` block is rewritten too, and a `set` inside the block is seen after it, where
/// transformers' block scopes it; no published template does either.)
fn generation_blocks(src: &str) -> std::borrow::Cow<'_, str> {
    if !src.contains("generation") {
        return std::borrow::Cow::Borrowed(src);
    }
    let marker = |s: &str| match s.chars().next() {
        Some(c @ ('-' | '+')) => (Some(c), s[1..].to_string()),
        _ => (None, s.to_string()),
    };
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = rest.find("{%") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let (open, inner) = marker(after);
        let inner = inner.trim_start();
        let word = [("endgeneration", "endif"), ("generation", "if true")]
            .into_iter()
            .find(|(w, _)| inner.starts_with(w));
        if let Some((w, with)) = word {
            let (close, tail) = marker(inner[w.len()..].trim_start());
            if let Some(tail) = tail.strip_prefix("%}") {
                out.push_str("{%");
                out.extend(open);
                out.push_str(&format!(" {with} "));
                out.extend(close);
                out.push_str("%}");
                // `tail` is a suffix of `rest`: continue from the same place in it.
                rest = &rest[rest.len() - tail.len()..];
                continue;
            }
        }
        out.push_str("{%");
        rest = after;
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(system: Option<&str>) -> Vec<Message> {
        let mut v = vec![];
        if let Some(s) = system {
            v.push(Message::new("system", s));
        }
        v.push(Message::new("user", "Hello!"));
        v.push(Message::new("assistant", "Hi!"));
        v.push(Message::new("user", "How are you?"));
        v
    }

    fn render(name: &str, system: Option<&str>) -> String {
        ChatTemplate::builtin(name)
            .unwrap()
            .render(&conv(system), true)
            .unwrap()
    }

    #[test]
    fn vicuna_matches_fastchat() {
        assert_eq!(
            render("vicuna_v1.1", None),
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: Hello! ASSISTANT: Hi!</s>USER: How are you? ASSISTANT:"
        );
        assert_eq!(
            render("vicuna_v1.1", Some("SYS")),
            "SYS USER: Hello! ASSISTANT: Hi!</s>USER: How are you? ASSISTANT:"
        );
    }

    #[test]
    fn llama2_matches_fastchat() {
        assert_eq!(
            render("llama-2", Some("You are nice.")),
            "[INST] <<SYS>>\nYou are nice.\n<</SYS>>\n\nHello! [/INST] Hi! </s><s>[INST] How are you? [/INST]"
        );
        assert_eq!(
            render("llama-2", None),
            "[INST] Hello! [/INST] Hi! </s><s>[INST] How are you? [/INST]"
        );
    }

    #[test]
    fn llama3_matches_fastchat() {
        assert_eq!(
            render("llama-3", Some("S")),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn alpaca_zero_one_shot_chatml_match_fastchat() {
        assert_eq!(
            render("alpaca", Some("S")),
            "S\n\n### Instruction: Hello!\n\n### Response: Hi!</s>### Instruction: How are you?\n\n### Response:"
        );
        assert_eq!(
            render("zero_shot", Some("S")),
            "S\n### Human: Hello!\n### Assistant: Hi!\n### Human: How are you?\n### Assistant:"
        );
        let one = render("one_shot", Some("S"));
        assert!(one.starts_with("S\n### Human: Got any creative ideas for a 10 year old’s birthday?\n### Assistant: Of course! Here are"));
        assert!(one.ends_with("Have a great celebration!\n### Human: Hello!\n### Assistant: Hi!\n### Human: How are you?\n### Assistant:"));
        assert_eq!(
            render("chatml", Some("S")),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\nHi!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn jinja_template_with_hf_helpers() {
        let t = ChatTemplate::Jinja {
            source: "{{ bos_token }}{% for m in messages %}{% if m.role not in ['user','assistant','system'] %}{{ raise_exception('bad role') }}{% endif %}<{{ m.role }}>{{ m.content.strip() }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}{{ messages|tojson }}".into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        };
        let out = t.render(&[Message::new("user", " hi ")], true).unwrap();
        assert!(out.starts_with("<s><user>hi</s><assistant>[{"), "{out}");
        let err = t.render(&[Message::new("tool", "x")], true).unwrap_err();
        assert!(err.to_string().contains("bad role"), "{err}");
    }

    /// TinyLlama's template (several lines, no `-` markers) renders as HF's
    /// `apply_chat_template` renders it (jinja2 with `trim_blocks` and `lstrip_blocks`):
    /// no blank lines between turns, the generation prompt ends in one newline.
    #[test]
    fn multi_line_templates_render_with_hfs_block_trimming() {
        let t = ChatTemplate::Jinja {
            source: include_str!(
                "../../../../../tests/fixtures/chat-templates/tinyllama-chat.jinja"
            )
            .into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        };
        let msgs = [
            Message::new("system", "S"),
            Message::new("user", "hi"),
            Message::new("assistant", "yo"),
            Message::new("user", "again"),
        ];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "<|system|>\nS</s>\n<|user|>\nhi</s>\n<|assistant|>\nyo</s>\n<|user|>\nagain</s>\n<|assistant|>\n"
        );
        // Indented tags lose their indentation (`lstrip_blocks`), as in jinja2.
        let t = ChatTemplate::Jinja {
            source: "  {% for m in messages %}\n    {%- if m.role == 'user' %}[{{ m.content }}]{% endif %}\n  {% endfor %}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let msgs = [Message::new("user", "a"), Message::new("user", "b")];
        assert_eq!(t.render(&msgs, false).unwrap(), "[a][b]");
    }

    /// `{% break %}` and `{% continue %}` parse (HF loads jinja2's `loopcontrols`; newer
    /// Qwen templates use `break`), and a format `strftime_now` cannot write is an error,
    /// not a panic.
    #[test]
    fn loop_controls_and_bad_time_formats() {
        let t = ChatTemplate::Jinja {
            source: "{% for m in messages %}{% if loop.index == 2 %}{% continue %}{% endif %}{{ m.content }}{% if loop.index == 3 %}{% break %}{% endif %}{% endfor %}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let msgs: Vec<Message> = ["a", "b", "c", "d"]
            .iter()
            .map(|c| Message::new("user", c))
            .collect();
        assert_eq!(t.render(&msgs, false).unwrap(), "ac");
        let t = ChatTemplate::Jinja {
            source: "{{ strftime_now('%Q') }}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let err = t.render(&msgs, false).unwrap_err();
        assert!(err.to_string().contains("strftime_now"), "{err}");
    }

    #[test]
    fn selection_by_name() {
        assert_eq!(
            ChatTemplate::for_model_name("lmsys/vicuna-7b-v1.5").name,
            "vicuna_v1.1"
        );
        assert_eq!(
            ChatTemplate::for_model_name("meta-llama/Llama-2-7b-chat-hf").name,
            "llama-2"
        );
        assert_eq!(
            ChatTemplate::for_model_name("meta-llama/Meta-Llama-3-8B-Instruct").name,
            "llama-3"
        );
        assert!(ChatTemplate::builtin("nope").is_err());
    }

    /// Qwen2.5's template (the tests' fixture) with tools, an assistant's call and a tool's
    /// answer renders as HF's `apply_chat_template` does: tools as Python's `json.dumps`
    /// writes them (key order kept, `<` and non-ASCII as they are), the call's arguments
    /// likewise, the answer in `<tool_response>`.
    #[test]
    fn qwen_template_renders_tools_calls_and_results_as_hf() {
        let t = ChatTemplate::Jinja {
            source: include_str!(
                "../../../../../tests/fixtures/chat-templates/qwen2.5-tools.jinja"
            )
            .into(),
            bos_token: String::new(),
            eos_token: "<|im_end|>".into(),
        };
        let tools = [
            serde_json::json!({"type": "function", "function": {"name": "get_weather",
            "description": "Weather <now> in a café", "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}}, "required": ["city"]}}}),
        ];
        let mut call = Message::new("assistant", "");
        call.tool_calls = Some(vec![serde_json::json!({"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}})]);
        let mut answer = Message::new("tool", "18 C");
        answer.tool_call_id = Some("call_1".into());
        let msgs = [Message::new("user", "Weather in Paris?"), call, answer];
        let out = t
            .render_with(&msgs, Some(&tools), true, &TemplateKwargs::new())
            .unwrap();
        let want = concat!(
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n",
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n",
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n",
            r#"{"type": "function", "function": {"name": "get_weather", "description": "Weather <now> in a café", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}"#,
            "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n",
            "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n",
            "<|im_start|>user\nWeather in Paris?<|im_end|>\n",
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n</tool_call><|im_end|>\n",
            "<|im_start|>user\n<tool_response>\n18 C\n</tool_response><|im_end|>\n",
            "<|im_start|>assistant\n",
        );
        assert_eq!(out, want);
        // Without tools: the plain system prompt, no tool text.
        let plain = t.render(&msgs[..1], true).unwrap();
        assert!(!plain.contains("<tools>"), "{plain}");
        // Built-in templates cannot render tools.
        let chatml = ChatTemplate::builtin("chatml").unwrap();
        assert!(chatml
            .render_with(&msgs[..1], Some(&tools), true, &TemplateKwargs::new())
            .is_err());
    }

    /// `tojson(indent=n)` is Python's `json.dumps(indent=n)`.
    #[test]
    fn tojson_with_indent_is_pythons() {
        let t = ChatTemplate::Jinja {
            source: "{{ tools[0] | tojson(indent=2) }}|{{ tools[0] | tojson }}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let tools = [serde_json::json!({"b": [1, 2.5], "a": {}, "s": "x'&"})];
        let out = t
            .render_with(&[], Some(&tools), false, &TemplateKwargs::new())
            .unwrap();
        assert_eq!(
            out,
            "{\n  \"b\": [\n    1,\n    2.5\n  ],\n  \"a\": {},\n  \"s\": \"x'&\"\n}|{\"b\": [1, 2.5], \"a\": {}, \"s\": \"x'&\"}"
        );
    }

    /// `documents` is `none` unless the request's template kwargs give it, as transformers
    /// renders (`documents=None`): a RAG template's document block stays out.
    #[test]
    fn documents_are_none_unless_given() {
        let t = ChatTemplate::Jinja {
            source: "{% if documents is not none %}DOCS {{ documents | length }}{% endif %}."
                .into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let none = t
            .render_with(&[], None, false, &TemplateKwargs::new())
            .unwrap();
        assert_eq!(none, ".");
        let mut kwargs = TemplateKwargs::new();
        kwargs.insert("documents".into(), serde_json::json!([{"text": "a"}]));
        assert_eq!(t.render_with(&[], None, false, &kwargs).unwrap(), "DOCS 1.");
    }

    /// A model's template cannot ask `tojson` for an indent wider than 64 spaces: the indent
    /// is built before the output cap applies (`indent=10**13` aborted the process).
    #[test]
    fn tojson_indents_are_bounded() {
        let render = |indent: u64| {
            ChatTemplate::Jinja {
                source: format!("{{{{ tools[0] | tojson(indent={indent}) }}}}"),
                bos_token: String::new(),
                eos_token: String::new(),
            }
            .render_with(
                &[],
                Some(&[serde_json::json!([1])]),
                false,
                &TemplateKwargs::new(),
            )
        };
        assert_eq!(render(64).unwrap(), format!("[\n{}1\n]", " ".repeat(64)));
        let err = render(65).unwrap_err().to_string();
        assert!(err.contains("indent may be at most 64"), "{err}");
    }

    /// `tojson`'s other keywords are `json.dumps`' (expected texts written by Python 3).
    #[test]
    fn tojson_keywords_are_pythons() {
        let t = ChatTemplate::Jinja {
            source: concat!(
                "{{ tools[0] | tojson(sort_keys=true) }}|",
                "{{ tools[0] | tojson(ensure_ascii=true, separators=(',', ':')) }}|",
                "{{ tools[0] | tojson(indent=1, separators=(', ', ': '), sort_keys=true, ensure_ascii=true) }}"
            )
            .into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let tools = [serde_json::json!({"b": [1, 2.5], "a": {"z": "é😀", "y": []}, "s": "x\u{1}"})];
        let out = t
            .render_with(&[], Some(&tools), false, &TemplateKwargs::new())
            .unwrap();
        let want = [
            r#"{"a": {"y": [], "z": "é😀"}, "b": [1, 2.5], "s": "x\u0001"}"#,
            r#"{"b":[1,2.5],"a":{"z":"\u00e9\ud83d\ude00","y":[]},"s":"x\u0001"}"#,
            "{\n \"a\": {\n  \"y\": [], \n  \"z\": \"\\u00e9\\ud83d\\ude00\"\n }, \n \"b\": [\n  1, \n  2.5\n ], \n \"s\": \"x\\u0001\"\n}",
        ];
        assert_eq!(out, want.join("|"));
    }

    /// Floats as Python's `json.dumps` writes them (its `repr`): `1e-05`, `1e+16`, `100.0`,
    /// where serde wrote `0.00001` and `1e16` (a tool schema's `minimum` read differently).
    #[test]
    fn tojson_writes_floats_as_python() {
        let t = ChatTemplate::Jinja {
            source: "{{ tools[0] | tojson }}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let tools = [
            serde_json::json!({"a": 0.00001, "b": 1e16, "c": 1.5e-7, "d": 100.0,
            "e": 0.0001, "f": 123456.789, "g": -0.0, "h": 1.2345678901234568e17, "i": 3,
            "j": 0.1, "k": 1e15, "l": -2.5e-300}),
        ];
        let out = t
            .render_with(&[], Some(&tools), false, &TemplateKwargs::new())
            .unwrap();
        assert_eq!(
            out,
            r#"{"a": 1e-05, "b": 1e+16, "c": 1.5e-07, "d": 100.0, "e": 0.0001, "f": 123456.789, "g": -0.0, "h": 1.2345678901234568e+17, "i": 3, "j": 0.1, "k": 1000000000000000.0, "l": -2.5e-300}"#
        );
    }

    /// transformers' `{% generation %}` block (TRL's training templates) renders its body,
    /// whitespace markers and all; minijinja refused the tag. And `items`/`length` of an
    /// undefined value are empty, as in Jinja2 (Hermes 2 Pro's tool template reads a
    /// parameterless tool's `properties` so): they were errors.
    #[test]
    fn generation_blocks_and_undefined_items_render_as_in_transformers() {
        let t = |source: &str| ChatTemplate::Jinja {
            source: source.into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let m = [Message::new("user", "hi"), Message::new("assistant", "yo")];
        let g = t("{% for m in messages %}[{%- generation -%} {{ m.content }} {%- endgeneration -%}]\n{% generation %}{% endgeneration %}{% endfor %}{{ 'generation' }}");
        assert_eq!(g.render(&m, false).unwrap(), "[hi]\n[yo]\ngeneration");
        let tools = [
            serde_json::json!({"type": "function", "function": {"name": "now",
            "parameters": {"type": "object"}}}),
        ];
        let u = t("{% for k, v in tools[0].function.parameters.properties|items %}{{ k }}{% endfor %}{{ tools[0].function.parameters.properties|length }}{{ tools[0].function.parameters|length }}");
        assert_eq!(
            u.render_with(&m, Some(&tools), false, &TemplateKwargs::new())
                .unwrap(),
            "01"
        );
        // A value that is there but is not a mapping is still an error.
        let bad = t("{{ tools[0].function.name|items }}");
        assert!(bad
            .render_with(&m, Some(&tools), false, &TemplateKwargs::new())
            .is_err());
    }

    /// A render stops once its text passes the bound, in the template's own output or
    /// inside one `tojson` value; at the bound exactly it is the unbounded render.
    #[test]
    fn renders_stop_at_their_byte_bound() {
        let t = ChatTemplate::Jinja {
            source: "{% for m in messages %}{{ m.content }}{% endfor %}{% if tools %}{{ tools[0] | tojson(indent=4) }}{% endif %}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let kw = TemplateKwargs::new();
        let msgs = [Message::new("user", &"hello ".repeat(100))];
        let mut deep = serde_json::json!([0, 0, 0]);
        for _ in 0..40 {
            deep = serde_json::json!([deep]);
        }
        let tools = [deep];
        let full = t.render_with(&msgs, Some(&tools), false, &kw).unwrap();
        assert!(full.len() > 5000, "{}", full.len());
        let bounded = |tools, max| t.render_bounded(&msgs, tools, false, &kw, max);
        assert_eq!(bounded(Some(&tools[..]), full.len()).unwrap(), full);
        let too_long =
            |r: Result<String>| matches!(r, Err(Error::TooLong(m)) if m.contains("passes"));
        assert!(too_long(bounded(Some(&tools[..]), full.len() - 1)));
        // Captured output (a `set` block) holds at most twice the bound of tojson.
        let captured = ChatTemplate::Jinja {
            source: "{% set x %}{% for i in range(50) %}{{ tools[0] | tojson }}{% endfor %}{% endset %}{{ x | length }}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let small = [serde_json::json!([1, 2, 3])];
        let r = |max| captured.render_bounded(&[], Some(&small[..]), false, &kw, max);
        assert_eq!(r(1000).unwrap(), "450");
        assert!(too_long(r(200)), "50 × 9 bytes of tojson against 2 × 200");
        // The tool's JSON alone passes 1 000 bytes; the messages do not.
        assert!(too_long(bounded(Some(&tools[..]), 1000)));
        assert!(bounded(None, 1000).is_ok());
        assert!(too_long(bounded(None, 599)));
        let chatml = ChatTemplate::builtin("chatml").unwrap();
        let whole = chatml.render(&msgs, false).unwrap();
        let b = |max| chatml.render_bounded(&msgs, None, false, &kw, max);
        assert_eq!(b(whole.len()).unwrap(), whole);
        assert!(too_long(b(whole.len() - 1)));
    }

    /// Qwen3's switch, as its template reads it: `enable_thinking` false writes an empty
    /// thinking block after the generation prompt; the fixed variables win over kwargs.
    #[test]
    fn kwargs_reach_a_jinja_template() {
        let t = ChatTemplate::Jinja {
            source: "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}".into(),
            bos_token: String::new(),
            eos_token: "<|im_end|>".into(),
        };
        let msgs = [Message::new("user", "hi")];
        let plain = t.render(&msgs, true).unwrap();
        assert!(!plain.contains("<think>"), "{plain}");
        let mut kw = TemplateKwargs::new();
        kw.insert("enable_thinking".into(), serde_json::json!(false));
        kw.insert("add_generation_prompt".into(), serde_json::json!(false));
        kw.insert("messages".into(), serde_json::json!([]));
        let off = t.render_with(&msgs, None, true, &kw).unwrap();
        assert_eq!(
            off,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        );
        kw.insert("enable_thinking".into(), serde_json::json!(true));
        assert_eq!(t.render_with(&msgs, None, true, &kw).unwrap(), plain);
    }

    /// A template's instructions are counted: one that loops on some message ends in an
    /// error at once instead of holding its worker; the published templates with the most
    /// messages and tools a request may carry render well within the budget.
    #[test]
    fn templates_that_loop_run_out_of_fuel() {
        let jinja = |source: &str| ChatTemplate::Jinja {
            source: source.into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let kw = TemplateKwargs::new();
        let looping = jinja(
            "{% for m in messages %}{% if 'boom' in m.content %}\
             {% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}\
             {% endif %}{{ m.content }}{% endfor %}",
        );
        assert_eq!(
            looping
                .render_with(&[Message::new("user", "hi")], None, true, &kw)
                .unwrap(),
            "hi"
        );
        let err = looping
            .render_with(&[Message::new("user", "boom")], None, true, &kw)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fuel"), "{err}");
        let tool = |i: usize| {
            serde_json::json!({"type": "function", "function": {"name": format!("f{i}"),
                "description": "A function with a few typed parameters",
                "parameters": {"type": "object", "properties": {
                    "a": {"type": "string"}, "b": {"type": "integer"}}}}})
        };
        let tools: Vec<Json> = (0..128).map(tool).collect();
        let msgs: Vec<Message> = (0..1024)
            .map(|i| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, "some words"))
            .collect();
        for f in [
            "qwen2.5-tools.jinja",
            "llama3-json-tools.jinja",
            "mistral-v0.3-tools.jinja",
        ] {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/chat-templates/"
            );
            let source = std::fs::read_to_string(format!("{path}{f}")).unwrap();
            let r = jinja(&source).render_with(&msgs, Some(&tools), true, &kw);
            assert!(r.is_ok(), "{f}: {:?}", r.err());
        }
    }
}
