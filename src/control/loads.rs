//! The load view each shard gets: the other shards' in-flight counts plus each
//! worker's external load (its scraped queue less this router's own requests), and
//! the scrape of the workers' `/metrics` that measures it.

use super::scrape::scrape;
use super::state::ControlState;
use shards::messages::{Delta, WorkerId, WorkerInFlight};
use std::cell::RefCell;
use std::net::SocketAddr;
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
                match view.iter_mut().find(|l| l.worker == *id) {
                    Some(e) => e.requests += n,
                    None => view.push(WorkerInFlight {
                        worker: *id,
                        requests: *n,
                        prefill_tokens: 0,
                    }),
                }
            }
            link.send(Delta::Loads(view));
        }
    }
}

/// How often workers' `/metrics` are scraped for load-aware policies.
const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

pub async fn scrape_loop(state: Rc<RefCell<ControlState>>, timeout: Duration) {
    let mut tick = tokio::time::interval(SCRAPE_INTERVAL);
    loop {
        tick.tick().await;
        let targets: Vec<(WorkerId, SocketAddr, String, Option<u32>)> = state
            .borrow()
            .registry
            .workers
            .iter()
            .filter(|w| w.health.healthy)
            .map(|w| {
                (
                    w.spec.id,
                    w.spec.addr,
                    w.spec.authority.clone(),
                    w.spec.dp_rank,
                )
            })
            .collect();
        let mut tasks = Vec::new();
        for (id, addr, authority, rank) in targets {
            // DP ranks share one server (and one /metrics): count it on rank 0 only.
            if rank.unwrap_or(0) != 0 {
                continue;
            }
            tasks.push(tokio::task::spawn_local(async move {
                (id, scrape(addr, &authority, timeout).await)
            }));
        }
        for t in tasks {
            if let Ok((id, found)) = t.await {
                let mut s = state.borrow_mut();
                if s.note_scrape(id, found) {
                    s.loads_dirty = true;
                }
            }
        }
        state.borrow_mut().end_scrape_round();
    }
}
