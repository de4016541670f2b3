//! The operating-system edges of process runs: the parent-death signal set between fork and exec
//! (the one `unsafe` block of exec), reading a process's group, session and start time from
//! `/proc/<pid>/stat`, signalling groups, and recognising a group a previous exec left behind.
#![allow(unsafe_code)]

use std::io;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Makes the child get SIGKILL when exec dies (also by `kill -9`), so a run never outlives the
/// service that watches it. The signal is tied to the thread that forks, so spawns must come from
/// long-lived threads: the runtime's workers, never a `spawn_blocking` thread.
pub fn die_with_parent(command: &mut tokio::process::Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // functions may be called. prctl(2) and getppid(2) are plain system calls; the errors are built
    // from raw errno values without allocating; nothing is locked or captured by reference.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|errno| io::Error::from_raw_os_error(errno as i32))?;
            // exec may have died between fork and prctl, in which case no signal will ever come.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(Errno::ESRCH as i32));
            }
            Ok(())
        });
    }
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// State letter (`R`, `S`, `Z`, …).
    pub state: char,
    /// Process group.
    pub pgrp: u32,
    /// Session.
    pub session: u32,
    /// Start time in clock ticks since boot.
    pub start_ticks: u64,
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from its closing parenthesis.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): field n is fields[n - 3].
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// A live process's stat (`None` when it is gone).
pub fn stat(pid: u32) -> Option<ProcStat> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|text| parse_stat(&text))
}

/// Whether the process has exited (gone, or a zombie nobody reaped yet).
pub fn is_gone(pid: u32) -> bool {
    stat(pid).is_none_or(|stat| stat.state == 'Z' || stat.state == 'X')
}

/// Sends `signal` to the process group `pgid`. A group that is already gone is not an error.
pub fn signal_group(pgid: u32, signal: Signal) {
    // Pids are at most 2^22 on Linux, so they fit an i32; 0 and 1 would mean other groups.
    if pgid <= 1 {
        return;
    }
    match nix::sys::signal::killpg(Pid::from_raw(pgid as i32), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => tracing::warn!(pgid, signal = signal.as_str(), %error, "could not signal a process group"),
    }
}

/// The session exec runs in.
pub fn own_session() -> Option<u32> {
    nix::unistd::getsid(None).ok().map(|pid| pid.as_raw() as u32)
}

/// Whether a group recorded by an earlier exec (leader `pid`, started at `start_ticks`, in
/// `session`) still has members that are ours. A leader that is alive must have the recorded start
/// time (else its pid was reused); with the leader gone, a member must sit in the group, in the
/// recorded session, and be no older than the leader was: Linux does not hand out a pid while a
/// group of that id still exists, so such members can only be the run's leftovers.
pub fn leftover_group_is_ours(pid: u32, start_ticks: u64, session: u32) -> bool {
    match stat(pid) {
        Some(leader) if leader.state != 'Z' && leader.state != 'X' => {
            leader.start_ticks == start_ticks && leader.pgrp == pid
        }
        _ => group_members(pid)
            .iter()
            .any(|member| member.session == session && member.start_ticks >= start_ticks),
    }
}

/// The processes whose group is `pgid`.
fn group_members(pgid: u32) -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .filter(|stat| stat.pgrp == pgid && stat.state != 'Z' && stat.state != 'X')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let text = "1234 (my (odd) name) S 1 1234 77 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                state: 'S',
                pgrp: 1234,
                session: 77,
                start_ticks: 98765
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn our_own_process_reads_back() {
        let me = std::process::id();
        let stat = stat(me).unwrap();
        assert_eq!(stat.session, own_session().unwrap());
        assert!(!is_gone(me));
        // Our pid as a group leader with a wrong start time is not ours.
        assert!(!leftover_group_is_ours(me, stat.start_ticks + 1, stat.session));
    }
}
