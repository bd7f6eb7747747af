//! Health probes: `GET --health-check-endpoint` with the API key, on the control
//! core's tokio runtime. Any 2xx is healthy; a refused connection, a timeout or any
//! other status is not.

use shards::codec::response::ResponseHead;
use shards::codec::Status;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How to probe; shared by every worker.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub endpoint: String,
    pub timeout: Duration,
    pub api_key: Option<String>,
}

/// One probe. Ok on a 2xx answer head.
pub async fn probe(addr: SocketAddr, authority: &str, cfg: &ProbeConfig) -> Result<(), String> {
    match tokio::time::timeout(cfg.timeout, probe_inner(addr, authority, cfg)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", cfg.timeout)),
    }
}

async fn probe_inner(addr: SocketAddr, authority: &str, cfg: &ProbeConfig) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut req = format!(
        "GET {} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: vllm-router-health\r\nconnection: close\r\n",
        cfg.endpoint
    );
    if let Some(key) = &cfg.api_key {
        req.push_str(&format!("authorization: Bearer {key}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(1024);
    let mut head = ResponseHead::default();
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before answering".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match head.parse(&buf, false) {
            Ok(Status::Complete(_)) if head.is_interim() => {
                buf.clear();
            }
            Ok(Status::Complete(_)) => {
                return if (200..300).contains(&head.status) {
                    Ok(())
                } else {
                    Err(format!("answered {}", head.status))
                };
            }
            Ok(Status::Partial) => {}
            Err(e) => return Err(e.0.to_string()),
        }
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
