//! VM disks on gfs: a real master and three chunkservers (the `gfs` binary, built with
//! `cargo build --release -p storage`), `ftvm disk create/import/export`, the gfs block backend
//! through chunkserver and master failures and fencing, and the kv guest serving from a gfs
//! disk in a network namespace, its bytes read back through `ftvm disk export`.

use ftvm_tests::kv::{Client as KvClient, PhasedSets, GUEST_IP};
use ftvm_tests::{binary, cannot_run, namespaces_unavailable, NetNs, Process};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use vmm::gfs_disk::{DiskFence, FencedOut, GfsAccess, GfsDisk, GfsDiskError};

use devices::virtio::BlockBackend;

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm");

/// A gfs master and chunkservers, on loopback or inside a network namespace; killed on drop.
struct Cluster<'a> {
    dir: tempfile::TempDir,
    ns: Option<&'a NetNs>,
    master_addr: String,
    master_args: Vec<String>,
    master: Option<Child>,
    chunkservers: Vec<(String, Option<Child>)>,
}

/// A port nobody listens on now, on this namespace's loopback.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

impl<'a> Cluster<'a> {
    /// A master with `master_args` and `n` chunkservers, all of them heard by the master.
    fn start(ns: Option<&'a NetNs>, n: usize, master_args: &[&str]) -> Cluster<'a> {
        let port = |i: usize| match ns {
            // A fresh namespace has every port free.
            Some(_) => format!("127.0.0.1:{}", 7100 + i),
            None => free_addr(),
        };
        // This process's own gfs connections use the test's cluster key too.
        ftvm_tests::keys().expect("the test's cluster key");
        let mut c = Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            ns,
            master_addr: port(0),
            master_args: master_args.iter().map(|s| s.to_string()).collect(),
            master: None,
            chunkservers: Vec::new(),
        };
        c.start_master();
        for i in 0..n {
            c.chunkservers.push((port(i + 1), None));
            c.start_chunkserver(i);
        }
        c.wait_for_chunkservers(n);
        c
    }

    fn command(&self, program: &Path) -> Command {
        match self.ns {
            Some(ns) => ns.command(program),
            None => {
                let mut command = Command::new(program);
                ftvm_tests::with_keys(&mut command).expect("the test's cluster key");
                command
            }
        }
    }

    fn spawn(&self, args: &[String], log: &str) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(log)).expect("log");
        self.command(&binary("gfs").expect("the gfs binary (cargo build --release -p storage)"))
            .args(args)
            .arg("-v")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn gfs")
    }

    fn start_master(&mut self) {
        let mut args: Vec<String> = ["master", "--dead-after-secs", "2", "--listen", &self.master_addr, "--dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(self.dir.path().join("master").display().to_string());
        args.extend(self.master_args.iter().cloned());
        self.master = Some(self.spawn(&args, "master.log"));
        self.wait_listening(&self.master_addr.clone());
    }

    fn kill_master(&mut self) {
        if let Some(mut child) = self.master.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn start_chunkserver(&mut self, i: usize) {
        let addr = self.chunkservers[i].0.clone();
        let args: Vec<String> = [
            "chunkserver",
            "--master",
            &self.master_addr,
            "--listen",
            &addr,
            "--rack",
            &format!("rack{i}"),
            "--heartbeat-ms",
            "100",
            "--dir",
            &self.dir.path().join(format!("cs{i}")).display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.chunkservers[i].1 = Some(self.spawn(&args, &format!("cs{i}.log")));
        self.wait_listening(&addr);
    }

    fn kill_chunkserver(&mut self, i: usize) {
        if let Some(mut child) = self.chunkservers[i].1.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Polls until `addr` takes connections (from inside the namespace, if there is one).
    fn wait_listening(&self, addr: &str) {
        let addr = addr.to_owned();
        let poll = move || -> anyhow::Result<()> {
            let deadline = Instant::now() + Duration::from_secs(20);
            while TcpStream::connect(&addr).is_err() {
                anyhow::ensure!(Instant::now() < deadline, "{addr} never listened");
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        };
        match self.ns {
            Some(ns) => ns.within(poll),
            None => poll(),
        }
        .expect("gfs server listening");
    }

    /// Polls `gfs status` until the master counts `n` live chunkservers.
    fn wait_for_chunkservers(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.gfs(&["status"]);
            let up = String::from_utf8_lossy(&out.stdout).matches(" up ").count();
            if up >= n {
                return;
            }
            assert!(Instant::now() < deadline, "only {up} of {n} chunkservers up: {out:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn gfs(&self, args: &[&str]) -> Output {
        self.command(&binary("gfs").expect("gfs binary"))
            .arg("--master")
            .arg(&self.master_addr)
            .args(args)
            .output()
            .expect("run gfs")
    }

    /// `ftvm ARGS` with GFS_MASTER set to this cluster, in its namespace.
    fn ftvm(&self, args: &[&str]) -> Output {
        self.command(Path::new(FTVM)).args(args).env("GFS_MASTER", &self.master_addr).output().expect("run ftvm")
    }

    fn ftvm_ok(&self, args: &[&str]) -> String {
        let out = self.ftvm(args);
        assert!(out.status.success(), "ftvm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn client(&self) -> storage::Client {
        storage::Client::new(&self.master_addr)
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        self.kill_master();
        for i in 0..self.chunkservers.len() {
            self.kill_chunkserver(i);
        }
    }
}

fn assert_one_line_error(output: &Output, needle: &str) {
    assert!(!output.status.success(), "expected failure, got {:?}", output.status);
    assert_ne!(output.status.code(), Some(101), "a panic is not an error message");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line expected: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn disk_commands_copy_images_in_and_out_and_refuse_bad_input_in_one_line() {
    let c = Cluster::start(None, 3, &[]);
    let dir = tempfile::tempdir().unwrap();

    // An image with data, a run of zeros (left as a hole on gfs) and an odd tail.
    let mut image = pattern(3 << 20, 1);
    image.extend(std::iter::repeat_n(0u8, 9 << 20));
    image.extend(pattern(4096 + 100, 2));
    let local = dir.path().join("in.img");
    std::fs::write(&local, &image).unwrap();
    let out = c.ftvm_ok(&["disk", "import", local.to_str().unwrap(), "gfs:/vm/imported.img", "--fence", "vm1"]);
    assert!(out.contains("fenced by register ft.vm1"), "{out}");
    let stat = c.client().stat("/vm/imported.img").unwrap();
    assert_eq!(stat.size, image.len() as u64);
    assert_eq!(stat.register.as_deref(), Some("ft.vm1"));
    assert!(stat.chunks.len() <= 2, "the zeros were written: {stat:?}");
    let back = dir.path().join("out.img");
    c.ftvm_ok(&["disk", "export", "gfs:/vm/imported.img", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == image, "the exported image differs from the imported one");

    // A new disk reads as zeros from end to end, and has its size.
    c.ftvm_ok(&["disk", "create", "gfs:/vm/blank.img", "--size", "5M"]);
    c.ftvm_ok(&["disk", "export", "gfs:/vm/blank.img", back.to_str().unwrap()]);
    let blank = std::fs::read(&back).unwrap();
    assert_eq!(blank.len(), 5 << 20);
    assert!(blank.iter().all(|&b| b == 0));

    for (args, needle) in [
        (vec!["disk", "create", "gfs:/vm/x.img", "--size", "12Q"], "--size \"12Q\""),
        (vec!["disk", "create", "gfs:/vm/x.img", "--size", "1000"], "512-byte sectors"),
        (vec!["disk", "create", "gfs:/vm/x.img", "--size", "0"], "512-byte sectors"),
        (vec!["disk", "create", "gfs:/vm/x.img", "--size", "99999999T"], "largest file"),
        (vec!["disk", "create", "/vm/x.img", "--size", "1M"], "expected gfs:/PATH"),
        (vec!["disk", "create", "gfs:vm/x.img", "--size", "1M"], "expected gfs:/PATH"),
        (vec!["disk", "create", "gfs:/vm/blank.img", "--size", "1M"], "gfs:/vm/blank.img: already exists"),
        (vec!["disk", "create", "gfs:/vm/x.img", "--size", "1M", "--fence", "a b"], "--fence"),
        (vec!["disk", "import", "/nonexistent/in.img", "gfs:/vm/x.img"], "/nonexistent/in.img: no such file"),
        (vec!["disk", "import", local.to_str().unwrap(), "gfs:/vm/blank.img"], "already exists"),
        (vec!["disk", "export", "gfs:/vm/missing.img", back.to_str().unwrap()], "gfs:/vm/missing.img: no such file"),
        (vec!["disk", "export", "gfs:/vm", back.to_str().unwrap()], "is a directory"),
        (vec!["disk", "export", "gfs:/vm/blank.img", dir.path().to_str().unwrap()], "is a directory"),
        (
            vec!["disk", "create", "gfs:/vm/x.img", "--size", "1M", "--gfs-master", "127.0.0.1:1"],
            "the gfs master at 127.0.0.1:1 cannot be reached",
        ),
    ] {
        assert_one_line_error(&c.ftvm(&args), needle);
    }
    // A refused import left the disk it would have replaced alone.
    assert_eq!(c.client().stat("/vm/blank.img").unwrap().size, 5 << 20);
    assert!(c.client().stat("/vm/x.img").is_err(), "a refused create left a file behind");

    let no_master = Command::new(FTVM)
        .env(seal::KEYS_ENV, ftvm_tests::keys().unwrap())
        .args(["disk", "create", "gfs:/vm/x.img", "--size", "1M"])
        .env_remove("GFS_MASTER")
        .output()
        .unwrap();
    assert_one_line_error(&no_master, "no gfs master given: use --gfs-master ADDR or set GFS_MASTER");
    let run_without_master = Command::new(FTVM)
        .env(seal::KEYS_ENV, ftvm_tests::keys().unwrap())
        .args(["run", "--guest", "hello", "--disk", "gfs:/vm/blank.img"])
        .env_remove("GFS_MASTER")
        .output()
        .unwrap();
    assert_one_line_error(&run_without_master, "--disk: disk gfs:/vm/blank.img: no gfs master given");
    for (disk, needle) in [
        ("gfs:/vm/missing.img", "no such file on gfs"),
        ("gfs:/vm/imported.img", "fenced by register ft.vm1: run it with --ft vm1"),
    ] {
        assert_one_line_error(&c.ftvm(&["run", "--guest", "hello", "--disk", disk]), needle);
    }
    // A malformed --disk is refused by the argument parser, with its usage hint.
    let out = c.ftvm(&["run", "--guest", "hello", "--disk", "gfs:vm"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a gfs disk is gfs:/PATH[,readonly]"), "{out:?}");
    // A fenced disk read-only needs no fence; a hello guest boots over it.
    let out = c.ftvm_ok(&["run", "--guest", "hello", "--disk", "gfs:/vm/imported.img,readonly"]);
    assert!(out.contains("exits:"), "{out}");
}

/// A disk of `size` bytes made through the library, bound to `register` if given.
fn make_disk(client: &storage::Client, path: &str, size: u64, register: Option<&str>) {
    client.create(path).unwrap();
    if let Some(register) = register {
        client.bind(path, register).unwrap();
    }
    client.extend_size(path, size).unwrap();
}

#[test]
fn the_backend_reads_zeros_and_writes_through_chunkserver_and_master_failures() {
    let mut c = Cluster::start(None, 3, &["--lease-secs", "2"]);
    let client = c.client();
    make_disk(&client, "/disk", 8 << 20, None);
    let access = GfsAccess::new(Some(c.master_addr.clone()));
    let disk = GfsDisk::open(&access, "/disk", false).unwrap();
    assert_eq!(disk.size(), 8 << 20);
    assert_eq!(disk.name(), "gfs:/disk");
    let mut buf = vec![0xffu8; 64 << 10];
    disk.read_at((8 << 20) - (64 << 10), &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "a never-written block is not zeros");

    let data = pattern(1 << 20, 3);
    disk.write_at(4096, &data).unwrap();
    disk.flush().unwrap();
    let mut back = vec![0u8; data.len()];
    disk.read_at(4096, &mut back).unwrap();
    assert!(back == data);
    assert!(disk.write_at((8 << 20) - 4, b"beyond").is_err(), "a write past the end was taken");

    // One chunkserver dies: writes keep going (retried until the master moves on).
    c.kill_chunkserver(0);
    for i in 0..8u64 {
        disk.write_at(i * 512, &pattern(512, 10 + i)).unwrap();
    }
    disk.flush().unwrap();
    // The master dies and comes back while a write waits on it.
    let writer = std::thread::scope(|s| {
        c.kill_master();
        let job = s.spawn(|| {
            let started = Instant::now();
            disk.write_at(6 << 20, &pattern(4096, 99)).and_then(|()| disk.flush()).map(|()| started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(500));
        c.start_master();
        job.join().unwrap()
    });
    let took = writer.expect("a write across a master restart failed");
    for i in 0..8u64 {
        let mut sector = [0u8; 512];
        disk.read_at(i * 512, &mut sector).unwrap();
        assert!(sector[..] == pattern(512, 10 + i)[..], "sector {i}");
    }
    let mut block = vec![0u8; 4096];
    disk.read_at(6 << 20, &mut block).unwrap();
    assert!(block == pattern(4096, 99));
    eprintln!("write across a master restart took {took:?}; longest stall {:?}", disk.longest_stall());

    // Read-only: reads work, writes are refused as the file backend refuses them.
    let readonly = GfsDisk::open(&access, "/disk", true).unwrap();
    assert_eq!(readonly.write_at(0, b"x").unwrap_err().raw_os_error(), Some(libc::EROFS));
    readonly.read_at(6 << 20, &mut block).unwrap();
    assert!(block == pattern(4096, 99));
}

#[test]
fn a_fenced_disk_writes_under_its_generation_and_is_fenced_out_distinctly() {
    let c = Cluster::start(None, 3, &["--lease-secs", "2"]);
    let client = c.client();
    make_disk(&client, "/fenced", 4 << 20, Some("ft.vm"));
    make_disk(&client, "/open", 4 << 20, None);
    let master = Some(c.master_addr.clone());

    let unfenced = GfsAccess::new(master.clone());
    let e = GfsDisk::open(&unfenced, "/fenced", false).err().expect("a fenced disk opened without a fence");
    assert!(matches!(e, GfsDiskError::NeedsFence { .. }), "{e}");
    assert!(e.to_string().contains("--ft vm"), "{e}");
    GfsDisk::open(&unfenced, "/fenced", true).expect("read-only needs no fence");

    let fence = DiskFence::default();
    let access = GfsAccess::new(master).with_fence(fence.clone());
    fence.set("ft.other", 1);
    let e = GfsDisk::open(&access, "/fenced", false).err().expect("opened under another register");
    assert!(matches!(e, GfsDiskError::WrongFence { .. }), "{e}");

    let g1 = client.compare_and_set("ft.vm", 0, "A").unwrap();
    fence.set("ft.vm", g1);
    let e = GfsDisk::open(&access, "/open", false).err().expect("a fenced VM opened an unfenced disk");
    assert!(matches!(e, GfsDiskError::Unfenced { .. }), "{e}");
    assert!(e.to_string().contains("--fence NAME"), "{e}");
    let disk = GfsDisk::open(&access, "/fenced", false).unwrap();
    disk.write_at(0, b"written by A at g1").unwrap();

    // Another side wins: A's next write is fenced out, distinctly, naming the new generation.
    let g2 = client.compare_and_set("ft.vm", g1, "B").unwrap();
    let e = disk.write_at(512, b"A's late write").unwrap_err();
    let fenced = FencedOut::find(&e).unwrap_or_else(|| panic!("not a FencedOut: {e}"));
    assert_eq!((fenced.register.as_str(), fenced.generation, fenced.ours), ("ft.vm", g2, g1));
    let mut sector = [0u8; 512];
    disk.read_at(512, &mut sector).unwrap();
    assert!(sector.iter().all(|&b| b == 0), "the fenced write landed");

    // A wins again later: the same disk writes with the raised token.
    let g3 = client.compare_and_set("ft.vm", g2, "A").unwrap();
    fence.set("ft.vm", g3);
    disk.write_at(512, b"A again at g3").unwrap();
    disk.read_at(512, &mut sector).unwrap();
    assert_eq!(&sector[..13], b"A again at g3");
}

/// The lightest guest that writes its disk: kv formats a blank disk at boot and logs every SET
/// before it answers.
#[test]
fn kv_serves_from_a_gfs_disk_and_its_bytes_read_back_through_export() {
    if let Some(why) = namespaces_unavailable() {
        return cannot_run(&why);
    }
    let ns = NetNs::new("gfsdisk").unwrap();
    ns.tap("tap0", "10.0.0.1/24").unwrap();
    let c = Cluster::start(Some(&ns), 3, &[]);
    c.ftvm_ok(&["disk", "create", "gfs:/vm/kv.img", "--size", "64M"]);

    let boot = || {
        let mut command = ns.command(Path::new(FTVM));
        command.args(["run", "--guest", "kv", &format!("ip={GUEST_IP}/24"), "--net", "tap=tap0"]);
        command.args(["--disk", "gfs:/vm/kv.img", "--gfs-master", &c.master_addr]);
        let mut vm = Process::spawn(command).unwrap();
        vm.wait_for("kv: listening on", Duration::from_secs(60)).unwrap();
        vm
    };
    let mut vm = boot();
    assert!(vm.output().contains("kv: blank disk, new log written"), "{}", vm.output());
    let values: Vec<String> = (0..20).map(|i| format!("gfs-disk-value-{i:02}-{}", "v".repeat(i * 7))).collect();
    let to_set = values.clone();
    ns.within(move || {
        let mut kv = KvClient::connect()?;
        for (i, v) in to_set.iter().enumerate() {
            anyhow::ensure!(kv.request(&format!("SET key{i} {v}"))? == "OK");
        }
        Ok(())
    })
    .unwrap();
    vm.kill();

    // A new VM over the same gfs file replays the log the first one wrote.
    let vm = boot();
    assert!(vm.output().contains("kv: replayed 20 record(s)"), "{}", vm.output());
    let expected = values.clone();
    ns.within(move || {
        let mut kv = KvClient::connect()?;
        for (i, v) in expected.iter().enumerate() {
            let answer = kv.request(&format!("GET key{i}"))?;
            anyhow::ensure!(answer == format!("VALUE {v}"), "GET key{i}: {answer}");
        }
        Ok(())
    })
    .unwrap();
    drop(vm);

    let dir = tempfile::tempdir().unwrap();
    let local: PathBuf = dir.path().join("kv.img");
    c.ftvm_ok(&["disk", "export", "gfs:/vm/kv.img", local.to_str().unwrap()]);
    let image = std::fs::read(&local).unwrap();
    assert_eq!(image.len(), 64 << 20);
    // Generation 1's superblock is in slot 1.
    assert_eq!(&image[512..520], b"FTVMKVLG", "no kv superblock at sector 1");
    for v in &values {
        assert!(image.windows(v.len()).any(|w| w == v.as_bytes()), "{v} is not on the exported disk");
    }
}

/// Issue 12 point 5 under a running VM: kv takes SETs without pause on one connection while one
/// of four chunkservers is killed -9 and then the master is killed -9 and restarted. The VM
/// keeps serving on the same connection, gfs re-replicates the lost replicas, and every
/// acknowledged SET reads back, from the running VM and from a new VM over the same gfs file.
/// Prints the longest gap between two replies the client saw around each fault.
#[test]
fn kv_on_gfs_keeps_serving_through_a_chunkserver_death_and_a_master_restart() {
    if let Some(why) = namespaces_unavailable() {
        return cannot_run(&why);
    }
    let ns = NetNs::new("gfsfaults").unwrap();
    ns.tap("tap0", "10.0.0.1/24").unwrap();
    let mut c = Cluster::start(Some(&ns), 4, &[]);
    c.ftvm_ok(&["disk", "create", "gfs:/vm/kv.img", "--size", "64M"]);
    let boot = |c: &Cluster| {
        let mut command = ns.command(Path::new(FTVM));
        command.args(["run", "--guest", "kv", &format!("ip={GUEST_IP}/24"), "--net", "tap=tap0"]);
        command.args(["--disk", "gfs:/vm/kv.img", "--gfs-master", &c.master_addr]);
        let mut vm = Process::spawn(command).unwrap();
        vm.wait_for("kv: listening on", Duration::from_secs(60)).unwrap();
        vm
    };
    let vm = boot(&c);

    // The longest gap between two replies in each phase: before, after the kill, after the restart.
    let load = PhasedSets::start(&ns, "fault", |i| format!("value-{i}"));
    load.wait_for_more(100).unwrap();
    // Kill a chunkserver holding the disk's first chunk.
    let stat = String::from_utf8_lossy(&c.gfs(&["stat", "/vm/kv.img"]).stdout).into_owned();
    let holder = stat
        .lines()
        .find_map(|l| l.strip_prefix("chunk 0 ")?.split(" replicas ").nth(1)?.split('@').next())
        .unwrap_or_else(|| panic!("no replica of chunk 0: {stat}"))
        .to_owned();
    let victim = c.chunkservers.iter().position(|(addr, _)| *addr == holder).unwrap();
    load.enter_phase(1);
    c.kill_chunkserver(victim);
    load.wait_for_more(200).unwrap();
    // gfs re-replicates onto the fourth chunkserver.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let fsck = String::from_utf8_lossy(&c.gfs(&["fsck"]).stdout).into_owned();
        if fsck.contains(" 0 under-replicated, 0 missing") {
            break;
        }
        assert!(Instant::now() < deadline, "not re-replicated: {fsck}");
        std::thread::sleep(Duration::from_millis(200));
    }
    load.enter_phase(2);
    c.kill_master();
    c.start_master();
    load.wait_for_more(200).unwrap();
    let (sets, [before, after_kill, after_restart]) = load.finish().unwrap();
    eprintln!(
        "{sets} SETs; longest gap between replies: {before:?} before the faults, {after_kill:?} after the \
         chunkserver kill, {after_restart:?} after the master restart"
    );

    let check = move || -> anyhow::Result<()> {
        let mut kv = KvClient::connect()?;
        for i in 0..sets {
            let answer = kv.request(&format!("GET fault{i}"))?;
            anyhow::ensure!(answer == format!("VALUE value-{i}"), "GET fault{i}: {answer}");
        }
        Ok(())
    };
    ns.within(check).unwrap();
    drop(vm);
    let vm = boot(&c);
    assert!(vm.output().contains(&format!("kv: replayed {sets} record(s)")), "{}", vm.output());
    ns.within(check).unwrap();
}
