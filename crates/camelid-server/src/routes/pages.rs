//! The web pages, compiled into the binary from `assets/`: `/` (chat), `/arena`,
//! `/leaderboard`, and their scripts and styles under `/assets/`. They are open (no API key:
//! the pages ask the visitor for one when the API answers 401) and talk only to the public
//! API. Every page response carries a Content-Security-Policy that allows scripts from this
//! server only, so markup in a model's answer cannot run script even if escaping failed.

use crate::error::ApiError;
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// No inline script or style, nothing from elsewhere; `connect-src 'self'` for the API calls.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

macro_rules! asset {
    ($name:literal, $type:expr) => {
        (
            $name,
            $type,
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $name)).as_slice(),
        )
    };
}

/// Everything under `/assets/`: (path, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    asset!("app.css", CSS),
    asset!("common.js", JS),
    asset!("chat.js", JS),
    asset!("arena.js", JS),
    asset!("leaderboard.js", JS),
    asset!("icon.svg", SVG),
    asset!("vendor/marked.umd.js", JS),
    asset!("vendor/purify.min.js", JS),
];

const CHAT: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/chat.html"));
const ARENA: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/arena.html"));
const LEADERBOARD: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/leaderboard.html"
));

/// A page or asset with its type and the headers every page response has. `no-cache`: the
/// browser revalidates, so a new binary's pages are seen at once.
fn file(content_type: &'static str, bytes: &'static [u8]) -> Response {
    let mut r = bytes.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn asset(path: Result<Path<String>, PathRejection>) -> Response {
    // A path that is not UTF-8 is no asset (axum's own rejection is plain text).
    let path = path.map_or_else(|_| "(not UTF-8)".to_string(), |Path(p)| p);
    match ASSETS.iter().find(|(name, _, _)| *name == path) {
        Some(&(_, content_type, bytes)) => file(content_type, bytes),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("No asset {path:?}."),
        )
        .into_response(),
    }
}

/// The pages' routes, merged into the server's router outside the API-key layer.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { file(HTML, CHAT) }))
        .route("/arena", get(|| async { file(HTML, ARENA) }))
        .route("/leaderboard", get(|| async { file(HTML, LEADERBOARD) }))
        // A typed trailing slash: the page's API paths are relative to it, so it is sent to
        // the page's own address (relatively: behind a path prefix too) rather than served.
        .route("/arena/", get(|| async { Redirect::permanent("../arena") }))
        .route(
            "/leaderboard/",
            get(|| async { Redirect::permanent("../leaderboard") }),
        )
        .route("/assets/{*path}", get(asset))
}
