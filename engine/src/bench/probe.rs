//! What the bench reads from its child processes: CPU time from the operating system
//! (sysinfo: `/proc` on Linux, the kernel's task info on macOS and Windows), the resident
//! memory high-water mark from `/proc/<pid>/status` (Linux only: elsewhere it is `None`
//! and the report says "not measured"), and batch latency quantiles and totals from the Prometheus histograms
//! `mailing_batch_duration_seconds` and `mailing_batch_step_duration_seconds` that a
//! child's `/metrics` serves.

/// CPU time (user + system) a process has used so far, in milliseconds; `None` when the
/// process is gone or the system gives nothing. On macOS and Windows sysinfo reads a
/// process it may not inspect (a refused `proc_pidinfo` or process handle) as zero
/// times, so a 0 may be a failed read: a caller that knows the process has worked
/// meanwhile takes 0 for one (see the bench's reading after the send).
pub fn cpu_ms(pid: u32) -> Option<u64> {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
    let mut system = System::new().ok()?;
    let pid = Pid::from_u32(pid);
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        false,
        ProcessRefreshKind::nothing().with_cpu().without_tasks(),
    );
    system.process(pid).map(|p| p.accumulated_cpu_time())
}

/// A `/proc/<pid>/status` field in KiB (Linux).
#[cfg(target_os = "linux")]
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
}

/// Peak resident memory since the process started (the kernel's high-water mark,
/// `VmHWM`), bytes; `None` when the process is gone (a zombie has no `VmHWM`).
#[cfg(target_os = "linux")]
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

/// Peak resident memory: not measured outside Linux. macOS and Windows keep a peak too,
/// but only behind their own system calls, which the bench does not make; a largest
/// RSS sampled at the bench's polls would miss the peaks between them and read as if it
/// were the same figure.
#[cfg(not(target_os = "linux"))]
pub fn peak_rss_bytes(_pid: u32) -> Option<u64> {
    None
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

    /// CPU time of this process as `/proc/self/stat` gives it (utime + stime, in
    /// USER_HZ = 100 ticks a second), read by hand: the reference for sysinfo's.
    #[cfg(target_os = "linux")]
    fn proc_cpu_ms() -> u64 {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        let rest = stat.rsplit_once(')').expect("a command name").1;
        let fields: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().expect("a tick count"))
            .collect();
        (fields[0] + fields[1]) * 10
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        // CPU: some of it first, so that a reading of 0 cannot pass; then sysinfo's
        // reading falls between two made by hand around it.
        let mut x = 0u64;
        while proc_cpu_ms() < 30 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let before = proc_cpu_ms();
        let cpu = cpu_ms(pid).expect("this process's CPU time");
        let after = proc_cpu_ms();
        assert!(
            (before..=after).contains(&cpu),
            "sysinfo read {cpu} ms, /proc {before}..{after} ms"
        );
        assert_eq!(cpu_ms(u32::MAX), None, "no process has pid u32::MAX");

        // Memory. RSS first: the high-water mark is at least what the RSS was before
        // it, but the kernel counts RSS per CPU and folds the counts in batches, so a
        // later read may come out lower by those batches' pages (seen: 252 KiB, and
        // more with other test threads allocating meanwhile): allowed 64 pages per
        // thread and per CPU, as a bound, not a tolerance that hides a wrong field (the
        // high-water mark of a process this size is megabytes).
        let rss = status_kib(pid, "VmRSS:").expect("VmRSS") * 1024;
        assert!(rss > 0);
        let units = status_kib(pid, "Threads:").expect("Threads")
            + std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let slack = units * 64 * 4096;
        let peak = peak_rss_bytes(pid).expect("VmHWM");
        assert!(
            peak + slack >= rss,
            "VmHWM {peak} against VmRSS {rss} (slack {slack})"
        );
        assert!(peak >= 1 << 20, "{peak}");
        assert_eq!(peak_rss_bytes(u32::MAX), None);
    }

    /// On every system: a process that has run reads as some CPU time, not 0; outside
    /// Linux the peak is not measured.
    #[test]
    fn this_process_has_used_cpu_time() {
        let until = std::time::Instant::now() + std::time::Duration::from_millis(50);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let cpu = cpu_ms(std::process::id());
        assert!(cpu.is_some_and(|ms| ms > 0), "{cpu:?}");
        #[cfg(not(target_os = "linux"))]
        assert_eq!(peak_rss_bytes(std::process::id()), None);
    }
}
