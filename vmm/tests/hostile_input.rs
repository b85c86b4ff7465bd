//! What a hostile user can hand `ftvm` (issue 9): devices, FIFOs and huge sparse files where
//! files are expected, a stdout that is closed or never read, signals while ftvm waits, odd
//! flag values. Each gets a clear one-line error or a quiet defined end, in bounded memory and
//! time, never a panic or a hang.

use devices::Landmark;
use ftlog::{LogReader, LogWriter, Record};
use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm");

/// The address space ftvm gets where a test wants to see that it reads nothing big: its 128 MiB
/// of guest RAM and its threads fit easily; reading a 2 GiB file whole does not.
const ADDRESS_SPACE_LIMIT: u64 = 1 << 30;
/// The most memory refusing a bad file may take.
const REFUSAL_RSS_KIB: i64 = 64 * 1024;
/// A refusal is immediate; this only bounds a test that would otherwise hang.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(10);

/// How a child ended, read from wait4(2).
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    peak_rss_kib: i64,
    took: Duration,
    timed_out: bool,
}

impl Finished {
    fn describe(&self) -> String {
        format!(
            "status {:?}, {} KiB peak, {:?}{}\nstdout: {}\nstderr: {}",
            self.status,
            self.peak_rss_kib,
            self.took,
            if self.timed_out { " (killed at the deadline)" } else { "" },
            self.stdout,
            self.stderr
        )
    }

    /// Failed with a one-line message containing `needle`, within bounded time and memory.
    fn assert_refused(&self, needle: &str) {
        let what = self.describe();
        assert!(!self.timed_out, "ftvm hung: {what}");
        assert_eq!(self.status.code(), Some(1), "{what}");
        assert_eq!(self.stderr.trim_end().lines().count(), 1, "one line expected: {what}");
        assert!(self.stderr.contains(needle), "{needle:?} expected: {what}");
        assert!(self.peak_rss_kib < REFUSAL_RSS_KIB, "too much memory: {what}");
    }
}

/// Waits for `pid` until `deadline` (then kills it), keeping its resource usage.
fn wait_for(pid: libc::pid_t, started: Instant, deadline: Duration) -> (ExitStatus, i64, Duration, bool) {
    let mut timed_out = false;
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if timed_out { 0 } else { libc::WNOHANG };
        // SAFETY: `status` and `usage` are valid for the call; `pid` is our own child.
        let reaped = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        assert!(reaped >= 0, "wait4: {}", std::io::Error::last_os_error());
        if reaped == pid {
            return (ExitStatus::from_raw(status), usage.ru_maxrss, started.elapsed(), timed_out);
        }
        if started.elapsed() > deadline {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            timed_out = true;
            continue;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs ftvm with `args` in a limited address space, stdout and stderr into files.
fn ftvm_limited(args: &[&str]) -> Finished {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut command = Command::new(FTVM);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"));
    // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe and the
    // closure touches no state shared with the parent.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: ADDRESS_SPACE_LIMIT, rlim_max: ADDRESS_SPACE_LIMIT };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    #[allow(clippy::zombie_processes, reason = "reaped by wait4 in `wait_for`, which also reads its peak RSS")]
    let child = command.spawn().expect("ftvm starts");
    let (status, peak_rss_kib, took, timed_out) = wait_for(child.id() as libc::pid_t, started, REFUSAL_DEADLINE);
    Finished {
        status,
        stdout: std::fs::read_to_string(out_path).expect("stdout"),
        stderr: std::fs::read_to_string(err_path).expect("stderr"),
        peak_rss_kib,
        took,
        timed_out,
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

fn sparse_file(dir: &Path, name: &str, head: &[u8], size: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, head).expect("write head");
    File::options().write(true).open(&path).expect("open").set_len(size).expect("extend sparsely");
    path
}

fn mkfifo(path: &Path) {
    let name = CString::new(path_str(path)).expect("no NUL");
    // SAFETY: `name` is a valid NUL-terminated path for the call.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

/// A minimal bzImage (one setup sector, boot protocol 2.15) whose kernel powers off at once.
fn tiny_bzimage() -> Vec<u8> {
    let mut image = vec![0u8; 1024];
    image[0x1f1] = 1; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 0x01; // LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    image[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    image.resize(1024 + 0x1000, 0xf4);
    image
}

const TWO_GIB: u64 = 2 << 30;

#[test]
fn a_character_device_as_kernel_is_refused_before_anything_is_read() {
    // It used to read /dev/zero until the host's OOM killer came (23 GiB).
    ftvm_limited(&["run", "--kernel", "/dev/zero"]).assert_refused("kernel /dev/zero: is a character device");
}

#[test]
fn a_sparse_2_gib_kernel_is_refused_from_its_magic_or_its_size() {
    let dir = tempfile::tempdir().expect("temp dir");
    let zeros = sparse_file(dir.path(), "zeros", b"", TWO_GIB);
    ftvm_limited(&["run", "--kernel", path_str(&zeros)]).assert_refused("not an ELF file");
    let elf = sparse_file(dir.path(), "elf", b"\x7fELF\x02\x01\x01", TWO_GIB);
    ftvm_limited(&["run", "--kernel", path_str(&elf)]).assert_refused("2147483648 bytes do not fit in 128 MiB");
}

#[test]
fn a_sparse_2_gib_initrd_is_refused_from_its_size() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kernel = dir.path().join("bzImage");
    std::fs::write(&kernel, tiny_bzimage()).expect("kernel");
    let initrd = sparse_file(dir.path(), "initrd", b"", TWO_GIB);
    ftvm_limited(&["run", "--kernel", path_str(&kernel), "--initrd", path_str(&initrd)])
        .assert_refused("2147483648 bytes do not fit in 128 MiB");
    ftvm_limited(&["run", "--kernel", path_str(&kernel), "--initrd", "/dev/zero"])
        .assert_refused("initrd /dev/zero: is a character device");
}

#[test]
fn a_fifo_is_refused_wherever_a_file_is_expected_without_waiting_for_a_writer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let fifo = path_str(&fifo);
    let kernel = dir.path().join("bzImage");
    std::fs::write(&kernel, tiny_bzimage()).expect("kernel");
    let kernel = path_str(&kernel);
    let disk = format!("{fifo},readonly");
    let cases: [(&[&str], &str); 8] = [
        (&["log", fifo], "log"),
        (&["replay", fifo], "log"),
        (&["restore", fifo], "snapshot"),
        (&["run", "--kernel", fifo], "kernel"),
        (&["run", "--kernel", kernel, "--initrd", fifo], "initrd"),
        (&["run", "--guest", "hello", "--record", fifo], "log"),
        (&["run", "--guest", "hello", "--snapshot-at", "5", "--snapshot", fifo], "snapshot"),
        (&["run", "--guest", "hello", "--disk", &disk], "disk"),
    ];
    for (args, what) in cases {
        let finished = ftvm_limited(args);
        let needle = if what == "disk" {
            format!("disk {fifo}: is neither a regular file nor a block device")
        } else {
            format!("{what} {fifo}: is a FIFO (named pipe), not a regular file")
        };
        finished.assert_refused(&needle);
        assert!(finished.took < Duration::from_secs(2), "{args:?} took {:?}", finished.took);
    }
}

/// `--keys DIR` (or FT_KEYS) whose cluster.key is a FIFO: ftvm used to wait in open(2) for a
/// writer, silently, until a signal came.
#[test]
fn a_fifo_as_the_cluster_key_is_refused_without_waiting_for_a_writer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join(seal::KEY_FILE);
    mkfifo(&key);
    let finished = ftvm_limited(&["--keys", path_str(dir.path()), "status", "127.0.0.1:9"]);
    finished.assert_refused(&format!("the cluster key {} is a FIFO (named pipe), not a regular file", key.display()));
    assert!(finished.took < Duration::from_secs(2), "took {:?}", finished.took);
}

/// A pipe whose buffer holds one page, so that a little output fills it.
fn small_pipe() -> (File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is valid for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (read, write) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETPIPE_SZ on our own pipe.
    assert!(unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) } >= 4096);
    (read, write)
}

/// Whether the main thread of `pid` sleeps in write(2) on its stdout.
fn blocked_writing_stdout(pid: libc::pid_t) -> bool {
    let Ok(syscall) = std::fs::read_to_string(format!("/proc/{pid}/syscall")) else { return false };
    let mut fields = syscall.split_whitespace();
    fields.next() == Some(&libc::SYS_write.to_string()) && fields.next() == Some("0x1")
}

fn record(log: &Path, words: &[&str]) {
    let mut args = vec!["run", "--record", path_str(log), "--guest"];
    args.extend_from_slice(words);
    let output = Command::new(FTVM).args(&args).output().expect("ftvm starts");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn sigint_ends_ftvm_blocked_on_a_stdout_nobody_reads_within_a_second() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("timer.log");
    record(&log, &["timer", "100"]);
    let (read, write) = small_pipe();
    #[allow(clippy::zombie_processes, reason = "reaped by wait4 in `wait_for`")]
    let child = Command::new(FTVM)
        .args(["log", path_str(&log)])
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .spawn()
        .expect("ftvm starts");
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !blocked_writing_stdout(pid) {
        assert!(Instant::now() < deadline, "ftvm log never blocked on its full stdout");
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let (status, _, took, timed_out) = wait_for(pid, started, Duration::from_secs(10));
    assert!(!timed_out, "SIGINT was ignored while ftvm was blocked writing to its stdout");
    assert!(took < Duration::from_secs(1), "ftvm took {took:?} to end after SIGINT");
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{status:?}");
    drop(read);
}

#[test]
fn a_closed_stdout_ends_ftvm_log_quietly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("timer.log");
    record(&log, &["timer", "100"]);
    // `ftvm log LOG | head -1`. The dump (~28 KB) would fit in a default 64 KiB pipe, and ftvm
    // could then write it all and exit 0 before the reader goes; a 4 KiB pipe makes it wait.
    let (read, write) = small_pipe();
    let child = Command::new(FTVM)
        .args(["log", path_str(&log)])
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .spawn()
        .expect("ftvm starts");
    let mut first = String::new();
    BufReader::new(read).read_line(&mut first).expect("first line");
    assert!(first.starts_with("header: "), "{first}");
    let output = child.wait_with_output().expect("ftvm ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(141), "{:?}: {stderr}", output.status);
    assert!(stderr.is_empty(), "ftvm must end quietly: {stderr}");
}

#[test]
fn a_closed_stdout_stops_a_run_quietly_and_its_recording_stays_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("closed.log");
    let (read, write) = small_pipe();
    drop(read);
    let output = Command::new(FTVM)
        .args(["run", "--record", path_str(&log), "--guest", "timer", "1000"])
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .expect("ftvm runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(141), "{:?}: {stderr}", output.status);
    assert!(stderr.is_empty(), "ftvm must end quietly: {stderr}");
    // The guest was stopped at its first console write, long before its 1000 ticks; the log
    // was closed and replays.
    let replay = Command::new(FTVM).args(["replay", path_str(&log)]).output().expect("replay runs");
    let replayed = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "{replayed}{}", String::from_utf8_lossy(&replay.stderr));
    let exits: u64 = replayed
        .lines()
        .find_map(|l| l.strip_prefix("replay: ok, ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{replayed}"));
    assert!(exits < 1000, "the run went on after its stdout closed: {exits} exits");
}

#[test]
fn a_snapshot_the_run_never_reached_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let snapshot = dir.path().join("late.snap");
    let output = Command::new(FTVM)
        .args(["run", "--guest", "hello", "--snapshot-at", "1000000", "--snapshot", path_str(&snapshot)])
        .output()
        .expect("ftvm runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not written: the run ended after 107 exits, before --snapshot-at 1000000"), "{stderr}");
    assert!(!snapshot.exists());
}

#[test]
fn odd_flag_values_are_refused() {
    let cases: [(&[&str], &str); 3] = [
        (&["run", "--guest", "hello", "--record", "/nonexistent/x.log", "--digest-every", "0"], "--digest-every"),
        (&["run", "--guest", "hello", "--net", "tap=ftvmh9zero,mac=00:00:00:00:00:00"], "all zeros"),
        (&["run", "--guest", "hello", "--net", "tap=ftvmh9bcast,mac=ff:ff:ff:ff:ff:ff"], "multicast"),
    ];
    for (args, needle) in cases {
        let output = Command::new(FTVM).args(args).output().expect("ftvm starts");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn a_divergence_is_reported_on_stderr_on_a_line_of_its_own() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("timer.log");
    record(&log, &["timer", "20"]);
    let reader = LogReader::new(File::open(&log).expect("log")).expect("header");
    let header = reader.header().clone();
    let mut records: Vec<Record> = reader.map(|r| r.expect("record").1).collect();
    let index = records
        .iter()
        .position(|r| matches!(r, Record::Interrupt { at: Landmark::Exit(_), .. }))
        .expect("the timer log has interrupts");
    let Record::Interrupt { at: Landmark::Exit(n), vector } = records[index] else { unreachable!() };
    records[index] = Record::Interrupt { at: Landmark::Exit(n + 3), vector };
    let mut writer = LogWriter::new(File::create(&log).expect("log"), &header).expect("header");
    for record in &records {
        writer.write(record).expect("record");
    }
    writer.into_inner().expect("flush");
    let expected = format!("replay: diverged at Exit({n}): expected ");

    let apart = Command::new(FTVM).args(["replay", path_str(&log)]).output().expect("replay runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&apart.stdout), String::from_utf8_lossy(&apart.stderr));
    assert_eq!(apart.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with(&expected) && l.contains(", got ")), "{stderr}");
    assert!(!stdout.contains("replay: "), "the verdict belongs on stderr: {stdout}");

    // Both to one file, as on a terminal: the verdict starts a line even if the guest's console
    // was in the middle of one.
    let both = dir.path().join("both");
    let file = File::create(&both).expect("output file");
    let status = Command::new(FTVM)
        .args(["replay", path_str(&log)])
        .stdout(file.try_clone().expect("dup"))
        .stderr(file)
        .status()
        .expect("replay runs");
    assert_eq!(status.code(), Some(3));
    let text = std::fs::read_to_string(&both).expect("output");
    assert!(text.lines().any(|l| l.starts_with(&expected)), "{text}");
}
