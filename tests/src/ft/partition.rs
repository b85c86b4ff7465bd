//! Partitions of the FT topology (issue 15, point 2): a host cut off from everything (its port
//! on the switch down, as a pulled cable), and one direction of the link between the hosts
//! dropped; and the judge of split brains, from the sides' own timestamped lines.

use super::{FtNet, Host, TAP};
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

impl FtNet {
    /// Cuts `host` off from everything (the other host, gfs, the client): its port on the
    /// switch goes down (`ip link set port-X down`).
    pub fn isolate(&self, host: Host) -> Result<()> {
        self.switch.ip(&["link", "set", host.switch_port(), "down"])
    }

    /// Undoes [`FtNet::isolate`].
    pub fn reconnect(&self, host: Host) -> Result<()> {
        self.switch.ip(&["link", "set", host.switch_port(), "up"])
    }

    /// Drops what `from` sends to the other host (one direction of their logging channel): a
    /// blackhole route on `from`; the other direction, gfs and the client stay reachable.
    pub fn cut_one_way(&self, from: Host) -> Result<()> {
        self.host(from).ip(&["route", "add", "blackhole", &format!("{}/32", from.other().ip())])
    }

    /// Undoes [`FtNet::cut_one_way`].
    pub fn restore_one_way(&self, from: Host) -> Result<()> {
        self.host(from).ip(&["route", "del", "blackhole", &format!("{}/32", from.other().ip())])
    }
}

impl FtNet {
    /// Starts watching both hosts' TAPs: every frame a VMM writes into its TAP is output that
    /// left its VM, seen from outside the VMM.
    pub fn watch_taps(&self) -> TapWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = [Host::A, Host::B]
            .into_iter()
            .map(|host| {
                let stop = Arc::clone(&stop);
                (host, self.host(host).spawn_within(move || sample_tap(&stop)))
            })
            .collect();
        TapWatch { stop, threads }
    }
}

/// How often [`TapWatch`] reads the TAPs' counters.
const TAP_SAMPLE: Duration = Duration::from_millis(1);

/// Frames written into each host's TAP, sampled every [`TAP_SAMPLE`] with the time.
pub struct TapWatch {
    stop: Arc<AtomicBool>,
    threads: Vec<(Host, JoinHandle<Result<Vec<TapWrite>>>)>,
}

/// The TAP's count of frames written into it went up between two samples.
#[derive(Clone, Copy, Debug)]
pub struct TapWrite {
    /// The sample before, which had not seen it (Unix seconds).
    pub after: f64,
    /// The sample that saw it.
    pub seen: f64,
    pub frames: u64,
}

impl TapWatch {
    /// Stops and returns, per host, the writes seen.
    pub fn finish(mut self) -> Result<Vec<(Host, Vec<TapWrite>)>> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for (host, thread) in self.threads.drain(..) {
            let writes = thread.join().map_err(|_| anyhow::anyhow!("the TAP watch thread panicked"))??;
            all.push((host, writes));
        }
        Ok(all)
    }
}

impl Drop for TapWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// In a thread inside a host's namespace: its TAP's receive counter (the frames its VMM wrote)
/// from `/proc/thread-self/net/dev`, which shows this thread's namespace.
fn sample_tap(stop: &AtomicBool) -> Result<Vec<TapWrite>> {
    let mut writes = Vec::new();
    let mut last: Option<(f64, u64)> = None;
    while !stop.load(Ordering::SeqCst) {
        let text = std::fs::read_to_string("/proc/thread-self/net/dev").context("read /proc/thread-self/net/dev")?;
        let now = unix_now();
        let frames = tap_frames(&text).with_context(|| format!("no {TAP} in /proc/net/dev:\n{text}"))?;
        if let Some((before, count)) = last {
            if frames > count {
                writes.push(TapWrite { after: before, seen: now, frames: frames - count });
            }
        }
        last = Some((now, frames));
        std::thread::sleep(TAP_SAMPLE);
    }
    Ok(writes)
}

/// The frames received by the TAP (written into it by its VMM) in `/proc/net/dev` text.
fn tap_frames(dev: &str) -> Option<u64> {
    dev.lines().find_map(|line| {
        let (name, counters) = line.split_once(':')?;
        if name.trim() != TAP {
            return None;
        }
        counters.split_whitespace().nth(1)?.parse().ok()
    })
}

/// Now, in the sides' clock (Unix seconds).
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// When one VMM released output, from its lines `ft: output released from T (generation G)`
/// and `ft: halting; output last released at T` (see `vmm::ft::timeline`).
#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseSpan {
    pub label: String,
    /// Its first go-live.
    pub from: f64,
    /// Its last release: the halting line's time, else `ended` (when it was killed, or now
    /// for a side still running).
    pub until: f64,
}

/// The span of output a VMM that printed `output` released; `None` if it never went live.
/// `ended` stands for the end of a side that did not halt by itself (killed or still running).
pub fn release_span(label: &str, output: &str, ended: f64) -> Result<Option<ReleaseSpan>> {
    let mut from = None;
    let mut until = None;
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("ft: output released from ") {
            let time = rest.split_whitespace().next().unwrap_or_default();
            let time: f64 = time.parse().with_context(|| format!("{label}: no time in {line:?}"))?;
            from.get_or_insert(time);
        } else if let Some(time) = line.strip_prefix("ft: halting; output last released at ") {
            until = Some(time.parse().with_context(|| format!("{label}: no time in {line:?}"))?);
        } else if line == "ft: halting; no output released" {
            return Ok(None);
        }
    }
    Ok(from.map(|from| ReleaseSpan { label: label.to_owned(), from, until: until.unwrap_or(ended) }))
}

/// Every pair of spans of different VMMs that overlap: a time both released output.
pub fn overlaps(spans: &[ReleaseSpan]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            if a.from <= b.until && b.from <= a.until {
                let both = a.until.min(b.until) - a.from.max(b.from);
                found.push(format!(
                    "{} (released {:.6}..{:.6}) and {} (released {:.6}..{:.6}) both released output for {:.1} ms",
                    a.label,
                    a.from,
                    a.until,
                    b.label,
                    b.from,
                    b.until,
                    both * 1e3
                ));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::{overlaps, release_span, tap_frames};

    #[test]
    fn the_tap_counter_is_the_second_receive_column() {
        let dev = "Inter-|   Receive                            |  Transmit\n \
                   face |bytes    packets errs drop fifo frame compressed multicast|bytes packets\n    \
                   lo:       0       0    0    0    0     0          0         0        0       0\n  \
                   tap0:   98765     321    0    0    0     0          0         0     4455      12\n";
        assert_eq!(tap_frames(dev), Some(321));
        assert_eq!(tap_frames("    lo: 1 2 3\n"), None);
    }

    #[test]
    fn a_halted_side_released_until_its_halting_line_and_a_side_that_never_won_not_at_all() {
        let primary = "ft: live as kv generation 1\nft: output released from 100.000000 (generation 1)\n\
                       ft: lost the go-live race to b@x (generation 2): halting\n\
                       ft: halting; output last released at 105.250000\n";
        let span = release_span("a", primary, 999.0).unwrap().unwrap();
        assert_eq!((span.from, span.until), (100.0, 105.25));
        let running = "ft: output released from 106.000000 (generation 2)\n";
        assert_eq!(release_span("b", running, 200.0).unwrap().unwrap().until, 200.0);
        let lost = "ft: lost the go-live race to a@x (generation 2): halting\nft: halting; no output released\n";
        assert_eq!(release_span("b", lost, 200.0).unwrap(), None);
        assert!(release_span("b", "ft: output released from soon (generation 2)\n", 1.0).is_err());
    }

    #[test]
    fn spans_that_share_an_instant_overlap_and_spans_one_after_the_other_do_not() {
        let a = release_span("a", "ft: output released from 100.0 (generation 1)\n", 105.0).unwrap().unwrap();
        let b = release_span("b", "ft: output released from 105.1 (generation 2)\n", 110.0).unwrap().unwrap();
        assert!(overlaps(&[a.clone(), b]).is_empty());
        let c = release_span("c", "ft: output released from 104.9 (generation 2)\n", 110.0).unwrap().unwrap();
        let found = overlaps(&[a, c]);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("both released output for 100.0 ms"), "{found:?}");
    }
}
