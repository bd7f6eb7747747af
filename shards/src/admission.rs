//! Admission control: at most `slots` proxied requests in flight per shard, then a
//! bounded FIFO queue, then 429.
//!
//! `--max-concurrent-requests` and `--queue-size` are split evenly over the shards
//! (rounded up), because a shared counter would be shared state on the request path.
//! The kernel spreads connections over shards (SO_REUSEPORT), so a client sees the
//! router-wide limit only on average: one connection's requests all meet one shard's
//! share. docs/resilience.md says what that means in practice.
//!
//! A request holds its slot until its answer has ended, streams included. A slot freed
//! while others queue passes straight to the oldest waiter, so a waiter is never
//! overtaken by a request that arrived after it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// One shard's slots and queue.
pub struct Admission {
    slots: usize,
    queue_limit: usize,
    in_use: Cell<usize>,
    queue: RefCell<VecDeque<Rc<Waiter>>>,
}

#[derive(Default)]
struct Waiter {
    granted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// The outcome of asking for a slot.
pub enum Admit<'a> {
    Now(Permit<'a>),
    /// Queued: await the ticket (racing it against the queue timeout).
    Queued(Ticket<'a>),
    /// Slots and queue are full: answer 429.
    Full,
}

impl Admission {
    /// `slots` and `queue` are this shard's shares; `slots` is at least 1.
    pub fn new(slots: usize, queue: usize) -> Self {
        Admission {
            slots: slots.max(1),
            queue_limit: queue,
            in_use: Cell::new(0),
            queue: RefCell::new(VecDeque::new()),
        }
    }

    pub fn admit(&self) -> Admit<'_> {
        if self.in_use.get() < self.slots {
            self.in_use.set(self.in_use.get() + 1);
            return Admit::Now(Permit { set: self });
        }
        let mut queue = self.queue.borrow_mut();
        if queue.len() >= self.queue_limit {
            return Admit::Full;
        }
        let waiter = Rc::new(Waiter::default());
        queue.push_back(waiter.clone());
        Admit::Queued(Ticket {
            set: self,
            waiter: Some(waiter),
        })
    }

    /// Requests holding a slot, and waiting for one.
    pub fn usage(&self) -> (usize, usize) {
        (self.in_use.get(), self.queue.borrow().len())
    }

    fn release(&self) {
        let next = self.queue.borrow_mut().pop_front();
        match next {
            Some(w) => {
                // The slot changes hands without being freed.
                w.granted.set(true);
                if let Some(waker) = w.waker.borrow_mut().take() {
                    waker.wake();
                }
            }
            None => self.in_use.set(self.in_use.get() - 1),
        }
    }
}

/// A slot, freed on drop.
pub struct Permit<'a> {
    set: &'a Admission,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.set.release();
    }
}

/// A place in the queue; resolves to a permit. Dropped while waiting (timeout, client
/// gone), it leaves the queue; dropped after the grant, it passes the slot on.
pub struct Ticket<'a> {
    set: &'a Admission,
    waiter: Option<Rc<Waiter>>,
}

impl<'a> Future for Ticket<'a> {
    type Output = Permit<'a>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit<'a>> {
        let waiter = self.waiter.as_ref().expect("polled after completion");
        if waiter.granted.get() {
            self.waiter = None;
            return Poll::Ready(Permit { set: self.set });
        }
        *waiter.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        if waiter.granted.get() {
            self.set.release();
        } else {
            self.set
                .queue
                .borrow_mut()
                .retain(|w| !Rc::ptr_eq(w, &waiter));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};

    #[test]
    fn slots_then_queue_then_full() {
        let a = Admission::new(1, 1);
        let Admit::Now(p1) = a.admit() else { panic!() };
        let Admit::Queued(mut t) = a.admit() else {
            panic!()
        };
        assert!(matches!(a.admit(), Admit::Full));
        assert_eq!(a.usage(), (1, 1));
        assert!(block_on(poll_once(&mut t)).is_none());
        drop(p1); // passes the slot to the waiter
        let p2 = block_on(poll_once(&mut t)).expect("granted");
        assert_eq!(a.usage(), (1, 0));
        drop(t);
        drop(p2);
        assert_eq!(a.usage(), (0, 0));
    }

    #[test]
    fn leaving_the_queue_frees_its_place_and_any_grant() {
        let a = Admission::new(1, 2);
        let Admit::Now(p) = a.admit() else { panic!() };
        let Admit::Queued(t1) = a.admit() else {
            panic!()
        };
        let Admit::Queued(t2) = a.admit() else {
            panic!()
        };
        drop(t1); // gave up (timeout)
        assert_eq!(a.usage(), (1, 1));
        drop(p); // grant goes to t2, which is dropped before it looks
        drop(t2);
        assert_eq!(a.usage(), (0, 0), "an unclaimed grant is not lost");
    }
}
