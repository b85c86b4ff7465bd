//! `clock [N]`: N reads of the monotonic clock between two reads of the wall clock. The
//! digest covers every value read, in order (so a replay must return the same values).

use crate::clock::{monotonic_ns, wall_ns};
use crate::digest::Digest;

pub fn run(n: u64) -> Result<(), &'static str> {
    if n == 0 {
        return Err("N must be at least 1");
    }
    let mut digest = Digest::new();
    let wall_start = wall_ns();
    digest.u64(wall_start);
    let first = monotonic_ns();
    digest.u64(first);
    let mut last = first;
    let mut backwards = 0u64;
    for _ in 1..n {
        let t = monotonic_ns();
        digest.u64(t);
        if t < last {
            backwards += 1;
        }
        last = t;
    }
    let wall_end = wall_ns();
    digest.u64(wall_end);

    let elapsed = last - first;
    println!("clock: {} reads, {} ns elapsed ({} ns per read)", n, elapsed, elapsed / n.max(2).saturating_sub(1));
    let (y, mo, d) = civil_from_days((wall_end / 1_000_000_000 / 86400) as i64);
    let secs_of_day = wall_end / 1_000_000_000 % 86400;
    println!(
        "clock: wall {}.{:09} s since the epoch = {:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        wall_end / 1_000_000_000,
        wall_end % 1_000_000_000,
        y,
        mo,
        d,
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    );
    println!("clock: wall advanced {} ns during the reads", wall_end.wrapping_sub(wall_start) as i64);
    if backwards != 0 {
        println!("clock: ERROR: monotonic clock went backwards {} times", backwards);
        digest.print();
        return Err("monotonic clock went backwards");
    }
    digest.print();
    Ok(())
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (era * 400 + yoe + if m <= 2 { 1 } else { 0 }, m, d)
}
