//! Plain HTTP/1.1 over a socket for the binary's tests: whole responses, and streams read
//! event by event (so a test can hang up at any point).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// Connects and writes the request; the response is the caller's to read (or not).
pub fn send(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<TcpStream> {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr)?;
    // No test waits this long for a byte: a response that stalls fails instead of hanging.
    s.set_read_timeout(Some(std::time::Duration::from_secs(300)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += &format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    Ok(s)
}

/// Reads the status line and headers: (status, chunked).
fn head(r: &mut impl BufRead) -> std::io::Result<(u16, bool)> {
    let mut line = String::new();
    let mut status = 0;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed in the headers"));
        }
        let l = line.trim_end().to_ascii_lowercase();
        if let Some(rest) = l.strip_prefix("http/1.1 ") {
            status = rest[..3].parse().map_err(std::io::Error::other)?;
        }
        chunked |= l == "transfer-encoding: chunked";
        if l.is_empty() {
            return Ok((status, chunked));
        }
    }
}

/// The next piece of a chunked body; None at its end.
fn next_chunk(r: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let size = usize::from_str_radix(line.trim(), 16)
        .map_err(|_| std::io::Error::other(format!("bad chunk size line {line:?}")))?;
    if size == 0 {
        return Ok(None);
    }
    let mut chunk = vec![0; size + 2];
    r.read_exact(&mut chunk)?;
    chunk.truncate(size);
    Ok(Some(chunk))
}

/// A whole response: (status, body).
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut r = BufReader::new(send(base, method, path, headers, body)?);
    let (status, chunked) = head(&mut r)?;
    let mut out = Vec::new();
    if chunked {
        while let Some(c) = next_chunk(&mut r)? {
            out.extend(c);
        }
    } else {
        r.read_to_end(&mut out)?;
    }
    Ok((status, String::from_utf8_lossy(&out).into_owned()))
}

pub fn post_json(base: &str, path: &str, body: &str) -> std::io::Result<(u16, serde_json::Value)> {
    let (status, text) = request(base, "POST", path, &[], body)?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    ))
}

/// A streamed POST: the SSE `data:` payloads in order, each handed to `keep_reading` as it
/// arrives; when that says false the connection is dropped at once (a client hanging up).
/// A response that is not a stream comes back whole as the one payload.
pub fn stream(
    base: &str,
    path: &str,
    body: &str,
    mut keep_reading: impl FnMut(&str) -> bool,
) -> std::io::Result<(u16, Vec<String>)> {
    let mut r = BufReader::new(send(base, "POST", path, &[], body)?);
    let (status, chunked) = head(&mut r)?;
    if !chunked {
        let mut out = String::new();
        r.read_to_string(&mut out)?;
        return Ok((status, vec![out]));
    }
    let mut events = vec![];
    let mut pending = Vec::new();
    while let Some(chunk) = next_chunk(&mut r)? {
        pending.extend(chunk);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let l: Vec<u8> = pending.drain(..=nl).collect();
            let l = String::from_utf8_lossy(&l);
            if let Some(d) = l.trim_end().strip_prefix("data: ") {
                events.push(d.to_string());
                if !keep_reading(d) {
                    return Ok((status, events));
                }
            }
        }
    }
    Ok((status, events))
}

/// The value of a sample in a `/metrics` text, summed over its label sets.
pub fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn metrics(base: &str) -> String {
    let (st, text) = request(base, "GET", "/metrics", &[], "").expect("/metrics");
    assert_eq!(st, 200, "{text}");
    text
}

/// A finished stream's chunks (every payload but the final `[DONE]`, parsed) and how many of
/// them carry a generated token (content, not the opening role chunk).
pub fn token_chunks(events: &[String]) -> (Vec<serde_json::Value>, usize) {
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let tokens = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"].is_string()
                && c["choices"][0]["delta"]["role"].is_null()
        })
        .count();
    (chunks, tokens)
}
