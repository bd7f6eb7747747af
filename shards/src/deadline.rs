//! Coarse deadlines: one sweep per shard instead of one timer per request.
//!
//! glommio keeps timers in a BTreeMap and each needs an allocation; a proxy with a
//! header timeout, a keep-alive timeout and a request timeout per request would pay for
//! three. Here a deadline is a slot in a per-shard vector (reused, so no allocation once
//! warm) that a sweep task checks every [`DEADLINE_TICK`]. Deadlines are therefore late
//! by up to one tick, which is nothing against timeouts counted in seconds.
//!
//! A request keeps one slot for all its timeouts: the total (`--request-timeout-secs`)
//! is the slot's limit, and each phase (the answer head, the idle time between stream
//! events) pulls it earlier with `phase`, which costs a store, not a new timer.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Resolution of every deadline on a shard.
pub const DEADLINE_TICK: Duration = Duration::from_millis(50);

struct Slot {
    at: Instant,
    fired: bool,
    /// Fires early when the shard starts draining (idle keep-alive waits).
    on_drain: bool,
    waker: Option<Waker>,
}

/// The deadlines of one shard.
pub struct Deadlines {
    slots: RefCell<Vec<Option<Slot>>>,
    free: RefCell<Vec<u32>>,
    /// The time of the last sweep: a clock that costs nothing to read, exact to a tick.
    now: Cell<Instant>,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            slots: RefCell::default(),
            free: RefCell::default(),
            now: Cell::new(Instant::now()),
        }
    }
}

impl Deadlines {
    /// The coarse clock (see `now`).
    pub fn now(&self) -> Instant {
        self.now.get()
    }

    /// A deadline `after` from now. With `on_drain`, draining the shard fires it too.
    pub fn start(&self, after: Duration, on_drain: bool) -> Deadline<'_> {
        self.start_at(Instant::now(), after, on_drain)
    }

    /// A deadline `after` from `base`, a time the caller has already read (a clock
    /// read costs ~50 ns; the request path shares one per request).
    pub fn start_at(&self, base: Instant, after: Duration, on_drain: bool) -> Deadline<'_> {
        let limit = base + after;
        let slot = Slot {
            at: limit,
            fired: false,
            on_drain,
            waker: None,
        };
        let mut slots = self.slots.borrow_mut();
        let key = match self.free.borrow_mut().pop() {
            Some(k) => {
                slots[k as usize] = Some(slot);
                k
            }
            None => {
                slots.push(Some(slot));
                (slots.len() - 1) as u32
            }
        };
        Deadline {
            set: self,
            key,
            limit,
        }
    }

    /// Fires every deadline that has passed; run once per tick.
    pub fn sweep(&self, now: Instant) {
        self.now.set(now);
        self.fire_where(|s| s.at <= now);
    }

    /// Fires the deadlines registered with `on_drain`.
    pub fn drain(&self) {
        self.fire_where(|s| s.on_drain);
    }

    fn fire_where(&self, due: impl Fn(&Slot) -> bool) {
        let mut wake = Vec::new();
        for slot in self.slots.borrow_mut().iter_mut().flatten() {
            if !slot.fired && due(slot) {
                slot.fired = true;
                wake.extend(slot.waker.take());
            }
        }
        // Woken outside the borrow: a woken task may start a new deadline at once.
        wake.into_iter().for_each(Waker::wake);
    }

    /// Deadlines currently registered.
    #[cfg(test)]
    pub fn active(&self) -> usize {
        self.slots.borrow().iter().flatten().count()
    }
}

/// A registered deadline: a future that completes when it fires. Dropping it frees
/// its slot.
pub struct Deadline<'a> {
    set: &'a Deadlines,
    key: u32,
    /// The time it was started for; phases never move it past this.
    limit: Instant,
}

impl Deadline<'_> {
    /// Fires `after` from now (coarse clock) or at the limit, whichever is first, and
    /// re-arms a deadline that already fired.
    pub fn phase(&mut self, after: Duration) {
        let at = (self.set.now() + after).min(self.limit);
        self.set_at(at);
    }

    /// Back to the limit alone.
    pub fn end_phase(&mut self) {
        let limit = self.limit;
        self.set_at(limit);
    }

    /// Runs `fut` until it completes (Some) or this deadline fires first (None): the
    /// one way every wait on the request path is bounded.
    pub async fn bound<T>(&mut self, fut: impl Future<Output = T>) -> Option<T> {
        let done = async { Some(fut.await) };
        let expired = async {
            (&mut *self).await;
            None
        };
        futures_lite::future::or(done, expired).await
    }

    /// The limit itself has passed (not just a phase).
    pub fn limit_passed(&self) -> bool {
        self.set.now() >= self.limit || Instant::now() >= self.limit
    }

    fn set_at(&mut self, at: Instant) {
        if let Some(slot) = self.set.slots.borrow_mut()[self.key as usize].as_mut() {
            slot.at = at;
            slot.fired = false;
        }
    }

    #[cfg(test)]
    pub fn has_fired(&self) -> bool {
        self.set.slots.borrow()[self.key as usize]
            .as_ref()
            .is_some_and(|s| s.fired)
    }
}

impl Future for Deadline<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut slots = self.set.slots.borrow_mut();
        let Some(slot) = slots[self.key as usize].as_mut() else {
            return Poll::Ready(());
        };
        if slot.fired {
            return Poll::Ready(());
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        self.set.slots.borrow_mut()[self.key as usize] = None;
        self.set.free.borrow_mut().push(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_after_sweep_and_frees_slots() {
        let set = Deadlines::default();
        let d1 = set.start(Duration::from_millis(10), false);
        let d2 = set.start(Duration::from_secs(60), true);
        assert_eq!(set.active(), 2);
        set.sweep(Instant::now());
        assert!(!d1.has_fired());
        set.sweep(Instant::now() + Duration::from_millis(20));
        assert!(d1.has_fired() && !d2.has_fired());
        set.drain();
        assert!(d2.has_fired());
        drop(d1);
        let d3 = set.start(Duration::from_secs(1), false);
        assert_eq!(d3.key, 0, "slot reused");
        drop((d2, d3));
        assert_eq!(set.active(), 0);
    }

    #[test]
    fn phases_pull_the_limit_earlier_and_rearm() {
        let set = Deadlines::default();
        let t0 = set.now();
        let mut d = set.start(Duration::from_secs(10), false);
        d.phase(Duration::from_secs(1));
        set.sweep(t0 + Duration::from_secs(2));
        assert!(d.has_fired() && !d.limit_passed());
        d.phase(Duration::from_secs(1)); // from the sweep's clock: t0 + 3 s
        assert!(!d.has_fired());
        set.sweep(t0 + Duration::from_millis(2500));
        assert!(!d.has_fired());
        d.phase(Duration::from_secs(60));
        set.sweep(t0 + Duration::from_secs(11));
        assert!(
            d.has_fired() && d.limit_passed(),
            "a phase never outlasts the limit"
        );
    }
}
