//! `ftvm status ADDR`: the question (8 bytes, [`STATUS_MAGIC`], on the VMM's `--ft-listen`
//! port, then the process's channel security: a sealed handshake with the cluster key, or
//! nothing with `--insecure`) and the answer (one line of JSON, a [`StatusReport`], through that
//! channel; then the VMM closes). A client without the cluster key learns nothing.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// What a status question starts with (a backup joining starts with `FTVMLINK`).
pub const STATUS_MAGIC: [u8; 8] = *b"FTVMSTAT";

/// The longest answer a client reads: a report is a few hundred bytes.
const MAX_ANSWER: u64 = 64 * 1024;

/// What this side of the pair does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Role {
    /// Not live yet (booting, or racing for the register).
    Starting = 0,
    /// Runs the VM and releases its outputs.
    Live = 1,
    /// Replays the primary's log, ready to take over.
    Following = 2,
    /// Lost the go-live race or was fenced out: releases nothing.
    Halted = 3,
}

impl Role {
    pub(super) fn from_code(code: u8) -> Self {
        match code {
            1 => Role::Live,
            2 => Role::Following,
            3 => Role::Halted,
            _ => Role::Starting,
        }
    }
}

/// The backup's replay lag over the current pairing, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LagFigures {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Landmarks replayed (the samples).
    pub samples: u64,
}

/// A VMM's answer to `ftvm status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub vm: String,
    pub listen: String,
    pub pid: u32,
    pub role: Role,
    /// Live with a backup following.
    pub protected: bool,
    pub generation: u64,
    /// Where the vCPU stands (a backup: how far its replay got).
    pub landmark: String,
    pub exits: u64,
    /// The backup's address on a protected primary, the primary's on a backup.
    pub peer: Option<String>,
    pub backup_lag: Option<LagFigures>,
    /// Log bytes sent (primary) or received (backup) since this process started.
    pub log_bytes: u64,
    pub log_rate_bytes_per_s: f64,
    pub held_outputs: usize,
    pub held_bytes: usize,
    pub oldest_held_ms: Option<f64>,
    pub resyncs: u64,
    /// Backups that joined this side.
    pub joins: u64,
    /// Times this side went live after following.
    pub failovers: u64,
    pub uptime_s: f64,
}

/// Why `ftvm status` got no report.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    // The cause is part of the message, so it is no `source` (a field of that name would be):
    // a chain printed whole would say it twice.
    #[error("{addr} is not an address: {cause}")]
    Address { addr: String, cause: std::io::Error },
    #[error("no VMM answers on {addr}: {cause}")]
    Connect { addr: String, cause: std::io::Error },
    #[error("asking {addr}: {cause}")]
    Io { addr: String, cause: std::io::Error },
    #[error("{addr} gave no status (not an ftvm --ft-listen port, an older ftvm, or one that wants this cluster's key: --keys DIR)")]
    Empty { addr: String },
    #[error("{addr} answered something that is not a status report: {cause}")]
    Malformed { addr: String, cause: serde_json::Error },
    #[error(transparent)]
    Sealing(#[from] seal::SealError),
}

/// The protocol name both sides of the sealed handshake agree on.
const SEAL_PROTOCOL: &str = "ftvm-status";

/// Answers a status question whose magic was already read from `stream`, through the
/// process's channel security (`timeout` bounds the handshake); `report` is made only once the
/// asker passed it.
pub fn answer(
    stream: TcpStream,
    peer: &str,
    timeout: Duration,
    report: impl FnOnce() -> StatusReport,
) -> Result<(), seal::SealError> {
    let security = seal::installed()?;
    let (_, mut writer) = seal::open(stream, &security, SEAL_PROTOCOL, seal::Side::Responder, peer, timeout)?;
    let failed = |source: std::io::Error| seal::SealError::Io { context: format!("answering {peer}"), cause: source };
    let mut line = serde_json::to_vec(&report()).map_err(|e| failed(e.into()))?;
    line.push(b'\n');
    writer.write_all(&line).and_then(|_| writer.flush()).map_err(failed)
}

/// Asks the VMM whose `--ft-listen` is `addr`.
pub fn query(addr: &str, timeout: Duration) -> Result<StatusReport, StatusError> {
    let target = addr
        .to_socket_addrs()
        .map_err(|source| StatusError::Address { addr: addr.to_owned(), cause: source })?
        .next()
        .ok_or_else(|| StatusError::Address { addr: addr.to_owned(), cause: std::io::ErrorKind::NotFound.into() })?;
    let io = |source| StatusError::Io { addr: addr.to_owned(), cause: source };
    let mut stream = TcpStream::connect_timeout(&target, timeout)
        .map_err(|source| StatusError::Connect { addr: addr.to_owned(), cause: source })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.write_all(&STATUS_MAGIC).map_err(io)?;
    let security = seal::installed()?;
    let (reader, _writer) = seal::open(stream, &security, SEAL_PROTOCOL, seal::Side::Initiator, addr, timeout)?;
    let mut line = String::new();
    match BufReader::new(reader.take(MAX_ANSWER)).read_line(&mut line) {
        Ok(_) => {}
        // A port that closed on the question without reading it resets the connection.
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(error) => return Err(io(error)),
    }
    if line.trim().is_empty() {
        return Err(StatusError::Empty { addr: addr.to_owned() });
    }
    serde_json::from_str(&line).map_err(|source| StatusError::Malformed { addr: addr.to_owned(), cause: source })
}

/// The report for a person, one fact a line.
pub fn render(report: &StatusReport) -> String {
    let mut out = String::new();
    let role = match (report.role, report.protected) {
        (Role::Live, true) => "live, protected",
        (Role::Live, false) => "live, NOT protected (no backup)",
        (Role::Following, _) => "following (backup)",
        (Role::Starting, _) => "starting",
        (Role::Halted, _) => "halted (another side is live)",
    };
    let _ = writeln!(out, "vm:          {} (pid {}, listening on {})", report.vm, report.pid, report.listen);
    let _ = writeln!(out, "role:        {role}");
    let _ = writeln!(out, "generation:  {}", report.generation);
    let _ = writeln!(out, "landmark:    {}", report.landmark);
    match (&report.peer, report.role) {
        (Some(peer), Role::Following) => _ = writeln!(out, "primary:     {peer}"),
        (Some(peer), _) => _ = writeln!(out, "backup:      {peer}"),
        (None, _) => _ = writeln!(out, "backup:      none"),
    }
    match &report.backup_lag {
        Some(lag) => {
            _ = writeln!(
                out,
                "backup lag:  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} landmarks)",
                lag.p50_ms, lag.p99_ms, lag.max_ms, lag.samples
            )
        }
        None => _ = writeln!(out, "backup lag:  -"),
    }
    let _ = writeln!(out, "log:         {} bytes, {:.1} KiB/s", report.log_bytes, report.log_rate_bytes_per_s / 1024.0);
    let age = report.oldest_held_ms.map_or("-".to_owned(), |ms| format!("{ms:.1} ms"));
    let _ = writeln!(out, "held:        {} outputs, {} bytes, oldest {age}", report.held_outputs, report.held_bytes);
    let _ = writeln!(out, "resyncs:     {}", report.resyncs);
    let _ = writeln!(out, "joins:       {}", report.joins);
    let _ = writeln!(out, "failovers:   {}", report.failovers);
    let _ = write!(out, "uptime:      {:.1} s", report.uptime_s);
    out
}

/// A report with every field set, for tests here and in [`super::metrics`].
#[cfg(test)]
pub(super) fn sample_report() -> StatusReport {
    StatusReport {
        vm: "kv".into(),
        listen: "127.0.0.1:7100".into(),
        pid: 7,
        role: Role::Live,
        protected: true,
        generation: 3,
        landmark: "Exit(9)".into(),
        exits: 9,
        peer: Some("127.0.0.1:7101".into()),
        backup_lag: Some(LagFigures { p50_ms: 2.5, p99_ms: 9.5, max_ms: 30.0, samples: 100 }),
        log_bytes: 4096,
        log_rate_bytes_per_s: 2048.0,
        held_outputs: 2,
        held_bytes: 120,
        oldest_held_ms: Some(1.5),
        resyncs: 1,
        joins: 2,
        failovers: 1,
        uptime_s: 12.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_crosses_a_real_socket_whole() {
        ftvm_tests::keys().unwrap(); // this process's cluster key: the exchange is sealed
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut magic = [0u8; 8];
            std::io::Read::read_exact(&mut stream, &mut magic).unwrap();
            assert_eq!(magic, STATUS_MAGIC);
            answer(stream, "the test", Duration::from_secs(5), sample_report).unwrap();
        });
        assert_eq!(query(&addr, Duration::from_secs(5)).unwrap(), sample_report());
        server.join().unwrap();
    }

    #[test]
    fn a_port_that_closes_without_a_report_is_a_clear_error() {
        ftvm_tests::keys().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || drop(listener.accept().unwrap()));
        let error = query(&addr, Duration::from_secs(5)).unwrap_err().to_string();
        assert!(error.contains(&addr), "{error}");
        server.join().unwrap();
    }

    #[test]
    fn the_text_names_role_backup_and_lag() {
        let text = render(&sample_report());
        assert!(text.contains("role:        live, protected"), "{text}");
        assert!(text.contains("backup:      127.0.0.1:7101"), "{text}");
        assert!(text.contains("p99 9.5 ms"), "{text}");
    }
}
