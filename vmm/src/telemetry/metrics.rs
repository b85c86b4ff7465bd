//! `--metrics ADDR`: the VMM's vital signs at `http://ADDR/metrics` in the Prometheus text
//! format (and the status report as JSON at `/status`).
//!
//! Each scrape reads [`super::vitals`] once and encodes a fresh registry of its values: the
//! figures live in the process's atomics, and a scrape never touches the vCPU.

use super::StatusReport;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Serves `/metrics` and `/status` on `addr` from a thread of its own, for the process's life.
pub fn serve(addr: &str) -> Result<(), storage::metrics::MetricsError> {
    storage::metrics::serve_http(
        addr,
        std::sync::Arc::new(|path| match path {
            "/metrics" => Some((render(&super::vitals().report()), storage::metrics::PROMETHEUS_TEXT)),
            "/status" => serde_json::to_string(&super::vitals().report()).ok().map(|json| (json, "application/json")),
            _ => None,
        }),
    )
}

/// The report in the Prometheus text format.
pub fn render(report: &StatusReport) -> String {
    let mut registry = Registry::with_prefix("ftvm");
    let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let metric = Counter::<u64>::default();
        metric.inc_by(value);
        registry.register(name, help, metric);
    };
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: f64| {
        let metric = Gauge::<f64, AtomicU64>::default();
        metric.set(value);
        registry.register(name, help, metric);
    };
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    counter(&mut registry, "exits", "Deterministic VM exits so far (the landmark)", report.exits);
    counter(&mut registry, "log_bytes", "Log bytes sent (primary) or received (backup)", report.log_bytes);
    gauge(&mut registry, "log_rate_bytes_per_second", "Log bytes per second, last window", report.log_rate_bytes_per_s);
    gauge(
        &mut registry,
        "live",
        "1 while this side runs the VM and releases outputs",
        flag(report.role == super::Role::Live),
    );
    gauge(&mut registry, "protected", "1 while live with a backup following", flag(report.protected));
    gauge(
        &mut registry,
        "following",
        "1 while this side follows as a backup",
        flag(report.role == super::Role::Following),
    );
    gauge(
        &mut registry,
        "halted",
        "1 once this side lost the race or was fenced out",
        flag(report.role == super::Role::Halted),
    );
    gauge(&mut registry, "generation", "The go-live generation this side knows", report.generation as f64);
    gauge(&mut registry, "held_outputs", "Outputs held for the backup's acknowledgement", report.held_outputs as f64);
    gauge(&mut registry, "held_bytes", "Payload bytes held for the backup", report.held_bytes as f64);
    let oldest = report.oldest_held_ms.unwrap_or(0.0) / 1e3;
    gauge(&mut registry, "oldest_held_seconds", "Age of the oldest held output", oldest);
    if let Some(lag) = &report.backup_lag {
        gauge(&mut registry, "backup_lag_p50_seconds", "Backup replay lag, median", lag.p50_ms / 1e3);
        gauge(&mut registry, "backup_lag_p99_seconds", "Backup replay lag, 99th percentile", lag.p99_ms / 1e3);
        gauge(&mut registry, "backup_lag_max_seconds", "Backup replay lag, maximum", lag.max_ms / 1e3);
    }
    counter(&mut registry, "resyncs", "Resyncs of the pair completed", report.resyncs);
    counter(&mut registry, "joins", "Backups that joined this side", report.joins);
    counter(&mut registry, "failovers", "Times this side went live after following", report.failovers);
    let mut text = String::new();
    if let Err(error) = encode(&mut text, &registry) {
        tracing::warn!("encoding metrics: {error}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_carries_each_figure_with_its_type() {
        let report = crate::telemetry::status::sample_report();
        let text = render(&report);
        for line in [
            "# TYPE ftvm_exits counter",
            "ftvm_exits_total 9",
            "ftvm_log_bytes_total 4096",
            "ftvm_protected 1.0",
            "ftvm_generation 3.0",
            "ftvm_held_outputs 2.0",
            "ftvm_backup_lag_p99_seconds 0.0095",
            "ftvm_resyncs_total 1",
            "ftvm_failovers_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
    }

    #[test]
    fn a_scrape_over_http_gets_the_process_figures() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        serve(&addr).unwrap();
        crate::telemetry::vitals().exit_reached(12345);
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        std::io::Write::write_all(&mut stream, b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("ftvm_exits_total 12345"), "{answer}");
    }
}
