//! Every built-in template against FastChat's own `Conversation.get_prompt()` (fschat 0.2.36
//! in the test venv, run by `tests/fastchat/templates.py`; `llama-3` and `gemma`, which
//! FastChat added after 0.2.36, as FastChat main defines them): the same prompt, byte for byte, and the same
//! stop string, over conversations with and without a system message, one turn and several.
//!
//! Needs `CAMELID_TEST_PYTHON` with FastChat (`tests/run.sh` makes it); without it the test
//! fails, unless `CAMELID_SKIP_FASTCHAT=1` says to skip it.

use camelid_model::text::template::{Builtin, Message, BUILTINS};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

/// Built-ins of camelid's own, which FastChat does not define (`chatml`: SmolLM2's format,
/// FastChat's CHATML style under a name of camelid's).
const NOT_FASTCHAT: &[&str] = &["chatml"];

fn conversations() -> Vec<(Option<&'static str>, Vec<Message>)> {
    let chat = vec![
        Message::new("user", "Hello!"),
        Message::new("assistant", "Hi! How can I help?"),
        Message::new("user", "Write a haiku\nabout rain."),
    ];
    let one = vec![Message::new("user", "What is 2 + 2?")];
    // An answer with no text (a reasoning model's thinking took every token): FastChat's
    // `if message:` writes its role as an open turn.
    let empty_answer = vec![
        Message::new("user", "Hi"),
        Message::new("assistant", ""),
        Message::new("user", "Again?"),
    ];
    vec![
        (None, chat.clone()),
        (Some("You are terse."), chat),
        (None, one.clone()),
        (Some("Answer in French."), one),
        (None, empty_answer),
    ]
}

#[test]
fn builtin_templates_match_fastchat_get_prompt() {
    if std::env::var("CAMELID_SKIP_FASTCHAT").as_deref() == Ok("1") {
        eprintln!("SKIPPED: CAMELID_SKIP_FASTCHAT=1");
        return;
    }
    let python = std::env::var("CAMELID_TEST_PYTHON").expect(
        "CAMELID_TEST_PYTHON is not set: run the suite with `bash tests/run.sh` (it makes the \
         venv with FastChat), or set CAMELID_SKIP_FASTCHAT=1 to skip this test",
    );
    let mut cases = vec![];
    let mut ours = vec![];
    for b in BUILTINS.iter().filter(|b| !NOT_FASTCHAT.contains(&b.name)) {
        for (system, messages) in conversations() {
            let mut with_system = messages.clone();
            if let Some(s) = system {
                with_system.insert(0, Message::new("system", s));
            }
            ours.push((b, system, b.render(&with_system, true).unwrap()));
            cases.push(json!({"template": b.name, "system": system, "messages": messages}));
        }
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fastchat/templates.py"
    );
    let mut child = Command::new(&python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::Array(cases).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "templates.py:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs.len(), ours.len());
    for ((b, system, prompt), want) in ours.iter().zip(&theirs) {
        let b: &Builtin = b;
        assert_eq!(
            prompt,
            want["prompt"].as_str().unwrap(),
            "template {} with system {system:?}",
            b.name
        );
        assert_eq!(
            b.stop_str,
            want["stop_str"].as_str(),
            "template {}'s stop string",
            b.name
        );
    }
    for name in ["qwen-7b-chat", "mistral", "gemma"] {
        assert!(Builtin::by_name(name).is_some(), "{name} is a built-in");
    }
}
