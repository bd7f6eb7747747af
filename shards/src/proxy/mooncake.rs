//! `--kv-connector mooncake`: the `kv_transfer_params` of vLLM's MooncakeConnector,
//! made by the router (docs/pd.md). Unlike NIXL, the decode leg takes nothing from
//! the prefill answer: both legs share a transfer id, and the decode leg names the
//! prefill worker's bootstrap server and engine, which the control core asked the
//! worker for at start (`GET /query` on its bootstrap port).

use crate::policy::Random;
use crate::worker::WorkerSpec;
use serde_json::{json, Value};

/// `xfer-` and a random (version 4) UUID, as vLLM's router makes them.
pub fn transfer_id(rng: &mut Random) -> String {
    let (hi, lo) = (rng.next_u64(), rng.next_u64());
    // RFC 9562 §5.4: version 4 in bits 48-51, variant 10 in bits 64-65.
    let hi = (hi & !0xf000) | 0x4000;
    let lo = (lo & !(0b11 << 62)) | (0b10 << 62);
    format!(
        "xfer-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

/// The prefill leg's params: keep the KV cache for a remote decode under this id.
pub fn prefill_params(transfer: &str) -> Value {
    json!({"do_remote_decode": true, "do_remote_prefill": false, "transfer_id": transfer})
}

/// The decode leg's params, naming the prefill worker that served; None while its
/// bootstrap server has not answered (the decode leg then goes without params).
pub fn decode_params(transfer: &str, prefill: &WorkerSpec) -> Option<Value> {
    let boot = prefill.mooncake.as_ref()?;
    Some(json!({
        "do_remote_decode": false,
        "do_remote_prefill": true,
        "transfer_id": transfer,
        "remote_bootstrap_addr": boot.addr,
        "remote_engine_id": boot.engine(prefill.dp_rank),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::MooncakeBootstrap;

    #[test]
    fn transfer_ids_are_version_4_uuids() {
        let mut rng = Random::new(7);
        let id = transfer_id(&mut rng);
        let uuid = id.strip_prefix("xfer-").unwrap();
        let parts: Vec<&str> = uuid.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{id}");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(transfer_id(&mut rng), id);
    }

    #[test]
    fn decode_params_name_the_engine_of_the_prefill_rank() {
        let mut spec = crate::state::test_spec(1);
        assert_eq!(decode_params("t", &spec), None);
        spec.mooncake = Some(MooncakeBootstrap {
            addr: "http://10.0.0.1:8998".into(),
            engines: vec![(0, "e0".into()), (1, "e1".into())],
        });
        spec.dp_rank = Some(1);
        let p = decode_params("t", &spec).unwrap();
        assert_eq!(
            p,
            json!({"do_remote_decode": false, "do_remote_prefill": true, "transfer_id": "t",
                   "remote_bootstrap_addr": "http://10.0.0.1:8998", "remote_engine_id": "e1"})
        );
        spec.dp_rank = Some(5);
        assert_eq!(decode_params("t", &spec).unwrap()["remote_engine_id"], "e0");
    }
}
