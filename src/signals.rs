//! Process signals, taken on a thread of their own. SIGINT, SIGTERM and SIGHUP are
//! blocked before any other thread exists (the log writer included), so every thread
//! inherits the mask and none can be killed by a signal's default action; a small
//! thread waits for them (`sigwait`) and hands them over a channel, which the main
//! thread selects on together with whatever it waits for (the start-up, the drain).

use crossbeam_channel::{unbounded, Receiver};
use nix::sys::signal::{SigSet, Signal};

/// Blocks the signals in this thread (and so in every thread it starts) and starts
/// the thread that receives them.
pub fn take() -> Result<Receiver<Signal>, String> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set.thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    let (tx, rx) = unbounded();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(signal) = set.wait() {
                if tx.send(signal).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(rx)
}
