//! The engine thread's loop: drain commands, step, publish, repeat; block on the command channel
//! when there is nothing to do (no busy spin), waking every [`TICK`] to refresh the heartbeat.
//!
//! Exit: once idle after `shutdown` (accepted requests finish first), or once every handle is
//! gone. A panic anywhere in the loop is caught: every request in flight gets an `Error`, the
//! heartbeat goes dead, `submit` answers `ShuttingDown` — callers never hang on a dead engine.

use super::core::Core;
use super::handle::Command;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

/// Longest idle wait between heartbeats.
pub(crate) const TICK: Duration = Duration::from_millis(250);

pub(crate) fn spawn(core: Core, rx: Receiver<Command>) -> std::io::Result<()> {
    std::thread::Builder::new().name("kiln-engine".into()).spawn(move || run(core, rx)).map(|_| ())
}

fn run(mut core: Core, rx: Receiver<Command>) {
    let shared = core.shared.clone();
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| main_loop(&mut core, &rx))) {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        shared.mark_dead();
        let message = format!("the engine failed: {what}");
        // Even this may panic on broken state; the tickets' `Drop` is the last resort.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            core.fail_all(&message);
            core.publish();
        }));
    }
    shared.mark_dead();
    // Submissions still queued end with an Error when dropped (their tickets see to it).
    while let Ok(cmd) = rx.try_recv() {
        drop(cmd);
    }
    drop(core);
    shared.mark_exited();
}

fn main_loop(core: &mut Core, rx: &Receiver<Command>) {
    let mut disconnected = false;
    loop {
        loop {
            match rx.try_recv() {
                Ok(cmd) => core.command(cmd),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        let progressed = core.step();
        core.publish();
        core.flush();
        core.shared.beat();
        if core.has_work() && progressed {
            continue;
        }
        if !core.has_work() && (disconnected || core.shutting_down()) {
            return;
        }
        if disconnected {
            // Work that cannot progress and no caller left to wake us: wait a little.
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        // Idle (or, defensively, work that made no progress): wait for a command.
        let wait = if core.has_work() { Duration::from_millis(2) } else { TICK };
        match rx.recv_timeout(wait) {
            Ok(cmd) => core.command(cmd),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => disconnected = true,
        }
    }
}
