//! The pages' routes over HTTP, on a server still loading its models and requiring an API
//! key: the pages and every asset they name are served, open, with the right content types
//! and a strict Content-Security-Policy; the API behind them still wants the key.

mod common;
use camelid_server::{AppState, ServerConfig};
use common::{runtime, serve};
use std::sync::Arc;

struct Got {
    status: u16,
    content_type: String,
    csp: String,
    body: String,
}

fn get(base: &str, path: &str) -> Got {
    runtime().block_on(async {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        Got {
            status: r.status().as_u16(),
            content_type: header("content-type"),
            csp: header("content-security-policy"),
            body: r.text().await.unwrap(),
        }
    })
}

/// A server with an API key whose models are still loading (none set).
fn start() -> String {
    serve(Arc::new(AppState::new(ServerConfig {
        api_keys: vec!["sk-pages".into()],
        ..Default::default()
    })))
    .base
}

/// The `assets/...` paths a page names in `src="..."` and `href="..."`.
fn assets_named(html: &str) -> Vec<String> {
    let mut out = vec![];
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            let url = part.split('"').next().unwrap();
            if url.starts_with("assets/") {
                out.push(url.to_string());
            }
        }
    }
    out
}

/// Whether some tag has an `on…=` attribute.
fn has_inline_handler(html: &str) -> bool {
    html.split('<').skip(1).any(|tag| {
        let tag = tag.split('>').next().unwrap();
        tag.split_whitespace().skip(1).any(|attr| {
            attr.starts_with("on")
                && attr
                    .split('=')
                    .next()
                    .unwrap()
                    .chars()
                    .all(|c| c.is_ascii_alphabetic())
                && attr.contains('=')
        })
    })
}

#[test]
fn pages_and_assets_are_served_open_with_a_strict_csp() {
    let base = start();
    let mut named = vec![];
    for page in ["/", "/arena", "/leaderboard"] {
        let g = get(&base, page);
        assert_eq!(
            g.status, 200,
            "{page} is open while loading and without a key"
        );
        assert_eq!(g.content_type, "text/html; charset=utf-8", "{page}");
        assert!(
            g.csp.contains("script-src 'self'")
                && g.csp.contains("default-src 'none'")
                && !g.csp.contains("unsafe"),
            "{page}: CSP {:?}",
            g.csp
        );
        assert!(
            !g.body.contains("<script>") && !has_inline_handler(&g.body),
            "{page}: no inline script or handlers"
        );
        let assets = assets_named(&g.body);
        assert!(
            assets.iter().any(|a| a.ends_with(".js")) && assets.contains(&"assets/app.css".into()),
            "{page} names its script and style: {assets:?}"
        );
        named.extend(assets);
    }
    // A trailing slash is sent to the page (its relative API paths would miss under it).
    for page in ["/arena", "/leaderboard"] {
        let g = get(&base, &format!("{page}/"));
        assert_eq!((g.status, g.body), (200, get(&base, page).body), "{page}/");
    }
    named.sort();
    named.dedup();
    for asset in &named {
        let g = get(&base, &format!("/{asset}"));
        assert_eq!(g.status, 200, "{asset}");
        let want = match asset.rsplit('.').next().unwrap() {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "svg" => "image/svg+xml",
            other => panic!("{asset}: unexpected kind {other}"),
        };
        assert_eq!(g.content_type, want, "{asset}");
        assert!(!g.body.is_empty(), "{asset}");
    }
    assert!(
        named.iter().any(|a| a.contains("vendor/marked"))
            && named.iter().any(|a| a.contains("vendor/purify")),
        "the Markdown renderer and sanitizer are served: {named:?}"
    );
    for missing in [
        "/assets/nope.js",
        "/assets/..%2FCargo.toml",
        "/assets/vendor/README.md",
    ] {
        let g = get(&base, missing);
        assert_eq!(g.status, 404, "{missing}");
        let err: serde_json::Value = serde_json::from_str(&g.body).unwrap();
        assert!(err["error"]["message"].is_string(), "{missing}: {err}");
    }
    // The API behind the pages still wants the key; the arena's routes are the visitors'.
    assert_eq!(get(&base, "/v1/models").status, 401);
    assert_eq!(get(&base, "/arena/leaderboard").status, 200);
}
