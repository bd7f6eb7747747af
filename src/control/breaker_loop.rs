//! The breakers' clock: open breakers move to half-open when their time is up, and
//! the shards hear of it.

use super::breakers::BREAKER_TICK;
use super::state::ControlState;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

/// Open breakers move to half-open when their time is up.
pub async fn breaker_loop(state: Rc<RefCell<ControlState>>) {
    let mut tick = tokio::time::interval(BREAKER_TICK);
    loop {
        tick.tick().await;
        let mut s = state.borrow_mut();
        for (id, delta) in s.breakers.tick(Instant::now()) {
            shards::info!("circuit breaker of {} is half-open: probing", s.url_of(id));
            s.broadcast(delta);
        }
    }
}
