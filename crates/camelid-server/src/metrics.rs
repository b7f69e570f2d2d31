//! Server metrics in Prometheus text format: requests by status, latencies, and the
//! engines' counters.

use camelid_engine::EngineMetrics;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let counts: Vec<u64> = (0..BUCKETS.len())
            .map(|i| self.counts.get(i).copied().unwrap_or(0))
            .collect();
        write_series(out, name, "", BUCKETS, &counts, self.count, self.sum);
    }
}

/// One histogram series: cumulative `counts` per bound in `bounds`, then `+Inf`, sum and
/// count; `labels` (`key="value"` pairs, comma-separated, or empty) go on every line.
fn write_series(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    counts: &[u64],
    count: u64,
    sum: f64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    for (b, n) in bounds.iter().zip(counts) {
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}\n{name}_sum{braces} {sum}\n{name}_count{braces} {count}"
    );
}

/// A label value as Prometheus' text format requires it: backslash, double quote and line
/// feed escaped (anything else may appear as is).
pub(crate) fn escape_label(v: &str) -> Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len() + 2);
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[derive(Debug, Default)]
pub struct ServerMetrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    ttft: Mutex<Histogram>,
    itl: Mutex<Histogram>,
    e2e: Mutex<Histogram>,
}

impl ServerMetrics {
    /// Counts one response. `endpoint` is a route template (`/arena/battles/{id}/vote`) or
    /// `unmatched`, never a request's path: a bounded set of series, no client data in them.
    pub fn request(&self, endpoint: &str, status: u16) {
        *self
            .requests
            .lock()
            .unwrap()
            .entry((endpoint.to_string(), status))
            .or_default() += 1;
    }
    pub fn time_to_first_token(&self, secs: f64) {
        self.ttft.lock().unwrap().observe(secs);
    }
    pub fn inter_token_latency(&self, secs: f64) {
        self.itl.lock().unwrap().observe(secs);
    }
    pub fn request_latency(&self, secs: f64) {
        self.e2e.lock().unwrap().observe(secs);
    }

    pub fn render(&self, engines: &[(&str, &EngineMetrics)]) -> String {
        let mut out = String::new();
        out += "# HELP camelid_requests_total HTTP requests by endpoint and status.\n# TYPE camelid_requests_total counter\n";
        for ((e, s), n) in self.requests.lock().unwrap().iter() {
            let e = escape_label(e);
            let _ = writeln!(
                out,
                "camelid_requests_total{{endpoint=\"{e}\",status=\"{s}\"}} {n}"
            );
        }
        self.ttft.lock().unwrap().render(
            "camelid_time_to_first_token_seconds",
            "Time from the request's hand-over to the engine (its prompt rendered and tokenized) to its first generated token (of any choice).",
            &mut out,
        );
        self.itl.lock().unwrap().render(
            "camelid_inter_token_latency_seconds",
            "Time between generated tokens of one stream.",
            &mut out,
        );
        self.e2e.lock().unwrap().render(
            "camelid_request_duration_seconds",
            "Time from the request's hand-over to the engine to its last token.",
            &mut out,
        );
        use camelid_engine::EngineMetrics as E;
        type Get = fn(&E) -> u64;
        let per_engine: [(&str, &str, &str, Get); 17] = [
            (
                "camelid_running_requests",
                "gauge",
                "Sequences in the running batch.",
                |e| E::get(&e.running),
            ),
            (
                "camelid_waiting_requests",
                "gauge",
                "Requests waiting for a batch slot.",
                |e| E::get(&e.waiting),
            ),
            (
                "camelid_prompt_tokens_total",
                "counter",
                "Prompt tokens admitted, per sequence (a request's n choices count its prompt n times).",
                |e| E::get(&e.prompt_tokens),
            ),
            (
                "camelid_generation_tokens_total",
                "counter",
                "Tokens generated.",
                |e| E::get(&e.generation_tokens),
            ),
            (
                "camelid_engine_steps_total",
                "counter",
                "Forward passes run.",
                |e| E::get(&e.steps),
            ),
            (
                "camelid_batched_sequences_total",
                "counter",
                "Sum of batch sizes over steps.",
                |e| E::get(&e.batched_sequences),
            ),
            (
                "camelid_batched_tokens_total",
                "counter",
                "Sum of tokens per step over steps.",
                |e| E::get(&e.batched_tokens),
            ),
            (
                "camelid_cancelled_requests_total",
                "counter",
                "Sequences cancelled by their client (a request's choices count one each).",
                |e| E::get(&e.cancelled),
            ),
            (
                "camelid_preemptions_total",
                "counter",
                "Sequences preempted for lack of KV blocks.",
                |e| E::get(&e.preemptions),
            ),
            (
                "camelid_spec_decode_draft_tokens_total",
                "counter",
                "Draft tokens verified by speculative decoding.",
                |e| E::get(&e.spec_draft_tokens),
            ),
            (
                "camelid_spec_decode_accepted_tokens_total",
                "counter",
                "Draft tokens accepted (each saved a step).",
                |e| E::get(&e.spec_accepted_tokens),
            ),
            (
                "camelid_kv_blocks_used",
                "gauge",
                "KV blocks held by sequences.",
                |e| E::get(&e.kv_blocks_used),
            ),
            (
                "camelid_kv_blocks_peak",
                "gauge",
                "Most KV blocks held at once during a step since start.",
                |e| E::get(&e.kv_blocks_peak),
            ),
            (
                "camelid_kv_blocks_capacity",
                "gauge",
                "KV blocks in the pool.",
                |e| E::get(&e.kv_blocks_total),
            ),
            (
                "camelid_prefix_cache_hits_total",
                "counter",
                "Admissions that reused cached prefix blocks.",
                |e| E::get(&e.prefix_cache_hits),
            ),
            (
                "camelid_prefix_cache_lookups_total",
                "counter",
                "Prefix cache lookups.",
                |e| E::get(&e.prefix_cache_lookups),
            ),
            (
                "camelid_cached_prompt_tokens_total",
                "counter",
                "Prompt tokens served from the prefix cache.",
                |e| E::get(&e.cached_prompt_tokens),
            ),
        ];
        for (name, kind, help, get) in per_engine {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (m, e) in engines {
                let m = escape_label(m);
                let _ = writeln!(out, "{name}{{model=\"{m}\"}} {}", get(e));
            }
        }
        let name = "camelid_engine_step_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Duration of engine steps (running streams wait for whole steps).\n# TYPE {name} histogram"
        );
        for (m, e) in engines {
            let (counts, count, sum) = e.step_seconds.snapshot();
            let labels = format!("model=\"{}\"", escape_label(m));
            let bounds = &camelid_engine::STEP_BUCKETS;
            write_series(&mut out, name, &labels, bounds, &counts, count, sum);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("/v1/models"), "/v1/models");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
