//! The lines `ftvm` prints for the FT pair, matched exactly: a whole line, with placeholders for
//! the parts that vary.

use crate::Process;
use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};

/// Whether `line` is `pattern`, where `{n}` stands for a whole number, `{landmark}` for
/// `Exit(n)` or `Preempt(n)` and `{any}` for any non-empty text; the parts that stood there.
pub fn match_line(line: &str, pattern: &str) -> Option<Vec<String>> {
    let (mut rest, mut pattern) = (line, pattern);
    let mut captures = Vec::new();
    loop {
        let Some(open) = pattern.find('{') else {
            return (rest == pattern).then_some(captures);
        };
        rest = rest.strip_prefix(&pattern[..open])?;
        let close = open + pattern[open..].find('}')?;
        let taken = match &pattern[open + 1..close] {
            "n" => digits(rest),
            "landmark" => landmark_len(rest),
            // Any non-empty text, up to where the pattern's next literal part starts.
            "any" => {
                let next = &pattern[close + 1..];
                let literal = &next[..next.find('{').unwrap_or(next.len())];
                if literal.is_empty() {
                    rest.len()
                } else {
                    rest.find(literal).unwrap_or(0)
                }
            }
            _ => 0,
        };
        if taken == 0 {
            return None;
        }
        captures.push(rest[..taken].to_owned());
        rest = &rest[taken..];
        pattern = &pattern[close + 1..];
    }
}

fn digits(text: &str) -> usize {
    text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len()
}

fn landmark_len(text: &str) -> usize {
    for prefix in ["Exit(", "Preempt("] {
        if let Some(after) = text.strip_prefix(prefix) {
            let n = digits(after);
            if n > 0 && after[n..].starts_with(')') {
                return prefix.len() + n + 1;
            }
        }
    }
    0
}

/// Polls `process` until it prints a line that is exactly `pattern` (see [`match_line`]);
/// returns the line's variable parts.
pub fn wait_for_line(process: &mut Process, pattern: &str, timeout: Duration) -> Result<Vec<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(parts) = process.output().lines().find_map(|line| match_line(line, pattern)) {
            return Ok(parts);
        }
        let stem = pattern.split('{').next().unwrap_or(pattern);
        if process.exited()?.is_some() {
            // Everything it printed is in its output once it has exited.
            let status = process.wait(Duration::from_secs(5))?;
            if let Some(parts) = process.output().lines().find_map(|line| match_line(line, pattern)) {
                return Ok(parts);
            }
            bail!("pid {} exited ({status}) without printing the line {pattern:?}", process.pid());
        }
        if Instant::now() > deadline {
            let output = process.output();
            let near: Vec<&str> = output.lines().filter(|l| l.contains(stem.trim_end())).collect();
            bail!("pid {} printed no line {pattern:?} within {timeout:?} (lines like it: {near:?})", process.pid());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn number(text: &str) -> Result<u64> {
    text.parse().with_context(|| format!("{text:?} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::match_line;

    #[test]
    fn the_line_matcher_reads_landmarks_and_numbers_exactly() {
        let pattern = "ft: live at {landmark}, generation {n}, {n} ms after the last word from the primary";
        assert_eq!(
            match_line("ft: live at Preempt(812), generation 3, 104 ms after the last word from the primary", pattern),
            Some(vec!["Preempt(812)".into(), "3".into(), "104".into()])
        );
        assert_eq!(
            match_line("ft: live at Exit(), generation 3, 104 ms after the last word from the primary", pattern),
            None
        );
        assert_eq!(match_line("ft: live at Exit(5), generation 3, 104 ms after the last word", pattern), None);
        assert_eq!(
            match_line("INFO ft: live at Exit(5), generation 3, 1 ms after the last word from the primary", pattern),
            None
        );
        let lost = "ft: lost the go-live race to {any} (generation {n}): halting";
        assert_eq!(
            match_line("ft: lost the go-live race to b:12@10.0.0.12:7100 (generation 2): halting", lost),
            Some(vec!["b:12@10.0.0.12:7100".into(), "2".into()])
        );
        assert_eq!(match_line("ft: lost the go-live race to  (generation 2): halting", lost), None);
    }
}
