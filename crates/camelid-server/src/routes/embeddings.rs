//! `POST /v1/embeddings`: OpenAI's embeddings (what RAG stacks and the openai SDK's
//! `embeddings.create` send), run by `embeddings`.

use super::{AppResult, RequestBody};
use crate::embeddings::{self, base64_f32, EmbeddingRequest, Overlong};
use crate::error::ApiError;
use crate::openai::parse_body;
use crate::state::AppState;
use axum::extract::State;
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;

/// One `data` entry, serialized with the vector's own f32 values (`serde_json::Value` would
/// widen each to f64 and write ~17 digits where 9 say the same f32).
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
    let prepared = embeddings::prepare(
        &state,
        &permit,
        &model,
        req.input,
        "input",
        Overlong::Refuse,
    )
    .await?;
    let tail = json!({
        "model": model.name,
        "usage": {"prompt_tokens": prepared.prompt_tokens, "total_tokens": prepared.prompt_tokens},
    });
    let normalize = req.normalize.unwrap_or(true);
    let vectors = embeddings::run(state.clone(), permit, model, prepared, normalize);
    let item = move |index, v: Vec<f32>| {
        let embedding = if base64 {
            Vector::Base64(base64_f32(&v))
        } else {
            Vector::Float(v)
        };
        let item = Item {
            object: "embedding",
            index,
            embedding,
        };
        serde_json::to_vec(&item).expect("a vector serializes")
    };
    // `{"object":"list","data":[…],"model":…,"usage":…}`, the tail's fields after the data.
    let tail = move || {
        let t = tail.to_string();
        format!("],{}", &t[1..])
    };
    embeddings::json_response(vectors, r#"{"object":"list","data":["#.into(), item, tail).await
}
