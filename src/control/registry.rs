//! The worker registry: URLs in, resolved `WorkerSpec`s out. Name resolution happens
//! here, on the control core, and never in a shard.

use shards::messages::{WorkerId, WorkerRole, WorkerSpec};
use std::net::{SocketAddr, ToSocketAddrs};

/// A worker URL split into what the router needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerUrl {
    pub host: String,
    pub port: u16,
}

/// Parses `http://host[:port][/]`. Only plain HTTP: workers sit next to the router.
pub fn parse_worker_url(url: &str) -> Result<WorkerUrl, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("bad worker URL {url:?}: only http:// URLs are supported"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains('/') || authority.contains('@') {
        return Err(format!("bad worker URL {url:?}: expected http://host:port"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, tail) = v6
            .split_once(']')
            .ok_or_else(|| format!("bad worker URL {url:?}: unclosed IPv6 bracket"))?;
        (h.to_string(), tail.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("bad worker URL {url:?}: invalid port"))?,
    };
    if host.is_empty() {
        return Err(format!("bad worker URL {url:?}: missing host"));
    }
    Ok(WorkerUrl { host, port })
}

/// Turns a URL into one worker per data-parallel rank (`url@r` when `dp_size > 1`),
/// resolving the host once. Blocking DNS is fine here: this runs on the control core.
pub fn resolve(url: &str, dp_size: u32, next_id: &mut WorkerId) -> Result<Vec<WorkerSpec>, String> {
    let parsed = parse_worker_url(url)?;
    let addr: SocketAddr = (parsed.host.as_str(), parsed.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve worker {url}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve worker {url}: no address"))?;
    let base = url.trim_end_matches('/').to_string();
    let authority = match addr {
        SocketAddr::V6(_) if parsed.host.contains(':') => {
            format!("[{}]:{}", parsed.host, parsed.port)
        }
        _ => format!("{}:{}", parsed.host, parsed.port),
    };
    let ranks: Vec<Option<u32>> = if dp_size > 1 {
        (0..dp_size).map(Some).collect()
    } else {
        vec![None]
    };
    Ok(ranks
        .into_iter()
        .map(|rank| {
            let id = *next_id;
            *next_id += 1;
            WorkerSpec {
                id,
                url: match rank {
                    Some(r) => format!("{base}@{r}"),
                    None => base.clone(),
                },
                addr,
                authority: authority.clone(),
                dp_rank: rank,
                healthy: true,
                role: Default::default(),
                pd_address: None,
                mooncake: None,
                models: Vec::new(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_worker_url("http://127.0.0.1:8000/").unwrap(),
            WorkerUrl {
                host: "127.0.0.1".into(),
                port: 8000
            }
        );
        assert_eq!(parse_worker_url("http://gpu-1").unwrap().port, 80);
        assert_eq!(parse_worker_url("http://[::1]:9").unwrap().host, "::1");
        assert!(parse_worker_url("https://a:1").is_err());
        assert!(parse_worker_url("http://a:99999").is_err());
        assert!(parse_worker_url("http://a:1/v1").is_err());
        assert!(parse_worker_url("a:1").is_err());
    }

    #[test]
    fn expands_data_parallel_ranks() {
        let mut id = 0;
        let w = resolve("http://127.0.0.1:8000", 4, &mut id).unwrap();
        assert_eq!(w.len(), 4);
        assert_eq!(w[3].url, "http://127.0.0.1:8000@3");
        assert_eq!(w[3].dp_rank, Some(3));
        assert_eq!(id, 4);
        assert!(w.iter().all(|s| s.authority == "127.0.0.1:8000"));
    }
}

/// A worker as the control core tracks it.
#[derive(Debug)]
pub struct WorkerEntry {
    pub spec: WorkerSpec,
    /// The URL without `@rank`: health is probed once per base URL.
    pub base_url: String,
    pub health: super::health::HealthTracker,
}

/// The worker set of record. Shards hold copies, kept in step by deltas.
#[derive(Debug, Default)]
pub struct Registry {
    pub workers: Vec<WorkerEntry>,
    next_id: WorkerId,
    dp_size: u32,
}

impl Registry {
    pub fn new(dp_size: u32) -> Self {
        Registry {
            workers: Vec::new(),
            next_id: 0,
            dp_size: dp_size.max(1),
        }
    }

    /// Resolves and adds a base URL to `role`'s pool (one entry per DP rank),
    /// unhealthy until probed.
    pub fn add_role(&mut self, url: &str, role: WorkerRole) -> Result<Vec<WorkerSpec>, String> {
        let base = url.trim_end_matches('/');
        if self.workers.iter().any(|w| w.base_url == base) {
            return Err(format!("worker {base} is already registered"));
        }
        let mut specs = resolve(base, self.dp_size, &mut self.next_id)?;
        for s in &mut specs {
            s.healthy = false;
            s.role = role;
            self.workers.push(WorkerEntry {
                spec: s.clone(),
                base_url: base.to_string(),
                health: super::health::HealthTracker::new(false),
            });
        }
        Ok(specs)
    }

    /// The registered worker with this id (none once it was removed).
    pub fn get(&self, id: WorkerId) -> Option<&WorkerEntry> {
        self.workers.iter().find(|w| w.spec.id == id)
    }

    /// Removes a base URL (all its ranks) or one `url@rank`; returns the removed ids.
    pub fn remove(&mut self, url: &str) -> Vec<WorkerId> {
        let url = url.trim_end_matches('/');
        let mut ids = Vec::new();
        self.workers.retain(|w| {
            let hit = w.base_url == url || w.spec.url == url;
            if hit {
                ids.push(w.spec.id);
            }
            !hit
        });
        ids
    }

    /// Distinct base URLs with what a probe needs.
    pub fn bases(&self) -> Vec<(String, SocketAddr, String)> {
        self.bases_with_health()
            .into_iter()
            .map(|(b, addr, authority, _)| (b, addr, authority))
            .collect()
    }

    /// Distinct base URLs with what a call needs and whether they are healthy (the
    /// ranks of one base share its health).
    pub fn bases_with_health(&self) -> Vec<(String, SocketAddr, String, bool)> {
        let mut out: Vec<(String, SocketAddr, String, bool)> = Vec::new();
        for w in &self.workers {
            if !out.iter().any(|t| t.0 == w.base_url) {
                let healthy = w.health.healthy;
                out.push((
                    w.base_url.clone(),
                    w.spec.addr,
                    w.spec.authority.clone(),
                    healthy,
                ));
            }
        }
        out
    }

    /// Entries of one base URL.
    pub fn of_base<'a>(
        &'a mut self,
        base: &'a str,
    ) -> impl Iterator<Item = &'a mut WorkerEntry> + 'a {
        self.workers.iter_mut().filter(move |w| w.base_url == base)
    }

    pub fn healthy_count(&self) -> usize {
        self.workers.iter().filter(|w| w.health.healthy).count()
    }
}
