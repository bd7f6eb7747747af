//! What systemd is told while the router runs: `STATUS=` lines and watchdog pings.

use super::state::ControlState;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// The `STATUS=` line systemd shows.
pub fn status_line(s: &ControlState) -> String {
    format!(
        "serving; {} of {} worker(s) healthy",
        s.registry.healthy_count(),
        s.registry.workers.len()
    )
}

/// Watchdog pings (when systemd asked for them) and `STATUS=` updates. The pings come
/// from the control core's own loop, so a wedged control core stops them.
pub async fn notify_loop(
    state: Rc<RefCell<ControlState>>,
    n: std::sync::Arc<crate::notify::Notifier>,
) {
    let watchdog = crate::notify::watchdog_interval();
    let every = watchdog.map_or(STATUS_INTERVAL, |w| w.min(STATUS_INTERVAL));
    let mut tick = tokio::time::interval(every);
    let mut last = String::new();
    loop {
        tick.tick().await;
        let status = status_line(&state.borrow());
        let mut msg = String::new();
        if watchdog.is_some() {
            msg.push_str("WATCHDOG=1\n");
        }
        if status != last {
            msg.push_str(&format!("STATUS={status}\n"));
            last = status;
        }
        if !msg.is_empty() {
            n.send(msg.trim_end());
        }
    }
}

/// How often the `STATUS=` line is refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
