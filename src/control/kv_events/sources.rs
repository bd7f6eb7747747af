//! Where a worker publishes its KV events: given on the command line
//! (`--kv-event-source URL=ENDPOINT[,ENDPOINT...]`, one endpoint per DP rank), or asked
//! of the worker (`GET /get_server_info` for its block size, `GET /kv_event_sources`
//! for its publishers). vLLM answers the latter with a list of its kv-events configs;
//! 0.1.17 accepted only an object keyed by DP rank. Both are read, and
//! `{"sources": [...]}` too.

use serde_json::Value;

/// One publisher: a worker's DP rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSpec {
    pub rank: u32,
    pub endpoint: String,
    pub replay: Option<String>,
    pub topic: String,
}

/// A worker's publishers and the block size they hash with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSources {
    pub block_size: u32,
    pub sources: Vec<SourceSpec>,
}

/// Parses `WORKER_URL=ENDPOINT[,ENDPOINT...]` (0.1.17's error texts).
pub fn parse_flag(arg: &str) -> Result<(String, Vec<String>), String> {
    let bad =
        || format!("--kv-event-source expects WORKER_URL=ENDPOINT[,ENDPOINT...], got '{arg}'");
    let (url, endpoints) = arg.split_once('=').ok_or_else(bad)?;
    let endpoints: Vec<String> = endpoints.split(',').map(|e| e.trim().to_string()).collect();
    if url.trim().is_empty() || endpoints.iter().any(String::is_empty) {
        return Err(bad());
    }
    for e in &endpoints {
        let host = e
            .strip_prefix("tcp://")
            .and_then(|r| r.rsplit_once(':'))
            .map(|(h, _)| h)
            .ok_or_else(bad)?;
        if host == "*" || host == "0.0.0.0" {
            return Err("KV connect host cannot be a wildcard".into());
        }
    }
    Ok((url.trim().trim_end_matches('/').to_string(), endpoints))
}

/// An endpoint a subscriber can connect to: a bind-style host (`*`, `0.0.0.0`, `::`)
/// becomes the worker's own.
pub fn connectable(endpoint: &str, worker_host: &str) -> String {
    let Some(rest) = endpoint.strip_prefix("tcp://") else {
        return endpoint.to_string();
    };
    match rest.rsplit_once(':') {
        Some(("*" | "0.0.0.0" | "[::]" | "::", port)) => format!("tcp://{worker_host}:{port}"),
        _ => endpoint.to_string(),
    }
}

/// The sources in a `/kv_event_sources` answer; entries that are not usable ZMQ
/// msgpack publishers (or have events turned off) are left out.
pub fn parse_sources(v: &Value, worker_host: &str) -> Vec<SourceSpec> {
    let entries: Vec<(Option<u32>, &Value)> = match v {
        Value::Array(list) => list.iter().map(|e| (None, e)).collect(),
        Value::Object(map) => match map.get("sources") {
            Some(Value::Array(list)) => list.iter().map(|e| (None, e)).collect(),
            _ => map
                .iter()
                .map(|(k, e)| (k.parse::<u32>().ok(), e))
                .collect(),
        },
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for (i, (keyed_rank, e)) in entries.into_iter().enumerate() {
        let s = |name: &str| e.get(name).and_then(Value::as_str);
        let usable = e.get("enable_kv_cache_events").and_then(Value::as_bool) != Some(false)
            && s("publisher").is_none_or(|p| p == "zmq")
            && s("encoding").is_none_or(|p| p == "msgpack")
            && e.get("schema_version")
                .and_then(Value::as_u64)
                .is_none_or(|v| v == 1);
        let Some(endpoint) = s("endpoint").filter(|_| usable) else {
            continue;
        };
        let rank = keyed_rank
            .or_else(|| {
                e.get("data_parallel_rank")
                    .and_then(Value::as_u64)
                    .map(|r| r as u32)
            })
            .unwrap_or(i as u32);
        out.push(SourceSpec {
            rank,
            endpoint: connectable(endpoint, worker_host),
            replay: s("replay_endpoint").map(|r| connectable(r, worker_host)),
            topic: s("topic").unwrap_or("").to_string(),
        });
    }
    out
}

/// The block size in a `/get_server_info` answer.
pub fn parse_block_size(v: &Value) -> Option<u32> {
    ["kv_block_size", "effective_attention_block_size"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_u64))
        .or_else(|| {
            v.pointer("/vllm_config/cache_config/block_size")
                .and_then(Value::as_u64)
        })
        .and_then(|b| u32::try_from(b).ok())
        .filter(|b| *b > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flag_syntax_and_wildcards() {
        assert_eq!(
            parse_flag("http://w:8000/=tcp://w:5557,tcp://w:5558").unwrap(),
            (
                "http://w:8000".to_string(),
                vec!["tcp://w:5557".into(), "tcp://w:5558".into()]
            )
        );
        assert!(parse_flag("http://w:8000")
            .unwrap_err()
            .contains("expects WORKER_URL="));
        assert_eq!(
            parse_flag("http://w=tcp://*:5557").unwrap_err(),
            "KV connect host cannot be a wildcard"
        );
    }

    #[test]
    fn list_object_and_wrapped_forms() {
        let entry = |port: u16| {
            json!({"endpoint": format!("tcp://*:{port}"), "publisher": "zmq", "encoding": "msgpack",
                   "schema_version": 1, "replay_endpoint": "tcp://0.0.0.0:6000", "topic": "kv"})
        };
        let list = parse_sources(&json!([entry(5557), entry(5558)]), "10.0.0.2");
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].rank, 1);
        assert_eq!(list[0].endpoint, "tcp://10.0.0.2:5557");
        assert_eq!(list[0].replay.as_deref(), Some("tcp://10.0.0.2:6000"));
        assert_eq!(list[0].topic, "kv");
        let object = parse_sources(&json!({"3": entry(5557)}), "h");
        assert_eq!(object[0].rank, 3);
        let wrapped = parse_sources(&json!({"sources": [entry(1)]}), "h");
        assert_eq!(wrapped.len(), 1);
        let mut off = entry(2);
        off["enable_kv_cache_events"] = json!(false);
        let mut nats = entry(3);
        nats["publisher"] = json!("nats");
        assert!(parse_sources(&json!([off, nats]), "h").is_empty());
    }

    #[test]
    fn block_size_from_server_info() {
        assert_eq!(parse_block_size(&json!({"kv_block_size": 32})), Some(32));
        assert_eq!(
            parse_block_size(&json!({"vllm_config": {"cache_config": {"block_size": 16}}})),
            Some(16)
        );
        assert_eq!(parse_block_size(&json!({})), None);
    }
}
