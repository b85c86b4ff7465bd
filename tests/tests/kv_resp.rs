//! The `kv` guest's Redis protocol (`resp=6379`), driven by Debian's `redis-cli` and
//! `redis-benchmark` from a network namespace: every supported command, binary-safe values,
//! errors that keep the connection, a short benchmark at 1 and 50 connections, pipelined and
//! not, and the data written through one protocol read through the other (also after a kill -9).

use anyhow::{bail, Context, Result};
use ftvm_tests::kv::{self, network, GUEST_IP};
use ftvm_tests::{cannot_run, namespaces_unavailable, NetNs, Process};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const LINE_PORT: u16 = 7000;
const RESP_PORT: &str = "6379";
/// One redis-cli or redis-benchmark run (coreutils `timeout` ends a stalled one).
const TOOL_TIMEOUT: &str = "120";

/// Why this machine cannot run these tests, if it cannot.
fn missing() -> Option<String> {
    if let Some(why) = namespaces_unavailable() {
        return Some(why);
    }
    for tool in ["redis-cli", "redis-benchmark"] {
        let found = Command::new(tool).arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
        if !found {
            return Some(format!("needs {tool} (apt-get install redis-tools)"));
        }
    }
    None
}

macro_rules! require_tools {
    () => {
        if let Some(why) = missing() {
            cannot_run(&why);
            return Ok(());
        }
    };
}

fn disk(dir: &Path) -> Result<std::path::PathBuf> {
    kv::disk_file(dir, "kv.img", 64 << 20)
}

/// Boots the kv guest with both protocols and waits until it listens.
fn boot(ns: &NetNs, disk: &Path) -> Result<Process> {
    let resp = format!("--cmdline=resp={RESP_PORT}");
    let vm = kv::boot(ns, disk, &[&resp], &[])?;
    if !vm.output().contains(&format!("kv: redis protocol on {GUEST_IP}:{RESP_PORT}")) {
        bail!("the guest did not announce the Redis protocol:\n{}", vm.output());
    }
    Ok(vm)
}

/// Runs `tool args` in the namespace with `stdin`; its standard output, or an error with both
/// streams when it fails.
fn run_tool(ns: &NetNs, tool: &str, args: &[&str], stdin: &[u8]) -> Result<Vec<u8>> {
    let mut command = ns.command(Path::new("timeout"));
    command.args([TOOL_TIMEOUT, tool]).args(args);
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().with_context(|| format!("start {tool}"))?;
    let mut input = child.stdin.take().context("stdin")?;
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&stdin));
    let output = child.wait_with_output()?;
    writer.join().map_err(|_| anyhow::anyhow!("stdin writer panicked"))??;
    if !output.status.success() {
        bail!(
            "{tool} {args:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// `redis-cli -h GUEST -p 6379 args...`, its output as text (one line per reply when not a tty;
/// an error reply is followed by an empty line).
fn cli(ns: &NetNs, args: &[&str]) -> Result<String> {
    let mut all = vec!["-h", GUEST_IP, "-p", RESP_PORT];
    all.extend_from_slice(args);
    Ok(String::from_utf8_lossy(&run_tool(ns, "redis-cli", &all, b"")?).into_owned())
}

/// One line-protocol request on a new connection, from inside the namespace.
fn line_request(ns: &NetNs, request: &str) -> Result<String> {
    let request = request.to_owned();
    ns.within(move || {
        let stream = TcpStream::connect_timeout(&format!("{GUEST_IP}:{LINE_PORT}").parse()?, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        (&stream).write_all(format!("{request}\n").as_bytes())?;
        let mut answer = String::new();
        BufReader::new(&stream).read_line(&mut answer)?;
        Ok(answer.trim_end().to_owned())
    })
}

#[test]
fn redis_cli_drives_every_command() -> Result<()> {
    require_tools!();
    let ns = network("resp-cli")?;
    let dir = tempfile::tempdir()?;
    let _vm = boot(&ns, &disk(dir.path())?)?;

    let cases: &[(&[&str], &str)] = &[
        (&["PING"], "PONG\n"),
        (&["ping", "hello"], "hello\n"),
        (&["SET", "greeting", "hello world"], "OK\n"),
        (&["GET", "greeting"], "hello world\n"),
        (&["GET", "missing"], "\n"),
        (&["SET", "a", "1"], "OK\n"),
        (&["EXISTS", "a", "greeting", "missing"], "2\n"),
        (&["INCR", "a"], "2\n"),
        (&["INCR", "counter"], "1\n"),
        (&["DBSIZE"], "3\n"),
        (&["DEL", "a", "counter", "missing"], "2\n"),
        (&["DBSIZE"], "1\n"),
        (&["CONFIG", "GET", "appendonly"], "appendonly\nyes\n"),
        (&["CONFIG", "GET", "save"], "save\n\n"),
        (&["SET", "k", "v", "EX", "10"], "ERR SET options are not supported (only SET key value)\n\n"),
        (&["INCR", "greeting"], "ERR value is not an integer or out of range\n\n"),
        (&["FLUSHALL"], "ERR unknown command 'FLUSHALL'\n\n"),
        (&["GET"], "ERR wrong number of arguments for 'GET' command\n\n"),
        (&["QUIT"], "OK\n"),
    ];
    for (args, want) in cases {
        assert_eq!(cli(&ns, args)?, *want, "redis-cli {args:?}");
    }
    let info = cli(&ns, &["INFO"])?;
    assert!(info.contains("# Server") && info.contains("db0:keys=1,"), "INFO answered {info:?}");

    // Binary-safe: every byte value, CR and LF included, through `-x` (value from stdin).
    let value: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let base = ["-h", GUEST_IP, "-p", RESP_PORT];
    let set = run_tool(&ns, "redis-cli", &[&base[..], &["-x", "SET", "bin\r\nkey"]].concat(), &value)?;
    assert_eq!(set, b"OK\n");
    let got = run_tool(&ns, "redis-cli", &[&base[..], &["GET", "bin\r\nkey"]].concat(), b"")?;
    assert_eq!(got.len(), value.len() + 1);
    assert!(got[..value.len()] == value[..], "the binary value came back changed");
    let too_long = run_tool(&ns, "redis-cli", &[&base[..], &["-x", "SET", "big"]].concat(), &[b'v'; 4097])?;
    assert_eq!(String::from_utf8_lossy(&too_long), "ERR value longer than 4096 bytes\n\n");

    // Several commands on one connection (redis-cli reads them from stdin): an error does not
    // drop it.
    let session = run_tool(&ns, "redis-cli", &base, b"NOSUCH x\nSET s1 v1\nBADCMD\nGET s1\nPING\n")?;
    assert_eq!(
        String::from_utf8_lossy(&session),
        "ERR unknown command 'NOSUCH'\n\nOK\nERR unknown command 'BADCMD'\n\nv1\nPONG\n"
    );

    // Raw RESP and inline requests, pipelined in one write, then a broken frame: the protocol
    // error is answered and the connection closed.
    let replies = ns.within(|| {
        let mut stream =
            TcpStream::connect_timeout(&format!("{GUEST_IP}:{RESP_PORT}").parse()?, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.write_all(
            b"*3\r\n$3\r\nSET\r\n$2\r\nr1\r\n$2\r\nv1\r\nGET r1\r\n*2\r\n$3\r\nGET\r\n$2\r\nr1\r\n*1\r\n$x\r\n",
        )?;
        let mut all = Vec::new();
        stream.read_to_end(&mut all)?;
        Ok(all)
    })?;
    assert_eq!(
        String::from_utf8_lossy(&replies),
        "+OK\r\n$2\r\nv1\r\n$2\r\nv1\r\n-ERR Protocol error: invalid bulk length\r\n"
    );
    Ok(())
}

/// `redis-benchmark -q` prints one line per test; an error reply or a lost connection stops it
/// with a message, and a failed CONFIG GET prints a warning.
fn benchmark(ns: &NetNs, connections: &str, pipeline: &str, requests: &str) -> Result<String> {
    let args =
        ["-h", GUEST_IP, "-p", RESP_PORT, "-t", "set,get", "-c", connections, "-P", pipeline, "-n", requests, "-q"];
    let out = run_tool(ns, "redis-benchmark", &args, b"")?;
    let out = String::from_utf8_lossy(&out).into_owned();
    let lines: Vec<&str> = out.split(['\r', '\n']).filter(|l| l.contains("requests per second")).collect();
    let clean = !out.contains("rror") && !out.contains("WARNING");
    if !clean || lines.len() != 2 || !lines[0].starts_with("SET:") || !lines[1].starts_with("GET:") {
        bail!("redis-benchmark -c {connections} -P {pipeline} did not run cleanly to the end:\n{out}");
    }
    Ok(lines.join("; "))
}

#[test]
fn redis_benchmark_runs_to_the_end() -> Result<()> {
    require_tools!();
    let ns = network("resp-bench")?;
    let dir = tempfile::tempdir()?;
    let mut vm = boot(&ns, &disk(dir.path())?)?;
    for (connections, pipeline, requests) in
        [("1", "1", "300"), ("1", "16", "2000"), ("50", "1", "1000"), ("50", "16", "4000")]
    {
        let summary = benchmark(&ns, connections, pipeline, requests)?;
        eprintln!("redis-benchmark -c {connections} -P {pipeline} -n {requests}: {summary}");
    }
    // What the benchmark wrote is what the line protocol reads (its SETs use the key
    // `key:__rand_int__` and the 3-byte value `VXK`).
    assert_eq!(line_request(&ns, "GET key:__rand_int__")?, "VALUE VXK");
    let stats = line_request(&ns, "STATS")?;
    assert!(stats.contains(" errors=0 "), "{stats}");
    assert!(stats.contains(&format!(" sets={} ", 300 + 2000 + 1000 + 4000)), "{stats}");
    vm.kill();
    Ok(())
}

#[test]
fn data_crosses_between_the_protocols_and_survives_a_kill() -> Result<()> {
    require_tools!();
    let ns = network("resp-cross")?;
    let dir = tempfile::tempdir()?;
    let disk = disk(dir.path())?;
    let mut vm = boot(&ns, &disk)?;
    // Line protocol -> Redis protocol.
    assert_eq!(line_request(&ns, "SET from-line written-by-line")?, "OK");
    assert_eq!(cli(&ns, &["GET", "from-line"])?, "written-by-line\n");
    assert_eq!(line_request(&ns, "SET gone x")?, "OK");
    assert_eq!(cli(&ns, &["DEL", "gone"])?, "1\n");
    assert_eq!(line_request(&ns, "GET gone")?, "NOT_FOUND");
    // Redis protocol -> line protocol.
    assert_eq!(cli(&ns, &["SET", "from-resp", "written-by-resp"])?, "OK\n");
    assert_eq!(line_request(&ns, "GET from-resp")?, "VALUE written-by-resp");
    assert_eq!(cli(&ns, &["INCR", "hits"])?, "1\n");
    assert_eq!(cli(&ns, &["INCR", "hits"])?, "2\n");
    assert_eq!(line_request(&ns, "GET hits")?, "VALUE 2");

    // Every acknowledged write was on the disk before its reply: a kill -9 loses none.
    vm.kill();
    drop(vm);
    let _vm = boot(&ns, &disk)?;
    assert_eq!(line_request(&ns, "GET from-resp")?, "VALUE written-by-resp");
    assert_eq!(cli(&ns, &["GET", "from-line"])?, "written-by-line\n");
    assert_eq!(cli(&ns, &["GET", "hits"])?, "2\n");
    assert_eq!(cli(&ns, &["EXISTS", "gone"])?, "0\n");
    assert_eq!(cli(&ns, &["DBSIZE"])?, "3\n");
    Ok(())
}
