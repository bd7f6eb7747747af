//! Admin calls a shard handed to the control core, waiting for their answers. The
//! delta loop fulfils them (`Delta::AdminReply`); the connection task awaits.

use crate::messages::AdminReply;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// One waiting call: its answer once it came, and the task to wake.
type AdminSlot = (Option<AdminReply>, Option<Waker>);

/// Admin calls of one shard waiting for their answers.
#[derive(Default)]
pub struct AdminWaiters {
    next: Cell<u64>,
    slots: RefCell<HashMap<u64, AdminSlot>>,
}

impl AdminWaiters {
    pub fn register(&self) -> u64 {
        let token = self.next.get() + 1;
        self.next.set(token);
        self.slots.borrow_mut().insert(token, (None, None));
        token
    }

    /// Called by the delta loop when the answer arrives.
    pub fn fulfil(&self, token: u64, reply: AdminReply) {
        let waker = match self.slots.borrow_mut().get_mut(&token) {
            Some(slot) => {
                slot.0 = Some(reply);
                slot.1.take()
            }
            None => None, // the caller gave up
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub async fn wait(&self, token: u64) -> AdminReply {
        poll_fn(|cx| {
            let mut slots = self.slots.borrow_mut();
            let slot = slots.get_mut(&token).expect("registered");
            match slot.0.take() {
                Some(reply) => {
                    slots.remove(&token);
                    Poll::Ready(reply)
                }
                None => {
                    slot.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    pub fn forget(&self, token: u64) {
        self.slots.borrow_mut().remove(&token);
    }
}
