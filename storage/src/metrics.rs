//! `--metrics ADDR` for gfs servers: `http://ADDR/metrics` in the Prometheus text format, with
//! every request a server answered counted by name and outcome and timed, the bytes its
//! chunkservers read and wrote, and on the master the replicas missing.
//!
//! One process serves one role (`gfs master` or `gfs chunkserver`), so the figures are one
//! process-wide store. The HTTP endpoint itself ([`serve_http`]) is shared with `ftvm`.

use crate::sync::Unpoisoned;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

/// A request's name and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    op: &'static str,
    outcome: &'static str,
}

/// A request's name alone (for its latency).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    op: &'static str,
}

/// The figures of the cluster the master sees, read at each scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterFigures {
    pub chunkservers_live: u64,
    pub chunkservers_dead: u64,
    pub files: u64,
    pub chunks: u64,
    pub under_replicated: u64,
    pub missing: u64,
}

type ClusterSource = Box<dyn Fn() -> ClusterFigures + Send + Sync>;

struct Store {
    requests: Family<Request, Counter>,
    latency: Family<Op, Histogram>,
    bytes_read: Counter,
    bytes_written: Counter,
    cluster: Mutex<Option<ClusterSource>>,
}

static STORE: LazyLock<Store> = LazyLock::new(|| Store {
    requests: Family::default(),
    // 50 µs to ~50 s.
    latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_05, 4.0, 11))),
    bytes_read: Counter::default(),
    bytes_written: Counter::default(),
    cluster: Mutex::new(None),
});

/// A request named `op` that started at `started` was answered (`ok`: without an error).
pub fn request_done(op: &'static str, started: Instant, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    STORE.requests.get_or_create(&Request { op, outcome }).inc();
    STORE.latency.get_or_create(&Op { op }).observe(started.elapsed().as_secs_f64());
}

/// A chunkserver sent `n` bytes of chunk data to a reader.
pub fn bytes_read(n: u64) {
    STORE.bytes_read.inc_by(n);
}

/// A chunkserver took `n` bytes of chunk data from a writer (or the chain before it).
pub fn bytes_written(n: u64) {
    STORE.bytes_written.inc_by(n);
}

/// The master lends what it sees of the cluster.
pub fn watch_cluster(source: ClusterSource) {
    *STORE.cluster.lock_unpoisoned() = Some(source);
}

/// Everything, in the Prometheus text format.
pub fn render() -> String {
    let mut registry = Registry::with_prefix("gfs");
    registry.register("requests", "Requests answered, by name and outcome", STORE.requests.clone());
    registry.register("request_seconds", "Time to answer a request, by name", STORE.latency.clone());
    registry.register("chunk_bytes_read", "Chunk data bytes sent to readers", STORE.bytes_read.clone());
    registry.register("chunk_bytes_written", "Chunk data bytes received from writers", STORE.bytes_written.clone());
    let cluster = STORE.cluster.lock_unpoisoned().as_ref().map(|source| source());
    if let Some(c) = cluster {
        let mut gauge = |name: &str, help: &str, value: u64| {
            let metric = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
            metric.set(i64::try_from(value).unwrap_or(i64::MAX));
            registry.register(name, help, metric);
        };
        gauge("chunkservers_live", "Chunkservers heard from recently", c.chunkservers_live);
        gauge("chunkservers_dead", "Chunkservers not heard from for the dead-after time", c.chunkservers_dead);
        gauge("files", "Files in the namespace", c.files);
        gauge("chunks", "Chunks of all files", c.chunks);
        gauge("chunks_under_replicated", "Chunks with fewer live healthy replicas than wanted", c.under_replicated);
        gauge("chunks_missing", "Chunks with no live healthy replica", c.missing);
    }
    let mut text = String::new();
    if let Err(error) = encode(&mut text, &registry) {
        tracing::warn!("encoding metrics: {error}");
    }
    text
}

/// What an HTTP path answers: a body and its content type, or nothing (404).
pub type Route = Arc<dyn Fn(&str) -> Option<(String, &'static str)> + Send + Sync>;

/// The Prometheus text format's content type.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why a metrics endpoint did not start.
#[derive(Debug, thiserror::Error)]
#[error("serving metrics on {addr}: {reason}")]
pub struct MetricsError {
    addr: String,
    reason: String,
}

/// Serves `route` over plain HTTP on `addr` from a thread of its own, for the process's life.
pub fn serve_http(addr: &str, route: Route) -> Result<(), MetricsError> {
    let failed = |reason: String| MetricsError { addr: addr.to_owned(), reason };
    let server = tiny_http::Server::http(addr).map_err(|error| failed(error.to_string()))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (body, kind, status) = match route(request.url()) {
                    Some((body, kind)) => (body, kind, 200),
                    None => ("not found: try /metrics\n".to_owned(), "text/plain", 404),
                };
                let mut response = tiny_http::Response::from_string(body).with_status_code(status);
                if let Ok(header) = tiny_http::Header::from_bytes("Content-Type", kind) {
                    response = response.with_header(header);
                }
                if let Err(error) = request.respond(response) {
                    tracing::debug!("a metrics client went away: {error}");
                }
            }
        })
        .map_err(|error| failed(error.to_string()))?;
    tracing::info!(%addr, "serving metrics at /metrics");
    Ok(())
}

/// Serves this process's gfs figures at `/metrics` on `addr`.
pub fn serve(addr: &str) -> Result<(), MetricsError> {
    serve_http(addr, Arc::new(|path| (path == "/metrics").then(|| (render(), PROMETHEUS_TEXT))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_bytes_and_the_cluster_show_in_the_text_format() {
        request_done("create", Instant::now(), true);
        request_done("create", Instant::now(), false);
        // Chunkservers of other tests in this process count their bytes too.
        let written_before = STORE.bytes_written.get();
        bytes_written(4096);
        watch_cluster(Box::new(|| ClusterFigures { chunkservers_live: 3, missing: 1, ..ClusterFigures::default() }));
        let text = render();
        for line in [
            "gfs_requests_total{op=\"create\",outcome=\"ok\"} 1",
            "gfs_requests_total{op=\"create\",outcome=\"error\"} 1",
            "gfs_request_seconds_count{op=\"create\"} 2",
            "gfs_chunkservers_live 3",
            "gfs_chunks_missing 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
        let written: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("gfs_chunk_bytes_written_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no bytes written line in:\n{text}"));
        assert!(written >= written_before + 4096, "{written} bytes written, {written_before} before 4096 more");
    }
}
