//! Health probes: `GET --health-check-endpoint` with the API key, on the control
//! core's tokio runtime. Any 2xx is healthy; a refused connection, a timeout or any
//! other status is not.

use super::http::{get, Get};
use std::net::SocketAddr;
use std::time::Duration;

/// How to probe; shared by every worker.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub endpoint: String,
    pub timeout: Duration,
    pub api_key: Option<String>,
}

/// One probe. Ok on a 2xx answer head.
pub async fn probe(addr: SocketAddr, authority: &str, cfg: &ProbeConfig) -> Result<(), String> {
    let req = Get {
        addr,
        authority,
        path: &cfg.endpoint,
        api_key: cfg.api_key.as_deref(),
    };
    match tokio::time::timeout(cfg.timeout, get(&req, None)).await {
        Ok(Ok((status, _))) if (200..300).contains(&status) => Ok(()),
        Ok(Ok((status, _))) => Err(format!("answered {status}")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {:?}", cfg.timeout)),
    }
}

/// Consecutive outcomes, turned into a health state by the thresholds.
#[derive(Clone, Debug)]
pub struct HealthTracker {
    pub healthy: bool,
    ok_streak: u32,
    fail_streak: u32,
}

impl HealthTracker {
    pub fn new(healthy: bool) -> Self {
        HealthTracker {
            healthy,
            ok_streak: 0,
            fail_streak: 0,
        }
    }

    /// Records one probe; returns the new state when it changed.
    pub fn record(
        &mut self,
        ok: bool,
        success_threshold: u32,
        failure_threshold: u32,
    ) -> Option<bool> {
        if ok {
            self.ok_streak += 1;
            self.fail_streak = 0;
            if !self.healthy && self.ok_streak >= success_threshold.max(1) {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
            if self.healthy && self.fail_streak >= failure_threshold.max(1) {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }

    /// A definitive failure seen in traffic (connection refused): out at once.
    pub fn force_unhealthy(&mut self) -> bool {
        self.ok_streak = 0;
        std::mem::replace(&mut self.healthy, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let mut t = HealthTracker::new(true);
        assert_eq!(t.record(false, 2, 3), None);
        assert_eq!(t.record(false, 2, 3), None);
        assert_eq!(t.record(false, 2, 3), Some(false));
        assert_eq!(t.record(true, 2, 3), None);
        assert_eq!(
            t.record(false, 2, 3),
            None,
            "a failure resets the success streak"
        );
        assert_eq!(t.record(true, 2, 3), None);
        assert_eq!(t.record(true, 2, 3), Some(true));
    }
}
