//! What the bench reads from its child processes: CPU time and resident memory from
//! `/proc/<pid>/stat` and `/proc/<pid>/status` (Linux; zero elsewhere), and batch latency
//! quantiles and totals from the Prometheus histograms `mailing_batch_duration_seconds`
//! and `mailing_batch_step_duration_seconds` that a child's `/metrics` serves.

/// CPU time (user + system) of a process so far, in milliseconds.
pub fn cpu_ms(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name (field 2) may hold spaces; fields after the last ')' are fixed.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on every Linux the kernel ABI promises.
    (ticks(11) + ticks(12)) * 10
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// Peak resident memory since the process started (the kernel's high-water mark), bytes.
pub fn peak_rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:") * 1024
}

/// Cumulative bucket counts of one histogram series: (upper bound, count), sorted.
pub fn histogram_buckets(metrics: &str, name: &str, label: &str, value: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let wanted = format!("{label}=\"{value}\"");
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&wanted))
        .filter_map(|l| {
            let (labels, count) = l.rsplit_once('}')?;
            let le = labels.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The `_sum` of one histogram series (the total of what it observed), 0 when absent.
pub fn histogram_sum(metrics: &str, name: &str, label: &str, value: &str) -> f64 {
    let prefix = format!("{name}_sum{{");
    let wanted = format!("{label}=\"{value}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&wanted))
        .filter_map(|l| l.rsplit_once('}')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// One series of a histogram (`label` = `value`) read in every process's metrics text,
/// merged ([`merge_buckets`]).
pub fn merged_buckets(metrics: &[String], name: &str, label: &str, value: &str) -> Vec<(f64, f64)> {
    let per_process: Vec<_> = metrics
        .iter()
        .map(|text| histogram_buckets(text, name, label, value))
        .collect();
    merge_buckets(&per_process)
}

/// One cumulative histogram from the same histogram read in several processes (the
/// members of a fleet): the counts of equal upper bounds added, sorted by bound. The
/// processes share the bucket bounds, which are fixed in the binary.
pub fn merge_buckets(parts: &[Vec<(f64, f64)>]) -> Vec<(f64, f64)> {
    let mut all: Vec<(f64, f64)> = parts.iter().flatten().copied().collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(all.len());
    for (le, count) in all {
        match merged.last_mut() {
            Some(last) if last.0 == le => last.1 += count,
            _ => merged.push((le, count)),
        }
    }
    merged
}

/// The q-quantile of a cumulative histogram, interpolated linearly inside its bucket
/// (as Prometheus's `histogram_quantile` does): an estimate, as good as the buckets.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let width = count - lower.1;
            let into = if width > 0.0 {
                (rank - lower.1) / width
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * into);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_histogram_and_interpolates() {
        let text = "# TYPE x histogram\n\
            mailing_batch_duration_seconds_bucket{stage=\"send\",le=\"0.1\"} 50\n\
            mailing_batch_duration_seconds_bucket{stage=\"send\",le=\"0.5\"} 90\n\
            mailing_batch_duration_seconds_bucket{stage=\"send\",le=\"+Inf\"} 100\n\
            mailing_batch_duration_seconds_bucket{stage=\"plan\",le=\"0.1\"} 1\n";
        let b = histogram_buckets(text, "mailing_batch_duration_seconds", "stage", "send");
        assert_eq!(b.len(), 3);
        let p50 = quantile(&b, 0.5).unwrap();
        assert!((p50 - 0.1).abs() < 1e-9, "{p50}");
        let p80 = quantile(&b, 0.8).unwrap();
        assert!((p80 - 0.4).abs() < 1e-9, "{p80}");
        assert_eq!(quantile(&b, 0.99), Some(0.5));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn reads_a_histogram_sum_by_label() {
        let text = "mailing_batch_step_duration_seconds_sum{step=\"claim\"} 1.25\n\
            mailing_batch_step_duration_seconds_sum{step=\"claim_more\"} 7\n\
            mailing_batch_step_duration_seconds_sum{otel_scope_name=\"mailing\",step=\"record\"} 0.5\n\
            mailing_batch_step_duration_seconds_count{step=\"claim\"} 3\n";
        let sum = |step| histogram_sum(text, "mailing_batch_step_duration_seconds", "step", step);
        assert_eq!(sum("claim"), 1.25);
        assert_eq!(sum("record"), 0.5);
        assert_eq!(sum("window"), 0.0);
    }

    #[test]
    fn merges_the_same_histogram_from_several_processes() {
        let worker = |fast: f64, slow: f64| {
            vec![
                (0.1, fast),
                (0.5, fast + slow),
                (f64::INFINITY, fast + slow),
            ]
        };
        let merged = merge_buckets(&[worker(10.0, 0.0), worker(0.0, 30.0), Vec::new()]);
        assert_eq!(
            merged,
            vec![(0.1, 10.0), (0.5, 40.0), (f64::INFINITY, 40.0)]
        );
        // A quarter of the batches were fast: the median is among the slow ones.
        let p50 = quantile(&merged, 0.5).unwrap();
        assert!(p50 > 0.1 && p50 < 0.5, "{p50}");
        assert_eq!(merge_buckets(&[]), Vec::new());
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        // RSS first: the high-water mark is at least what the RSS was before it, but
        // the kernel counts RSS per CPU and folds the counts in batches, so a later
        // read may come out lower by those batches' pages (seen: 252 KiB, and more
        // with other test threads allocating meanwhile): allowed 64 pages per thread
        // and per CPU, as a bound, not a tolerance that hides a wrong field (the
        // high-water mark of a process this size is megabytes).
        let rss = status_kib(pid, "VmRSS:") * 1024;
        assert!(rss > 0);
        let units = status_kib(pid, "Threads:")
            + std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let slack = units * 64 * 4096;
        let peak = peak_rss_bytes(pid);
        assert!(
            peak + slack >= rss,
            "VmHWM {peak} against VmRSS {rss} (slack {slack})"
        );
        assert!(peak >= 1 << 20, "{peak}");
    }
}
