//! Host tests of the guest's `disk` workload's pure part: the pattern it writes and checks, and
//! its parameters.

#[path = "../guest/src/workloads/disk/pattern.rs"]
mod pattern;

use pattern::{fill, first_mismatch, params, word, Params, Rng, BLOCK};
use proptest::prelude::*;

#[test]
fn a_filled_buffer_checks_clean_and_every_kind_of_wrong_block_is_caught() {
    let mut buf = vec![0u8; 3 * BLOCK];
    fill(&mut buf, 7, 8 * BLOCK as u64, |_| 0);
    assert_eq!(first_mismatch(&buf, 7, 8 * BLOCK as u64, |_| 0), None);
    // Read from the wrong place (the block before), stale (an older version), another seed.
    let at = 8 * BLOCK as u64;
    assert_eq!(first_mismatch(&buf, 7, at - BLOCK as u64, |_| 0).map(|m| m.0), Some(at - BLOCK as u64));
    assert_eq!(first_mismatch(&buf, 7, at, |b| u8::from(b == 9)).map(|m| m.0), Some(at + BLOCK as u64));
    assert!(first_mismatch(&buf, 8, at, |_| 0).is_some());
    // One flipped bit in the last word of the last block.
    let last = buf.len() - 1;
    buf[last] ^= 0x10;
    let (off, expected, found) = first_mismatch(&buf, 7, at, |_| 0).unwrap();
    assert_eq!(off, at + buf.len() as u64 - 8);
    assert_eq!(expected ^ found, 0x10 << 56);
    // All zeros (a block never written) is never the pattern.
    assert!(first_mismatch(&[0u8; BLOCK], 7, 0, |_| 0).is_some());
}

#[test]
fn parameters_default_and_refuse_what_cannot_run() {
    let mib = 1u64 << 20;
    let max = 256 << 10;
    assert_eq!(
        params(None, None, None, None, 64 * mib, max),
        Ok(Params { size_mib: 16, bs_kib: 256, ops: 1000, seed: 1 })
    );
    assert_eq!(params(None, None, None, None, 4 * mib + 512, max).unwrap().size_mib, 4);
    assert_eq!(
        params(Some(8), Some(4), Some(10), Some(3), 8 * mib, max),
        Ok(Params { size_mib: 8, bs_kib: 4, ops: 10, seed: 3 })
    );
    assert!(params(Some(9), None, None, None, 8 * mib, max).is_err());
    assert!(params(Some(0), None, None, None, 8 * mib, max).is_err());
    assert!(params(None, None, None, None, mib - 512, max).is_err());
    assert!(params(Some(1), Some(512), None, None, 8 * mib, max).is_err());
    assert!(params(Some(1), Some(0), None, None, 8 * mib, max).is_err());
    assert!(params(Some(1), Some(3), None, None, 8 * mib, max).is_err(), "1 MiB is not whole 3 KiB blocks");
    assert!(params(Some(1), None, Some(10_000_001), None, 8 * mib, max).is_err());
}

#[test]
fn figures_are_rates() {
    assert_eq!(pattern::mb_per_s_x10(16 << 20, 1_000_000_000), 167);
    assert_eq!(pattern::per_second(1000, 500_000_000), 2000);
    assert_eq!(pattern::per_second(5, 0), 5_000_000_000);
}

proptest! {
    #[test]
    fn words_differ_across_offsets_versions_and_seeds(seed in any::<u64>(), offset in 0u64..1 << 40, v in any::<u8>()) {
        let offset = offset & !7;
        prop_assert_ne!(word(seed, offset, v), word(seed, offset + 8, v));
        prop_assert_ne!(word(seed, offset, v), word(seed, offset, v.wrapping_add(1)));
        prop_assert_ne!(word(seed, offset, v), word(seed ^ 1, offset, v));
    }

    #[test]
    fn random_blocks_stay_inside_and_repeat_for_a_seed(seed in any::<u64>(), blocks in 1u64..100_000) {
        let (mut a, mut b) = (Rng::new(seed), Rng::new(seed));
        for _ in 0..64 {
            let x = a.block(blocks);
            prop_assert!(x < blocks);
            prop_assert_eq!(x, b.block(blocks));
        }
    }
}
