//! `POST /v1/embeddings`: OpenAI's embeddings (what RAG stacks and the openai SDK's
//! `embeddings.create` send), run by `embeddings`.

use super::{AppResult, RequestBody};
use crate::embeddings::{self, base64_f32, EmbeddingRequest, Overlong};
use crate::error::ApiError;
use crate::openai::parse_body;
use crate::state::AppState;
use axum::extract::State;
use axum::response::IntoResponse;
use serde::Serialize;
use std::sync::Arc;

/// The response, serialized with the vectors' own f32 values (`serde_json::Value` would widen
/// each to f64 and write ~17 digits where 9 say the same f32).
#[derive(Serialize)]
struct Response<'a> {
    object: &'static str,
    data: Vec<Item>,
    model: &'a str,
    usage: Usage,
}

#[derive(Serialize)]
struct Item {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    RequestBody(body): RequestBody,
) -> AppResult {
    let permit = state.permit()?;
    let req: EmbeddingRequest = parse_body(&body)?;
    drop(body);
    let model = state.model(Some(&req.model))?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid_param(
                "encoding_format",
                format!("`encoding_format` must be `float` or `base64`, got {other:?}"),
            ))
        }
    };
    let width = model.details.embedding_length;
    if let Some(d) = req.dimensions.filter(|&d| d != width as u64) {
        return Err(ApiError::invalid_param(
            "dimensions",
            format!(
                "`dimensions` {d}: `{}` makes vectors of {width} dimensions and is not trained to be cut shorter",
                model.name
            ),
        ));
    }
    let out = embeddings::embed(
        &state,
        permit,
        &model,
        req.input,
        "input",
        Overlong::Refuse,
        req.normalize.unwrap_or(true),
    )
    .await?;
    let data = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| Item {
            object: "embedding",
            index,
            embedding: if base64 {
                Vector::Base64(base64_f32(&v))
            } else {
                Vector::Float(v)
            },
        })
        .collect();
    Ok(axum::Json(Response {
        object: "list",
        data,
        model: &model.name,
        usage: Usage {
            prompt_tokens: out.prompt_tokens,
            total_tokens: out.prompt_tokens,
        },
    })
    .into_response())
}
