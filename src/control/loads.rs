//! The load view each shard gets: the other shards' in-flight counts plus each
//! worker's external load (its scraped queue less this router's own requests).

use super::state::ControlState;
use shards::messages::{Delta, WorkerId};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// How often the shards' load views are refreshed (when something changed). With the
/// shards' 100 ms reports, a view is at most ~150 ms old.
const LOAD_BROADCAST_INTERVAL: Duration = Duration::from_millis(50);

pub async fn load_loop(state: Rc<RefCell<ControlState>>) {
    let mut tick = tokio::time::interval(LOAD_BROADCAST_INTERVAL);
    loop {
        tick.tick().await;
        let mut s = state.borrow_mut();
        if s.loads_dirty {
            s.broadcast_loads();
        }
    }
}

impl ControlState {
    /// Sends each shard the load it does not see itself: the other shards' in-flight
    /// counts plus each worker's external load.
    pub fn broadcast_loads(&mut self) {
        self.loads_dirty = false;
        let external: Vec<(WorkerId, u32)> = self
            .registry
            .workers
            .iter()
            .map(|w| (w.spec.id, self.external_load(w.spec.id)))
            .filter(|(_, n)| *n > 0)
            .collect();
        for (i, link) in self.links.iter().enumerate() {
            let mut view = self.metrics.loads_excluding(i);
            for (id, n) in &external {
                match view.iter_mut().find(|(w, _)| w == id) {
                    Some(e) => e.1 += n,
                    None => view.push((*id, *n)),
                }
            }
            link.send(Delta::Loads(view));
        }
    }
}
