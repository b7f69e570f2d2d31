//! `POST /v1/responses`: runs the translated request (`responses`) on the chat path and
//! writes the `response` object whole, or as its typed server-sent events.

use super::{AppResult, RequestBody};
use crate::chat::{self, Submitted};
use crate::error::ApiError;
use crate::format::chat_logprobs;
use crate::openai::parse_body;
use crate::responses::{ResponseWriter, ResponsesBody, TextLogprobs};
use crate::run::{next_step, Step, Submission, Timing};
use crate::state::AppState;
use crate::tools::OutputReader;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use camelid_model::decode::sampling::TokenLogprob;
use camelid_model::text::tokenizer::Tokenizer;
use futures::StreamExt;
use serde_json::Value;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

pub async fn responses(
    State(state): State<Arc<AppState>>,
    RequestBody(raw): RequestBody,
) -> AppResult {
    let permit = state.permit()?;
    let mut body: ResponsesBody = parse_body(&raw)?;
    drop(raw);
    state.fill_model_name(&mut body.model)?;
    let (req, sampling) = body.chat_request()?;
    let Submitted {
        sub,
        model,
        tools,
        reasoning,
        ..
    } = chat::submit(&state, permit, &req, &sampling)
        .await
        .map_err(own_names)?;
    let mut answer = Answer {
        writer: ResponseWriter::new(&body, &body.model),
        reader: OutputReader::new(reasoning, tools.map(|t| t.stream())),
        timing: Timing::new(1),
        spelling: body
            .wants_logprobs()
            .then(|| model.engine.shared_tokenizer()),
        logprobs: TextLogprobs::default(),
        sub,
    };
    let start = answer.writer.start();
    if body.stream != Some(true) {
        while let Some(events) = answer.next_events().await {
            events?;
        }
        return Ok(axum::Json(answer.writer.response().clone()).into_response());
    }
    let st = (answer, VecDeque::from(start), false);
    let s = futures::stream::unfold(st, |(mut answer, mut queue, mut done)| async move {
        loop {
            if let Some(v) = queue.pop_front() {
                let kind = v["type"].as_str().unwrap_or("message").to_string();
                let e = SseEvent::default().event(kind).data(v.to_string());
                return Some((Ok::<_, Infallible>(e), (answer, queue, done)));
            }
            if done {
                return None;
            }
            match answer.next_events().await {
                None => done = true,
                Some(Ok(events)) => queue.extend(events),
                Some(Err(e)) => {
                    queue.extend(answer.writer.fail(&e));
                    done = true;
                }
            }
        }
    });
    Ok(Sse::new(s.boxed())
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Errors of the chat path in this API's names, where they map one to one: the output
/// limit, the structured-output format, a tool's fields, the conversation as a whole.
fn own_names(mut e: ApiError) -> ApiError {
    let Some(p) = e.param.clone() else {
        return e;
    };
    let renamed = if p == "max_completion_tokens" {
        Some("max_output_tokens".to_string())
    } else if let Some(rest) = p.strip_prefix("response_format.json_schema") {
        Some(format!("text.format{rest}"))
    } else if p == "response_format" {
        Some("text.format".to_string())
    } else if let Some((tool, rest)) = p
        .strip_prefix("tools[")
        .and_then(|r| r.split_once("].function"))
    {
        Some(format!("tools[{tool}]{rest}"))
    } else if p == "messages" {
        Some("input".to_string())
    } else {
        None
    };
    if let Some(new) = renamed {
        e.message = e.message.replace(&format!("`{p}`"), &format!("`{new}`"));
        e.message = e
            .message
            .replace("max_completion_tokens", "max_output_tokens");
        e.param = Some(new);
    }
    e
}

/// One response in the making: the engine's events through the thinking split and the
/// call parser into the writer.
struct Answer {
    writer: ResponseWriter,
    reader: OutputReader,
    timing: Timing,
    /// The tokenizer that spells the tokens of the log-probabilities, when they were asked
    /// for (`include`).
    spelling: Option<Arc<Tokenizer>>,
    /// Which text each token's log-probability entry goes with.
    logprobs: TextLogprobs,
    /// Owned here: dropping the answer (a client gone) cancels the generation.
    sub: Submission,
}

impl Answer {
    /// The events the next engine event makes; `None` once the request is done.
    async fn next_events(&mut self) -> Option<Result<Vec<Value>, ApiError>> {
        Some(
            next_step(&mut self.sub, &mut self.timing)
                .await?
                .map(|step| match step {
                    Step::Token { text, logprob } => self.piece(&text, logprob.as_ref(), false),
                    Step::Finished { reason, usage } => {
                        let mut out = self.piece("", None, true);
                        let thinking = self.reader.thinking_tokens().unwrap_or(0);
                        out.extend(self.writer.finish(reason, &usage, thinking));
                        out
                    }
                }),
        )
    }

    /// A piece of output (or, at the end, what the split and the parser held back), with
    /// its token's log-probabilities when they were asked for.
    fn piece(&mut self, text: &str, logprob: Option<&TokenLogprob>, end: bool) -> Vec<Value> {
        let thinking_before = self.reader.thinking_tokens();
        let p = if end {
            self.reader.finish()
        } else {
            self.reader.push(text)
        };
        let thinking = self.reader.thinking_tokens() != thinking_before;
        let entry = match (&self.spelling, logprob) {
            (Some(tok), Some(l)) => {
                match chat_logprobs(tok, std::slice::from_ref(l)).get("content") {
                    Some(Value::Array(e)) => e.first().cloned(),
                    _ => None,
                }
            }
            _ => None,
        };
        let logprobs = self.logprobs.route(&p, entry, thinking, end);
        let mut out = self.writer.thought(&p.thought);
        out.extend(self.writer.text(&p.text, logprobs));
        for d in &p.deltas {
            out.extend(self.writer.call_delta(d));
        }
        out
    }
}
