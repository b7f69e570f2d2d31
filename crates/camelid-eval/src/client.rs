//! A minimal OpenAI chat-completions client: one call, retried with backoff.

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    url: String,
    api_key: Option<String>,
    pub model: String,
    pub retries: usize,
    pub backoff: Duration,
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

impl ChatClient {
    /// `endpoint` is the base URL (`http://host:8000` or `http://host:8000/v1`).
    pub fn new(endpoint: &str, model: &str, api_key: Option<String>) -> Result<Self> {
        let base = endpoint.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()?,
            url: format!("{base}/v1/chat/completions"),
            api_key,
            model: model.to_string(),
            retries: 3,
            backoff: Duration::from_secs(2),
        })
    }

    async fn once(
        &self,
        messages: &[Msg],
        temperature: f64,
        max_tokens: usize,
        extra: &Value,
    ) -> Result<String> {
        let mut body = json!({"model": self.model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens, "n": 1});
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        let mut req = self.http.post(&self.url).json(&body);
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .map_err(|e| anyhow!("HTTP {status}: unreadable body: {e}"))?;
        if !status.is_success() {
            return Err(anyhow!(
                "HTTP {status}: {}",
                v["error"]["message"].as_str().unwrap_or("no message")
            ));
        }
        v["choices"][0]["message"]["content"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| anyhow!("response has no choices[0].message.content"))
    }

    /// Retries transport errors and error statuses with exponential backoff.
    pub async fn chat(
        &self,
        messages: &[Msg],
        temperature: f64,
        max_tokens: usize,
    ) -> Result<String> {
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
    ) -> Result<String> {
        let mut delay = self.backoff;
        let mut last = None;
        for attempt in 0..=self.retries {
            match self.once(messages, temperature, max_tokens, extra).await {
                Ok(t) => return Ok(t),
                Err(e) => {
                    tracing::warn!("{} attempt {}: {e}", self.url, attempt + 1);
                    last = Some(e);
                    if attempt < self.retries {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no attempt made")))
    }
}
