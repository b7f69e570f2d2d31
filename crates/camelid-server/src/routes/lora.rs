//! `POST /v1/load_lora_adapter` and `POST /v1/unload_lora_adapter`: LoRA adapters added to
//! and removed from a running server, as vLLM has them (its
//! `VLLM_ALLOW_RUNTIME_LORA_UPDATING`; here `--allow-runtime-lora`, off by default, since a
//! caller names files on the server's disk). Bodies, messages and plain-text answers are
//! vLLM's, so its clients and scripts work unchanged. An adapter added here is what
//! `--lora-modules` would have served: the base's engine under the adapter, listed after
//! its base; requests already running under an adapter being removed finish under it.

use super::{AppResult, RequestBody};
use crate::error::ApiError;
use crate::openai;
use crate::run::blocking;
use crate::state::{AppState, ModelEntry};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadRequest {
    #[serde(default)]
    lora_name: String,
    #[serde(default)]
    lora_path: String,
    /// Which served model the adapter is for; may be left out when one is served.
    #[serde(default)]
    base_model_name: Option<String>,
    /// Replace an adapter of the same name (vLLM's flag) instead of refusing.
    #[serde(default)]
    load_inplace: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnloadRequest {
    #[serde(default)]
    lora_name: String,
    /// vLLM's numeric id; camelid names adapters only.
    #[serde(default)]
    lora_int_id: Option<i64>,
}

/// 404 on a server started without `--allow-runtime-lora` (vLLM does not route these then).
fn check_allowed(s: &AppState) -> Result<(), ApiError> {
    if s.config.runtime_lora {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "Loading LoRA adapters at run time is off: start the server with --allow-runtime-lora.",
    ))
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("The lora adapter '{name}' cannot be found."),
    )
}

/// Whether `name` is taken by a served model, alias or adapter (adapters other than
/// `except`).
fn name_taken(models: &[Arc<ModelEntry>], name: &str, except: Option<&str>) -> bool {
    models.iter().any(|m| {
        let adapter_replaced = m.engine.lora().is_some() && except == Some(m.name.as_str());
        !adapter_replaced && (m.name == name || m.aliases.iter().any(|a| a == name))
    })
}

pub async fn load(State(s): State<Arc<AppState>>, RequestBody(body): RequestBody) -> AppResult {
    check_allowed(&s)?;
    let permit = s.permit()?;
    let req: LoadRequest = openai::parse_body(&body)?;
    if req.lora_name.is_empty() || req.lora_path.is_empty() {
        return Err(ApiError::bad_request(
            "Both 'lora_name' and 'lora_path' must be provided.",
        ));
    }
    let name = req.lora_name;
    let models = s.models().ok_or_else(AppState::loading_error)?;
    let except = req.load_inplace.then_some(name.as_str());
    if name_taken(&models, &name, except) {
        return Err(ApiError::invalid_param(
            "lora_name",
            format!("The lora adapter '{name}' has already been loaded."),
        ));
    }
    let base = s
        .model(req.base_model_name.as_deref())
        .map_err(|e| match &req.base_model_name {
            None if e.status == StatusCode::BAD_REQUEST => ApiError::invalid_param(
                "base_model_name",
                "`base_model_name` is required when several models are served",
            ),
            _ => ApiError {
                param: Some("base_model_name".into()),
                ..e
            },
        })?;
    if base.engine.lora().is_some() {
        return Err(ApiError::invalid_param(
            "base_model_name",
            format!("`{}` is itself a LoRA adapter.", base.name),
        ));
    }
    // Reading the files (or fetching a hub id) blocks: off the async threads, under the
    // request's slot.
    let (engine, spec) = (base.engine.clone(), req.lora_path.clone());
    let adapter_name = name.clone();
    let adapter = blocking(&permit, move || {
        let bad = |e: camelid_model::Error| ApiError::invalid_param("lora_path", e.to_string());
        let path =
            camelid_model::load::lora::resolve(std::path::Path::new(&spec), None).map_err(bad)?;
        camelid_model::LoraAdapter::load(
            &adapter_name,
            &path,
            engine.model_config(),
            engine.device(),
        )
        .map_err(bad)
    })
    .await?;
    let rank = adapter.rank;
    let mut entry = base
        .adapted(Arc::new(adapter))
        .map_err(|e| ApiError::invalid_param("lora_path", e))?;
    // A replaced adapter is a new model to clients that key on the time (Ollama's digest).
    entry.created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // Checked again under the lock: another load of the same name may have won meanwhile.
    s.update_models(|models| {
        if name_taken(models, &name, except) {
            return Err(ApiError::invalid_param(
                "lora_name",
                format!("The lora adapter '{name}' has already been loaded."),
            ));
        }
        models.retain(|m| !(m.engine.lora().is_some() && m.name == name));
        // After its base and the base's other adapters, as `--lora-modules` lists them.
        let at = models
            .iter()
            .rposition(|m| m.engine.same_engine(&base.engine))
            .map_or(models.len(), |i| i + 1);
        models.insert(at, Arc::new(entry));
        Ok(())
    })?;
    tracing::info!(
        "{}: LoRA adapter {name} (rank {rank}) loaded from {}",
        base.name,
        req.lora_path
    );
    Ok(format!("Success: LoRA adapter '{name}' added successfully.").into_response())
}

pub async fn unload(State(s): State<Arc<AppState>>, RequestBody(body): RequestBody) -> AppResult {
    check_allowed(&s)?;
    let _permit = s.permit()?;
    let req: UnloadRequest = openai::parse_body(&body)?;
    if req.lora_name.is_empty() {
        return Err(ApiError::bad_request(match req.lora_int_id {
            Some(_) => "camelid names adapters only: give 'lora_name'.",
            None => "Either 'lora_name' or 'lora_int_id' needs to be provided.",
        }));
    }
    let name = req.lora_name;
    s.update_models(|models| {
        let Some(i) = models
            .iter()
            .position(|m| m.engine.lora().is_some() && m.name == name)
        else {
            return Err(not_found(&name));
        };
        let rest: Vec<String> = (models.iter().enumerate())
            .filter(|&(j, _)| j != i)
            .map(|(_, m)| m.name.clone())
            .collect();
        // The arena draws by its weights: a weighted model stays served.
        s.arena
            .check_weights(&rest)
            .map_err(|_| ApiError::bad_request(format!("--arena-weight names '{name}'.")))?;
        models.remove(i);
        Ok(())
    })?;
    tracing::info!("LoRA adapter {name} unloaded");
    Ok(format!("Success: LoRA adapter '{name}' removed successfully.").into_response())
}
