//! Health checks: the start-up wait, the periodic round with its thresholds, and the
//! probe on demand when traffic finds a worker unreachable.

use super::config::ControlConfig;
use super::health::{self, HealthTracker};
use super::state::ControlState;
use super::Started;
use shards::messages::{Delta, WorkerId};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

/// Probes every worker until one is healthy (or none is configured), as
/// `--worker-startup-timeout-secs` and `--worker-startup-check-interval` say.
pub async fn startup_wait(
    state: &Rc<RefCell<ControlState>>,
    config: &ControlConfig,
) -> Result<Started, String> {
    let deadline = Instant::now() + config.startup_timeout;
    let count = state.borrow().registry.bases().len();
    waiting(
        state,
        format!("the first health check of {count} worker(s)"),
    );
    loop {
        let results = probe_all(state).await;
        let any = results.is_empty() || results.iter().any(|(_, r)| r.is_ok());
        {
            let mut s = state.borrow_mut();
            for (base, outcome) in &results {
                let healthy = outcome.is_ok();
                for w in s.registry.of_base(base) {
                    w.health = HealthTracker::new(healthy);
                    w.spec.healthy = healthy;
                }
            }
        }
        if any && config.igw {
            // The shards route by model from their first request: learn them first.
            super::models::learn(state).await;
        }
        {
            let s = state.borrow();
            if any {
                let specs: Vec<_> = s.registry.workers.iter().map(|w| w.spec.clone()).collect();
                for spec in specs {
                    s.broadcast(Delta::Upsert(spec));
                }
                s.broadcast(Delta::StartupWait(None));
            }
        }
        if any {
            let workers = results
                .into_iter()
                .map(|(base, r)| (base, r.is_ok(), r.err()))
                .collect();
            return Ok(Started {
                workers,
                metrics: config.prometheus,
            });
        }
        // Every worker with its reason: a mistyped URL shows at the first check.
        let why = results
            .into_iter()
            .map(|(b, r)| format!("{b}: {}", r.err().unwrap_or_default()))
            .collect::<Vec<String>>()
            .join("; ");
        if Instant::now() + config.startup_interval > deadline {
            return Err(format!(
                "no worker became healthy within {}s ({why})",
                config.startup_timeout.as_secs(),
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now()).as_secs();
        shards::warn!(
            "waiting for a healthy worker ({why}); next check in {}s, giving up in {left}s",
            config.startup_interval.as_secs(),
        );
        waiting(
            state,
            format!("a healthy worker ({why}); it gives up in {left}s"),
        );
        tokio::time::sleep(config.startup_interval).await;
    }
}

/// Tells the shards, which listen during the wait, what it waits for.
fn waiting(state: &Rc<RefCell<ControlState>>, why: String) {
    state
        .borrow()
        .broadcast(Delta::StartupWait(Some(std::sync::Arc::from(why))));
}

/// Probes every base URL concurrently.
async fn probe_all(state: &Rc<RefCell<ControlState>>) -> Vec<(String, Result<(), String>)> {
    let (bases, cfg) = {
        let s = state.borrow();
        (s.registry.bases(), s.probe.clone())
    };
    let mut tasks = Vec::new();
    for (base, addr, authority) in bases {
        let cfg = cfg.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let r = health::probe(addr, &authority, &cfg).await;
            (base, r)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(r) = t.await {
            out.push(r);
        }
    }
    out
}

/// Periodic health checks with the failure and success thresholds.
pub async fn health_loop(state: Rc<RefCell<ControlState>>, config: ControlConfig) {
    let mut tick = tokio::time::interval(config.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the start-up round just ran
    loop {
        tick.tick().await;
        for (base, outcome) in probe_all(&state).await {
            let mut s = state.borrow_mut();
            let ok = outcome.is_ok();
            let mut change = None;
            for w in s.registry.of_base(&base) {
                if let Some(c) =
                    w.health
                        .record(ok, config.success_threshold, config.failure_threshold)
                {
                    change = Some(c);
                }
            }
            if let Some(healthy) = change {
                if healthy {
                    shards::info!("worker {base} is healthy again");
                } else {
                    shards::warn!(
                        "worker {base} is unhealthy: {}",
                        outcome.err().unwrap_or_default()
                    );
                }
                s.set_health(&base, healthy);
            }
        }
    }
}

/// Traffic found a worker unreachable: confirm with one probe now rather than at the
/// next interval; a failed probe takes it out of rotation at once.
pub fn on_unreachable(state: &Rc<RefCell<ControlState>>, id: WorkerId) {
    let target = {
        let s = state.borrow();
        s.registry.get(id).filter(|w| w.health.healthy).map(|w| {
            (
                w.base_url.clone(),
                w.spec.addr,
                w.spec.authority.clone(),
                s.probe.clone(),
            )
        })
    };
    let Some((base, addr, authority, cfg)) = target else {
        return;
    };
    let state = state.clone();
    tokio::task::spawn_local(async move {
        if let Err(why) = health::probe(addr, &authority, &cfg).await {
            let mut s = state.borrow_mut();
            let mut was_healthy = false;
            for w in s.registry.of_base(&base) {
                was_healthy |= w.health.force_unhealthy();
            }
            if was_healthy {
                shards::warn!("worker {base} is unreachable ({why}): out of rotation");
                s.set_health(&base, false);
            }
        }
    });
}
