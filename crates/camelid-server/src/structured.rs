//! Structured output requests: OpenAI's `response_format` (`json_object`, `json_schema`) and
//! vLLM's `structured_outputs` (`json`, `regex`, `choice`, `grammar`) with the older
//! `guided_*` names → one grammar, compiled for the model off the async workers. A bad
//! schema, regex or grammar is a 400 naming the field and saying why.

use crate::error::ApiError;
use crate::openai::SamplingFields;
use crate::run::blocking;
use crate::state::{ModelEntry, Permit};
use camelid_model::{Constraint, TopLevelGrammar};
use serde_json::{json, Value};
use std::sync::Arc;

/// What a request asked for: the field that said it (for errors) and the grammar.
pub struct Requested {
    pub field: String,
    pub grammar: TopLevelGrammar,
    /// The JSON schema (with its layout) where the constraint is one: what a grammar of
    /// answer-or-calls embeds (`tool_choice: auto` beside it).
    pub schema: Option<Value>,
}

impl Requested {
    fn json(field: &str, schema: Value) -> Self {
        Self {
            field: field.to_string(),
            grammar: TopLevelGrammar::from_json_schema(schema.clone()),
            schema: Some(schema),
        }
    }
}

fn null(v: Option<&Value>) -> bool {
    matches!(v, None | Some(Value::Null))
}

/// Compact JSON with a space after `,` and `:` (the text models write) unless the schema
/// sets its own layout: no run of free whitespace for a small model to loop in. Keywords
/// llguidance cannot enforce (`uniqueItems`, `not`, unknown `format`s: what Pydantic and Zod
/// write) are left unchecked, as OpenAI takes any schema outside strict mode (and as tool
/// parameters are read), except under `strict: true`, whose schema must be one it keeps.
fn json_layout(mut schema: Value, strict: bool) -> Value {
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance").or_insert_with(|| {
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": ",
                   "lenient": !strict})
        });
    }
    schema
}

/// A JSON schema given as an object (or a boolean), or as a string holding one (vLLM's).
fn schema_value(field: &str, v: &Value) -> Result<Value, ApiError> {
    match v {
        Value::Object(_) | Value::Bool(_) => Ok(v.clone()),
        Value::String(s) => serde_json::from_str(s).map_err(|e| {
            ApiError::invalid_param(field, format!("`{field}` is not valid JSON: {e}"))
        }),
        _ => Err(ApiError::invalid_param(
            field,
            format!("`{field}` must be a JSON schema (an object)"),
        )),
    }
}

fn string<'a>(field: &str, v: &'a Value, what: &str) -> Result<&'a str, ApiError> {
    v.as_str()
        .ok_or_else(|| ApiError::invalid_param(field, format!("`{field}` must be {what}")))
}

/// One of the given strings exactly.
fn choice_grammar(field: &str, v: &Value) -> Result<TopLevelGrammar, ApiError> {
    let bad = || {
        ApiError::invalid_param(
            field,
            format!("`{field}` must be a non-empty list of strings"),
        )
    };
    let items = v.as_array().filter(|a| !a.is_empty()).ok_or_else(bad)?;
    let mut alts = Vec::with_capacity(items.len());
    for it in items {
        let s = it.as_str().ok_or_else(bad)?;
        if s.is_empty() {
            return Err(ApiError::invalid_param(
                field,
                format!("`{field}` must not contain an empty string"),
            ));
        }
        // Lark string literals are JSON strings.
        alts.push(Value::String(s.to_string()).to_string());
    }
    // One terminal (a single lexeme, matched as one regex), not a rule of alternatives:
    // llguidance's parser keeps each live alternative as an item, at most 2 000 a row, so a
    // list of more choices failed once generation began.
    Ok(TopLevelGrammar::from_lark(format!(
        "start: CHOICE\nCHOICE: {}",
        alts.join(" | ")
    )))
}

/// vLLM's `structured_outputs` object (exactly one constraint in it).
fn structured_outputs(v: &Value) -> Result<Requested, ApiError> {
    const F: &str = "structured_outputs";
    let Some(o) = v.as_object() else {
        return Err(ApiError::invalid_param(
            F,
            "`structured_outputs` must be an object",
        ));
    };
    let given: Vec<&str> = ["json", "regex", "choice", "grammar", "json_object"]
        .into_iter()
        .filter(|k| {
            // `"json_object": false` asks for nothing, like an absent key.
            let off = *k == "json_object" && o.get(*k) == Some(&Value::Bool(false));
            !null(o.get(*k)) && !off
        })
        .collect();
    let key = match given.as_slice() {
        [k] => *k,
        [] => return Err(ApiError::invalid_param(
            F,
            "`structured_outputs` needs one of `json`, `regex`, `choice`, `grammar`, `json_object`",
        )),
        many => {
            return Err(ApiError::invalid_param(
                F,
                format!(
                    "`structured_outputs` takes one constraint; got {}",
                    many.join(", ")
                ),
            ))
        }
    };
    guided(&format!("{F}.{key}"), key, &o[key])
}

/// One constraint by its kind (`json`, `regex`, `choice`, `grammar`, `json_object`).
fn guided(field: &str, kind: &str, v: &Value) -> Result<Requested, ApiError> {
    let grammar = match kind {
        "json" => {
            return Ok(Requested::json(
                field,
                json_layout(schema_value(field, v)?, false),
            ))
        }
        "json_object" => {
            if v != &Value::Bool(true) {
                return Err(ApiError::invalid_param(
                    field,
                    format!("`{field}` must be true"),
                ));
            }
            return Ok(Requested::json(
                field,
                json_layout(json!({"type": "object"}), false),
            ));
        }
        "regex" => TopLevelGrammar::from_regex(string(field, v, "a regular expression")?),
        "choice" => choice_grammar(field, v)?,
        "grammar" => TopLevelGrammar::from_lark(string(field, v, "a Lark grammar")?.to_string()),
        _ => unreachable!("kinds are listed by the callers"),
    };
    Ok(Requested {
        field: field.to_string(),
        grammar,
        schema: None,
    })
}

/// OpenAI's `response_format`.
fn response_format(v: &Value) -> Result<Option<Requested>, ApiError> {
    const F: &str = "response_format";
    let kind = v.get("type").and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid_param(
            F,
            "`response_format` must be an object with a `type` (text, json_object, json_schema)",
        )
    })?;
    let schema = match kind {
        "text" => return Ok(None),
        "json_object" => json_layout(json!({"type": "object"}), false),
        "json_schema" => {
            let js = v.get("json_schema").filter(|j| j.is_object()).ok_or_else(|| {
                ApiError::invalid_param(
                    "response_format.json_schema",
                    "`response_format.json_schema` must be an object with `name` and `schema`",
                )
            })?;
            if !js.get("name").is_some_and(Value::is_string) {
                return Err(ApiError::invalid_param(
                    "response_format.json_schema.name",
                    "`response_format.json_schema.name` must be a string",
                ));
            }
            let field = "response_format.json_schema.schema";
            let schema = match js.get("schema") {
                None | Some(Value::Null) => json!({}),
                Some(s) => schema_value(field, s)?,
            };
            let strict = js.get("strict") == Some(&Value::Bool(true));
            return Ok(Some(Requested::json(field, json_layout(schema, strict))));
        }
        other => {
            return Err(ApiError::invalid_param(
                "response_format.type",
                format!("Unknown `response_format.type` {other:?}; expected text, json_object or json_schema"),
            ))
        }
    };
    Ok(Some(Requested::json(F, schema)))
}

/// The constraint a request asks for, if any; at most one of the fields may ask.
pub fn requested(f: &SamplingFields) -> Result<Option<Requested>, ApiError> {
    let mut found: Vec<Requested> = vec![];
    if let Some(v) = f.response_format.as_ref().filter(|v| !v.is_null()) {
        found.extend(response_format(v)?);
    }
    if let Some(v) = f.structured_outputs.as_ref().filter(|v| !v.is_null()) {
        found.push(structured_outputs(v)?);
    }
    for (name, kind, v) in [
        ("guided_json", "json", &f.guided_json),
        ("guided_regex", "regex", &f.guided_regex),
        ("guided_choice", "choice", &f.guided_choice),
        ("guided_grammar", "grammar", &f.guided_grammar),
    ] {
        if let Some(v) = v.as_ref().filter(|v| !v.is_null()) {
            found.push(guided(name, kind, v)?);
        }
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|r| r.field.as_str()).collect();
        return Err(ApiError::invalid_param(
            &found[1].field,
            format!(
                "Only one output constraint per request; got {}",
                names.join(", ")
            ),
        ));
    }
    Ok(found.pop())
}

/// Compiles what the request asked for (on the blocking pool, under the request's
/// permit: a large schema takes a while). A grammar the compiler rejects is a 400 naming
/// its field.
pub async fn compile(
    permit: &Permit,
    model: &Arc<ModelEntry>,
    f: &SamplingFields,
) -> Result<Option<Constraint>, ApiError> {
    match requested(f)? {
        Some(req) => compile_requested(permit, model, req).await.map(Some),
        None => Ok(None),
    }
}

/// Compiles one constraint [`requested`] gave.
pub async fn compile_requested(
    permit: &Permit,
    model: &Arc<ModelEntry>,
    req: Requested,
) -> Result<Constraint, ApiError> {
    let compiler = model.grammar().clone();
    blocking(permit, move || {
        compiler.compile(req.grammar).map_err(|why| {
            ApiError::invalid_param(&req.field, format!("Invalid `{}`: {why}", req.field))
        })
    })
    .await
}
