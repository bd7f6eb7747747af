//! Precise pacing of open-loop arrivals.
//!
//! tokio's timer wheel has a resolution of one millisecond: `sleep_until(due)` wakes
//! at the first tick after `due`, up to 1 ms late. Latency counts from `due`, so that
//! lateness landed in every measurement, and not evenly: with targets interleaved
//! (slot k to target k mod n) and a slot gap that is not a whole number of
//! milliseconds, each target's slots sit at their own offset within the millisecond,
//! so each target got its own share of lateness. With three targets at 50 req/s each
//! (a 6.67 ms gap) that was a steady 0.33 ms between any two of them: the "+0.5 ms
//! on first tokens" of docs/benchmarks.md §7. A timerfd armed for each due time wakes
//! within microseconds instead, and costs no spinning.

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Instant;
use tokio::io::unix::AsyncFd;

/// Timer slack asked of the kernel for this thread: by default it may fire a timer up
/// to 50 us late to batch wake-ups, which would be a pacing error of its own.
const TIMER_SLACK_NS: u64 = 1_000;

struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Wakes the sending loop at each request's due time.
pub struct Pacer {
    timer: AsyncFd<Timer>,
}

impl Pacer {
    /// Inside a tokio runtime with I/O enabled.
    pub fn new() -> io::Result<Pacer> {
        let _ = nix::sys::prctl::set_timerslack(TIMER_SLACK_NS);
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // SAFETY: the timerfd is owned by `Timer`, stays open until the AsyncFd drops
        // it, and `as_raw_fd` always returns that same descriptor.
        let timer = unsafe { AsyncFd::register(Timer(fd)) }.map_err(io::Error::from)?;
        Ok(Pacer { timer })
    }

    /// Returns at `due` (at once when it has passed).
    pub async fn until(&self, due: Instant) -> io::Result<()> {
        let now = Instant::now();
        if due <= now {
            return Ok(());
        }
        let wait = TimeSpec::from_duration(due - now);
        self.timer
            .get_ref()
            .0
            .set(Expiration::OneShot(wait), TimerSetTimeFlags::empty())?;
        loop {
            let mut ready = self.timer.readable().await?;
            match ready.try_io(|t| t.get_ref().0.wait().map_err(io::Error::from)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn never_wakes_before_the_due_time_and_not_at_all_for_a_past_one() {
        // How late it wakes is a scheduling matter, measured in the harness
        // (docs/benchmarks.md §7), not here; early would send requests before their
        // slot and skew every open-loop number.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let pacer = Pacer::new().unwrap();
            for k in 1..=20u64 {
                // Due times inside a millisecond, where tokio's wheel would round up.
                let due = Instant::now() + Duration::from_micros(300 + 37 * k);
                pacer.until(due).await.unwrap();
                assert!(Instant::now() >= due, "woke before slot {k}");
            }
            let past = Instant::now() - Duration::from_millis(5);
            pacer.until(past).await.unwrap();
        });
    }
}
