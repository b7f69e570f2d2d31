//! A minimal OpenAI chat-completions client: one call, retried as openai-python retries.
//!
//! Failures come in three kinds ([`ChatError`]): transient ones (rate limits, 5xx, connection
//! errors, a timeout) are retried with backoff and, when they last, left for the next run;
//! a request the endpoint rejects (400, 413, 422, or a reply with no content) fails the same
//! way every time, so it is not retried and FastChat's [`API_ERROR_OUTPUT`] stands for its
//! answer; a wrong key, model or endpoint (401, 403, 404, …) fails every request, so it stops
//! the run.

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// FastChat's `API_ERROR_OUTPUT`: the text recorded for a turn or judgment the API would not
/// give (judged as any other answer; a judgment of it scores -1, its verdict is "error").
pub const API_ERROR_OUTPUT: &str = "$ERROR$";

/// The request field that carries the output budget: `max_tokens`, or
/// `max_completion_tokens` (OpenAI's reasoning models, o1/o3/o4-mini/gpt-5, reject the
/// former).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaxTokensField {
    #[default]
    MaxTokens,
    MaxCompletionTokens,
}

impl MaxTokensField {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxTokens => "max_tokens",
            Self::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

impl std::str::FromStr for MaxTokensField {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "max_tokens" => Ok(Self::MaxTokens),
            "max_completion_tokens" => Ok(Self::MaxCompletionTokens),
            o => Err(format!(
                "{o:?}: expected max_tokens or max_completion_tokens"
            )),
        }
    }
}

/// Why a chat call gave no text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatError {
    /// Still failing after the retries (rate limit, 5xx, connection error, timeout): it may
    /// pass later, so it is recorded as a failure the next run retries.
    Transient(String),
    /// This request fails whatever the retries (400 such as a context-length error, 413,
    /// 422, or no content with `finish_reason` "length"): FastChat records
    /// [`API_ERROR_OUTPUT`] for it.
    Rejected(String),
    /// Every request would fail (wrong key, model or endpoint): the run stops.
    Fatal(String),
}

impl std::fmt::Display for ChatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transient(m) | Self::Rejected(m) | Self::Fatal(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ChatError {}

impl ChatError {
    /// Whether `e` (a [`ChatError`] inside an `anyhow::Error`) should stop the whole run.
    pub fn is_fatal(e: &anyhow::Error) -> bool {
        matches!(e.downcast_ref::<ChatError>(), Some(ChatError::Fatal(_)))
    }
}

#[derive(Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    url: String,
    api_key: Option<String>,
    pub model: String,
    /// Retries after the first attempt, of transient failures only (openai-python's
    /// `_should_retry`: 408, 409, 429, 5xx, connection errors); a timeout is retried once.
    pub retries: usize,
    /// The first backoff wait; it doubles with each retry, jittered down by up to a quarter.
    pub backoff: Duration,
    /// The longest wait between attempts, a server's `Retry-After` included.
    pub max_delay: Duration,
    /// How long one request may take.
    pub timeout: Duration,
    pub max_tokens_field: MaxTokensField,
    /// Send `temperature` (reasoning models reject any but their default: leave it out).
    pub send_temperature: bool,
    /// Some request of this client (or a clone) has succeeded: until one has, rejected
    /// requests are more likely the request's shape (an unsupported parameter) than their
    /// content, and it would reject them all.
    succeeded: Arc<AtomicBool>,
    /// Requests rejected before any succeeded: the [`EARLY_REJECTIONS`]th stops the run.
    /// Not the first alone: a first question that is legitimately refused (too long for the
    /// context, a content filter) would stop every rerun at the same place.
    early_rejections: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Msg {
    pub role: String,
    pub content: String,
}

impl Msg {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The chat-completions URL of a base URL: a bare host (`http://host:8000`, with or without
/// `/`) gets `/v1/chat/completions`; a URL with a path gets `/chat/completions` after it
/// (`http://host:8000/v1`, `https://generativelanguage.googleapis.com/v1beta/openai/`); a
/// path that already ends in `/chat/completions` is kept. A query string stays.
pub fn chat_url(endpoint: &str) -> Result<String> {
    let mut url = reqwest::Url::parse(endpoint.trim())
        .map_err(|e| anyhow!("endpoint {endpoint:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        anyhow::bail!("endpoint {endpoint:?}: expected an http:// or https:// URL");
    }
    let path = url.path().trim_end_matches('/').to_string();
    let path = if path.is_empty() {
        "/v1/chat/completions".to_string()
    } else if path.ends_with("/chat/completions") {
        path
    } else {
        format!("{path}/chat/completions")
    };
    url.set_path(&path);
    Ok(url.to_string())
}

/// The error message of an error body: OpenAI's `error.message`, else a top-level `message`
/// or `detail` (FastAPI's), else a string `error`, else the body's first 500 characters (an
/// HTML page from a proxy).
pub fn error_message(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let text = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Null | Value::String(_) => None,
        o => Some(o.to_string()),
    };
    text(&v["error"]["message"])
        .or_else(|| text(&v["message"]))
        .or_else(|| text(&v["detail"]))
        .or_else(|| v["error"].as_str().map(String::from))
        .unwrap_or_else(|| {
            let body = body.trim();
            if body.is_empty() {
                "(empty body)".into()
            } else {
                body.chars().take(500).collect()
            }
        })
}

/// A server's wait before the next attempt: `retry-after-ms` (milliseconds), else
/// `retry-after` in seconds (an HTTP date is left to the backoff).
/// Rejections before any success that stop a run (see `ChatClient::early_rejections`).
pub const EARLY_REJECTIONS: usize = 3;

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x > 0.0)
    };
    // Bounded before the conversion: a huge value would panic in `from_secs_f64`.
    number("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms.min(1e9) / 1000.0))
        .or_else(|| number("retry-after").map(|s| Duration::from_secs_f64(s.min(1e6))))
}

/// A transport error with its causes ("error sending request" alone says little).
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s += &format!(": {c}");
        src = c.source();
    }
    s
}

/// One attempt's failure.
enum Failure {
    Retry {
        msg: String,
        after: Option<Duration>,
        timeout: bool,
    },
    /// `http`: an error status (not a reply without content).
    Rejected {
        msg: String,
        http: bool,
    },
    Fatal(String),
}

fn retry(msg: String) -> Failure {
    Failure::Retry {
        msg,
        after: None,
        timeout: false,
    }
}

/// The text of a successful reply: `content` as a string or a list of text parts; when it is
/// null, the model's `refusal` (what it said to the user: a refusal is judged as one, where
/// [`API_ERROR_OUTPUT`] would hide it as an API failure).
fn reply_text(v: &Value) -> Result<String, Failure> {
    let choice = &v["choices"][0];
    let msg = &choice["message"];
    if !msg.is_object() {
        return Err(retry(format!(
            "the reply has no choices[0].message: {}",
            v.to_string().chars().take(300).collect::<String>()
        )));
    }
    match &msg["content"] {
        Value::String(s) => return Ok(s.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter(|p| p["type"].is_null() || p["type"] == "text")
                .filter_map(|p| p.as_str().or_else(|| p["text"].as_str()))
                .collect();
            if !texts.is_empty() {
                return Ok(texts.concat());
            }
        }
        _ => {}
    }
    if let Some(r) = msg["refusal"].as_str() {
        return Ok(r.to_string());
    }
    // No text: the budget went before any (a reasoning model's), or a filter stopped it;
    // asked again, it would end the same way.
    Err(Failure::Rejected {
        msg: format!(
            "the reply has no content (finish_reason {})",
            choice["finish_reason"]
        ),
        http: false,
    })
}

impl ChatClient {
    /// `endpoint` is the base URL (`http://host:8000`, `http://host:8000/v1`,
    /// `https://generativelanguage.googleapis.com/v1beta/openai/`): see [`chat_url`].
    pub fn new(endpoint: &str, model: &str, api_key: Option<String>) -> Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder().build()?,
            url: chat_url(endpoint)?,
            api_key,
            model: model.to_string(),
            retries: 7,
            backoff: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            timeout: Duration::from_secs(600),
            max_tokens_field: MaxTokensField::MaxTokens,
            send_temperature: true,
            succeeded: Arc::new(AtomicBool::new(false)),
            early_rejections: Default::default(),
        })
    }

    /// The URL requests go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The request body of one call.
    pub fn body(
        &self,
        messages: &[Msg],
        temperature: f64,
        max_tokens: usize,
        extra: &Value,
    ) -> Value {
        let mut body = json!({"model": self.model, "messages": messages, "n": 1});
        body[self.max_tokens_field.as_str()] = max_tokens.into();
        if self.send_temperature {
            body["temperature"] = temperature.into();
        }
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        body
    }

    /// The wait before retry number `retry` (0 for the first): the server's `after`, else
    /// openai-python's jittered exponential backoff; both at most [`Self::max_delay`].
    pub fn delay(&self, retry: usize, after: Option<Duration>) -> Duration {
        use rand::Rng;
        if let Some(after) = after {
            return after.min(self.max_delay);
        }
        let exp = self
            .backoff
            .saturating_mul(1u32 << retry.min(20))
            .min(self.max_delay);
        exp.mul_f64(1.0 - 0.25 * rand::rng().random::<f64>())
    }

    async fn once(&self, body: &Value) -> Result<String, Failure> {
        let mut req = self.http.post(&self.url).timeout(self.timeout).json(body);
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let transport = |e: reqwest::Error| Failure::Retry {
            msg: describe(&e),
            after: None,
            timeout: e.is_timeout(),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let after = retry_after(resp.headers());
        // The text first: an error page need not be JSON (a proxy's HTML 502).
        let text = resp.text().await.map_err(transport)?;
        if !status.is_success() {
            let msg = format!("HTTP {status}: {}", error_message(&text));
            let code = status.as_u16();
            return Err(match code {
                408 | 409 | 429 | 500.. => Failure::Retry {
                    msg,
                    after,
                    timeout: false,
                },
                400 | 413 | 422 => Failure::Rejected { msg, http: true },
                // 401/403: the key; 404: the model or the URL; 402: credit; any other:
                // the endpoint. None gets better with the next request.
                _ => Failure::Fatal(msg),
            });
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            retry(format!(
                "HTTP {status}: the reply is not JSON ({e}): {}",
                error_message(&text)
            ))
        })?;
        reply_text(&v)
    }

    /// Retries transient failures with backoff; see [`ChatError`].
    pub async fn chat(
        &self,
        messages: &[Msg],
        temperature: f64,
        max_tokens: usize,
    ) -> Result<String, ChatError> {
        self.chat_with(messages, temperature, max_tokens, &Value::Null)
            .await
    }

    /// [`Self::chat`] with `extra`'s fields added to the request body (e.g. vLLM's
    /// `structured_outputs`).
    pub async fn chat_with(
        &self,
        messages: &[Msg],
        temperature: f64,
        max_tokens: usize,
        extra: &Value,
    ) -> Result<String, ChatError> {
        let body = self.body(messages, temperature, max_tokens, extra);
        let (mut attempt, mut timeouts) = (0usize, 0usize);
        loop {
            attempt += 1;
            match self.once(&body).await {
                Ok(t) => {
                    self.succeeded.store(true, Ordering::Relaxed);
                    return Ok(t);
                }
                Err(Failure::Fatal(m)) => {
                    return Err(ChatError::Fatal(format!("{}: {m}", self.url)))
                }
                Err(Failure::Rejected { msg, http }) => {
                    // A conversation too long for the model's context is this request's
                    // fault, not the requests' shape: with several in flight such refusals
                    // come back before the first (slow) success and must not stop the run.
                    let too_long = {
                        let m = msg.to_lowercase();
                        m.contains("context length") || m.contains("context_length")
                    };
                    if http
                        && !too_long
                        && !self.succeeded.load(Ordering::Relaxed)
                        && self.early_rejections.fetch_add(1, Ordering::Relaxed) + 1
                            >= EARLY_REJECTIONS
                    {
                        return Err(ChatError::Fatal(format!(
                            "{}: {msg} (the first {EARLY_REJECTIONS} requests were rejected: \
                             if it is the request's shape, e.g. a reasoning model, see \
                             --max-tokens-field and --no-temperature)",
                            self.url
                        )));
                    }
                    return Err(ChatError::Rejected(format!("{}: {msg}", self.url)));
                }
                Err(Failure::Retry {
                    msg,
                    after,
                    timeout,
                }) => {
                    tracing::warn!("{} attempt {attempt}: {msg}", self.url);
                    timeouts += usize::from(timeout);
                    // A request that timed out once is retried once: the next would most
                    // likely take as long, for `timeout` again.
                    if attempt > self.retries || timeouts > 1 {
                        return Err(ChatError::Transient(format!(
                            "{}: {msg} (gave up after {attempt} attempts)",
                            self.url
                        )));
                    }
                    tokio::time::sleep(self.delay(attempt - 1, after)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_urls() {
        for (base, url) in [
            (
                "http://127.0.0.1:8000",
                "http://127.0.0.1:8000/v1/chat/completions",
            ),
            (
                "http://127.0.0.1:8000/",
                "http://127.0.0.1:8000/v1/chat/completions",
            ),
            (
                "http://127.0.0.1:8000/v1",
                "http://127.0.0.1:8000/v1/chat/completions",
            ),
            (
                "http://127.0.0.1:8000/v1/",
                "http://127.0.0.1:8000/v1/chat/completions",
            ),
            (
                "https://api.openai.com",
                "https://api.openai.com/v1/chat/completions",
            ),
            (
                "https://generativelanguage.googleapis.com/v1beta/openai/",
                "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
            ),
            (
                "https://x.example/openai/deployments/d?api-version=2024-10-21",
                "https://x.example/openai/deployments/d/chat/completions?api-version=2024-10-21",
            ),
            (
                "http://h/v1/chat/completions",
                "http://h/v1/chat/completions",
            ),
        ] {
            assert_eq!(chat_url(base).unwrap(), url, "{base}");
        }
        for bad in ["not a url", "localhost:8000", "127.0.0.1:8000"] {
            assert!(chat_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_messages_from_any_body() {
        assert_eq!(
            error_message(r#"{"error": {"message": "bad key"}}"#),
            "bad key"
        );
        assert_eq!(
            error_message(r#"{"message": "too long", "code": 400}"#),
            "too long"
        );
        assert_eq!(error_message(r#"{"detail": "Not Found"}"#), "Not Found");
        assert_eq!(
            error_message(r#"{"detail": [{"msg": "field required"}]}"#),
            r#"[{"msg":"field required"}]"#
        );
        assert_eq!(error_message(r#"{"error": "overloaded"}"#), "overloaded");
        let html = format!(
            "<html><body>502 Bad Gateway{}</body></html>",
            "x".repeat(600)
        );
        let m = error_message(&html);
        assert!(m.starts_with("<html><body>502 Bad Gateway"));
        assert_eq!(m.chars().count(), 500);
        assert_eq!(error_message(""), "(empty body)");
    }

    #[test]
    fn backoff_doubles_jittered_up_to_the_cap_and_retry_after_wins() {
        let mut c = ChatClient::new("http://h", "m", None).unwrap();
        c.backoff = Duration::from_millis(100);
        c.max_delay = Duration::from_millis(1000);
        for (retry, full) in [
            (0, 100),
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1000),
            (60, 1000),
        ] {
            for _ in 0..20 {
                let d = c.delay(retry, None).as_secs_f64() * 1000.0;
                assert!(
                    d <= full as f64 + 1e-6 && d >= 0.75 * full as f64 - 1e-6,
                    "retry {retry}: {d} ms"
                );
            }
        }
        assert_eq!(
            c.delay(0, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
        assert_eq!(c.delay(0, Some(Duration::from_secs(30))), c.max_delay);
        // The defaults: eight attempts, waits up to a minute.
        let d = ChatClient::new("http://h", "m", None).unwrap();
        assert_eq!((d.retries, d.max_delay), (7, Duration::from_secs(60)));
    }

    #[test]
    fn the_body_names_the_budget_field_and_may_leave_out_temperature() {
        let mut c = ChatClient::new("http://h", "m", None).unwrap();
        let msgs = [Msg::new("user", "hi")];
        let b = c.body(&msgs, 0.7, 100, &Value::Null);
        assert_eq!(
            (&b["max_tokens"], &b["temperature"]),
            (&json!(100), &json!(0.7))
        );
        assert!(b.get("max_completion_tokens").is_none());
        c.max_tokens_field = "max_completion_tokens".parse().unwrap();
        c.send_temperature = false;
        let b = c.body(&msgs, 0.7, 100, &json!({"extra": 1}));
        assert_eq!(b["max_completion_tokens"], 100);
        assert!(b.get("max_tokens").is_none() && b.get("temperature").is_none());
        assert_eq!(b["extra"], 1);
        assert!("max_tokenz".parse::<MaxTokensField>().is_err());
    }

    #[test]
    fn reply_texts() {
        let text = |v: Value| reply_text(&json!({"choices": [v]}));
        let ok = |v: Value| text(v).ok().unwrap();
        assert_eq!(ok(json!({"message": {"content": "hi"}})), "hi");
        assert_eq!(
            ok(
                json!({"message": {"content": [{"type": "text", "text": "a"},
                {"type": "image_url", "image_url": {}}, {"type": "text", "text": "b"}]}})
            ),
            "ab"
        );
        assert_eq!(
            ok(json!({"message": {"content": null, "refusal": "I can't help with that."}})),
            "I can't help with that."
        );
        assert!(matches!(
            text(json!({"message": {"content": null}, "finish_reason": "length"})),
            Err(Failure::Rejected { http: false, .. })
        ));
        // A reply without a message is malformed: retried.
        assert!(matches!(
            reply_text(&json!({"choices": []})),
            Err(Failure::Retry { .. })
        ));
    }
}
