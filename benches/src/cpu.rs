//! CPU time of this process and of another process (the server under test).

use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use nix::sys::resource::{getrusage, UsageWho};

/// User + system CPU time consumed so far by every thread of this process.
pub fn own_cpu_time() -> io::Result<Duration> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).map_err(io::Error::from)?;
    let to_duration = |tv: nix::sys::time::TimeVal| {
        Duration::from_secs(tv.tv_sec().max(0) as u64)
            + Duration::from_micros(tv.tv_usec().max(0) as u64)
    };
    Ok(to_duration(usage.user_time()) + to_duration(usage.system_time()))
}

/// CPU time consumed so far by every thread of process `pid`.
///
/// Reads the nanosecond run-time counters in `/proc/PID/task/*/schedstat` (the scheduler's own
/// accounting, exact) and falls back to `utime + stime` of `/proc/PID/stat` (clock ticks, usually
/// 10 ms) when schedstat is unavailable. Threads that exited before the call are not counted by
/// the schedstat path, which is why the benchmark servers are single-threaded.
pub fn process_cpu_time(pid: i32) -> io::Result<Duration> {
    if pid <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid pid {pid}"),
        ));
    }
    match schedstat_total(&Path::new("/proc").join(pid.to_string()).join("task")) {
        Ok(Some(total)) => Ok(total),
        Ok(None) => stat_ticks(pid),
        Err(err) => Err(err),
    }
}

fn schedstat_total(task_dir: &Path) -> io::Result<Option<Duration>> {
    let mut total_ns: u64 = 0;
    let mut seen_any = false;
    for entry in fs::read_dir(task_dir)? {
        let entry = entry?;
        let text = match fs::read_to_string(entry.path().join("schedstat")) {
            Ok(text) => text,
            // A thread may exit between read_dir and the read.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(_) => return Ok(None),
        };
        let Some(run_ns) = text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
        else {
            return Ok(None);
        };
        total_ns += run_ns;
        seen_any = true;
    }
    Ok(seen_any.then(|| Duration::from_nanos(total_ns)))
}

fn stat_ticks(pid: i32) -> io::Result<Duration> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu(&text, clock_ticks_per_second()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unparsable /proc/{pid}/stat"),
        )
    })
}

fn clock_ticks_per_second() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as u64,
        _ => 100,
    }
}

/// `utime + stime` from the text of `/proc/PID/stat`. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat_cpu(stat: &str, ticks_per_second: u64) -> Option<Duration> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    // After the command come state (field 3) ... utime (14) and stime (15): skip 11 fields.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_nanos(
        ticks.checked_mul(1_000_000_000)? / ticks_per_second.max(1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let stat = "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat_cpu(stat, 100), Some(Duration::from_secs(3)));
    }

    #[test]
    fn own_process_time_is_visible_both_ways() {
        let start = process_cpu_time(std::process::id() as i32).unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let end = process_cpu_time(std::process::id() as i32).unwrap();
        assert!(end > start);
        assert!(own_cpu_time().unwrap() > Duration::ZERO);
    }

    #[test]
    fn rejects_bad_pids() {
        assert!(process_cpu_time(0).is_err());
        assert!(process_cpu_time(-5).is_err());
    }
}
