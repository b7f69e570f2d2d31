//! The accept loop: HTTP/1.1 connections served by hyper, each given a deadline for its
//! request headers (a client that sends half a header and stalls, or idles on a keep-alive
//! connection, is closed) and for every write (a client that stops reading a stream is
//! closed, which cancels its generation and frees its concurrency slot), at most
//! `max_connections` open at once (the rest wait in the listen backlog), at most
//! `max_connections_per_address` of them from one address (more are answered 429 and
//! closed), and a graceful shutdown. `axum::serve` has none of these limits; this is its loop
//! with them.

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// How [`serve_connections`] treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// Open connections from one address (0: no cap): without it, one client's idle
    /// connections could take every slot for a header timeout at a time.
    pub max_connections_per_address: usize,
    /// Time to receive a request's headers, from when the connection is ready for one.
    pub header_timeout: Duration,
    /// Time a write may wait on a client that does not read (its socket buffers full).
    pub write_timeout: Duration,
    /// How long in-flight responses may run once shutdown begins.
    pub shutdown_grace: Duration,
}

/// How long the responses `grace_over` ended may take to send their error and close.
const GRACE_OVER_FLUSH: Duration = Duration::from_secs(2);

/// Serves `app` until `shutdown` resolves; then stops accepting (the listener is closed),
/// closes idle connections, lets in-flight responses finish for at most the grace period,
/// then calls `grace_over` (which ends what still runs) and returns once the responses have
/// closed, or [`GRACE_OVER_FLUSH`] later.
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    grace_over: impl FnOnce(),
) -> io::Result<()> {
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let (closing_tx, closing_rx) = watch::channel(false);
    let per_address = Arc::new(PerAddress {
        cap: limits.max_connections_per_address,
        open: Mutex::new(HashMap::new()),
    });
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("the connection semaphore stays open"),
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(address_slot) = per_address.enter(peer.ip()) else {
            // Best effort, without waiting on the client: then closed.
            let _ = tcp.try_write(&too_many_connections());
            tracing::debug!("{}: connections from this address at their cap", peer.ip());
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // The peer's address reaches handlers as axum's `ConnectInfo` (the arena's
        // per-address limits).
        let app = app.clone().map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
        // A response stalled on its client longer than the write timeout fails the connection:
        // hyper drops the response body, and with it the stream's generation and permit.
        let mut io = tokio_io_timeout::TimeoutStream::new(tcp);
        io.set_write_timeout(Some(limits.write_timeout));
        let io = TokioIo::new(Box::pin(io));
        let conn = http.serve_connection(io, TowerToHyperService::new(app));
        let mut closing = closing_rx.clone();
        tokio::spawn(async move {
            let _slot = (slot, address_slot);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("connection ended: {e}");
                    }
                    return;
                }
                _ = closing.wait_for(|c| *c) => {}
            }
            // Finish the response in flight, then close.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    drop(listener);
    let grace = limits.shutdown_grace;
    tracing::info!(
        "shutting down: no new connections; finishing in-flight requests (at most {}s)",
        grace.as_secs()
    );
    let _ = closing_tx.send(true);
    // Every connection holds a slot until it ends: all slots back means all done.
    let all_closed = || slots.acquire_many(max as u32);
    if tokio::time::timeout(grace, all_closed()).await.is_err() {
        tracing::warn!("grace period over; ending the requests still in flight");
        grace_over();
        if tokio::time::timeout(GRACE_OVER_FLUSH, all_closed())
            .await
            .is_err()
        {
            tracing::warn!("exiting with responses still open");
        }
    }
    Ok(())
}

/// The answer to a connection over its address's cap: a 429 with OpenAI's error JSON.
fn too_many_connections() -> Vec<u8> {
    let body =
        serde_json::json!({"error": {"message": "Too many open connections from this address.",
        "type": "rate_limit_error", "param": null, "code": null}})
        .to_string();
    format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What counts as one client for per-address limits (here and the arena's): an IPv4
/// address (an IPv4-mapped IPv6 one too) as it is, an IPv6 address by its /64 network — one
/// subscriber's allocation, which holds 2^64 addresses to rotate through.
pub(crate) fn client_network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// Open connections by address, for `max_connections_per_address`.
struct PerAddress {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// A slot for one more connection from `ip` ([`client_network`]), or `None` at the cap.
    fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        if self.cap == 0 {
            return Some(AddressSlot(None));
        }
        let ip = client_network(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(AddressSlot(Some((self.clone(), ip))))
    }
}

/// One connection's place under its address's cap, given back when it closes.
struct AddressSlot(Option<(Arc<PerAddress>, IpAddr)>);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some((per, ip)) = &self.0 {
            let mut open = per.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(ip);
                }
            }
        }
    }
}

/// A failed accept: a connection that went away before it was accepted is nothing; anything
/// else (most likely out of file descriptors) is logged and the loop pauses, as hyper's and
/// axum's servers do.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept error: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
