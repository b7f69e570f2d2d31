//! Which `Host` names a request may carry: the guard against DNS rebinding. A page of
//! `evil.example` can make its name resolve to 127.0.0.1 after it loads; the visitor's browser
//! then treats a server on the visitor's own machine as that page's own site, free to read
//! every answer and send any request (CORS and the JSON rule do not apply to a site's own
//! requests). Its requests still name `evil.example` in `Host`, so a server that listens
//! only on a loopback address (meant for this machine's clients) answers only the names this
//! machine goes by, as Ollama, Jupyter and Vite do; `--allowed-hosts` adds names (a proxy's).

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The `Host` names a server answers.
#[derive(Clone, Debug, Default)]
pub enum AllowedHosts {
    /// Any name (a server on a public address, or `--allowed-hosts '*'`).
    #[default]
    Any,
    /// Names of this machine (see [`is_local_name`]), IP addresses, and these names.
    Local(Vec<String>),
}

impl AllowedHosts {
    /// What a server listening on `listens_on_loopback` answers, given `--allowed-hosts`:
    /// `*` allows any name; a loopback server, or one given names, answers only this
    /// machine's names and the given ones.
    pub fn new(listens_on_loopback: bool, names: &[String]) -> Self {
        if names.iter().any(|n| n.trim() == "*") || (!listens_on_loopback && names.is_empty()) {
            return AllowedHosts::Any;
        }
        AllowedHosts::Local(
            names
                .iter()
                .map(|n| n.trim().to_ascii_lowercase())
                .filter(|n| !n.is_empty())
                .collect(),
        )
    }

    /// Whether a request whose `Host` is `host` (with or without a port) is answered.
    pub fn allows(&self, host: &str) -> bool {
        let extra = match self {
            AllowedHosts::Any => return true,
            AllowedHosts::Local(extra) => extra,
        };
        let name = host_name(host).to_ascii_lowercase();
        // An address is never a rebound name: a page reaching it by address is of that origin.
        name.parse::<std::net::IpAddr>().is_ok() || is_local_name(&name) || extra.contains(&name)
    }
}

/// `host` without its port and an IPv6 address's brackets.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// No name (HTTP/1.0), `localhost` and names under it, names of the local network (`.local`,
/// `.internal`, which no public DNS serves) and this machine's own name.
fn is_local_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    name.is_empty()
        || name == "localhost"
        || [".localhost", ".local", ".internal"]
            .iter()
            .any(|tld| name.ends_with(tld))
        || machine_name().is_some_and(|m| m.eq_ignore_ascii_case(name))
}

fn machine_name() -> Option<&'static str> {
    static NAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// Refuses (403) a request whose `Host` (or HTTP/2 authority) names no allowed host.
pub async fn check_host(State(allowed): State<AllowedHosts>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    if allowed.allows(host) {
        return next.run(req).await;
    }
    let name = host_name(host).chars().take(100).collect::<String>();
    ApiError::new(
        StatusCode::FORBIDDEN,
        "invalid_request_error",
        format!(
            "This server does not answer the host name `{name}`: it listens on a loopback \
             address, for this machine's clients. Start it with `--allowed-hosts {name}` if \
             that name is yours (a proxy's, say)."
        ),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_servers_answer_local_names_and_addresses_only() {
        let local = AllowedHosts::new(true, &[]);
        for ok in [
            "",
            "localhost",
            "LOCALHOST:8000",
            "127.0.0.1:8000",
            "[::1]:8000",
            "10.1.2.3",
            "app.localhost:3000",
            "printer.local",
            "db.internal",
            "localhost.",
        ] {
            assert!(local.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8000",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "\u{fffd}",
        ] {
            assert!(!local.allows(bad), "{bad}");
        }
        let proxied = AllowedHosts::new(true, &["Camelid".into()]);
        assert!(proxied.allows("camelid") && proxied.allows("camelid:80"));
        assert!(!proxied.allows("evil.example"));
        assert!(AllowedHosts::new(true, &["*".into()]).allows("evil.example"));
        assert!(AllowedHosts::new(false, &[]).allows("evil.example"));
        let public_named = AllowedHosts::new(false, &["arena.example.org".into()]);
        assert!(public_named.allows("arena.example.org") && !public_named.allows("evil.example"));
    }
}
