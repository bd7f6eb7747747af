//! kv_aware's unit tests: decisions from hand-made worker sets and block indexes.
use super::*;
use crate::codec::request::RequestHead;
use crate::kv_blocks::{block_hashes, BlockChanges, Medium};
use crate::state::{test_workers, WorkerSet};

fn prompt(n: u32) -> serde_json::Value {
    serde_json::json!({ "prompt": (0..n).collect::<Vec<u32>>() })
}

fn pick(p: &mut KvAware, s: &WorkerSet, body: &serde_json::Value) -> WorkerId {
    let h = RequestHead::default();
    let input = RouteInput {
        head: &h,
        json: Some(body),
        tokens: None,
    };
    p.pick(&s.view(WorkerRole::Regular, &[]), &input).unwrap()
}

/// `worker` holds the first `blocks` blocks of `0..` in `medium`.
fn hold(p: &mut KvAware, worker: WorkerId, blocks: usize, medium: Medium) {
    let tokens: Vec<u32> = (0..(blocks as u32 * 16)).collect();
    let mut names = Vec::new();
    block_hashes(&tokens, 16, &mut names);
    p.kv_blocks(&KvBlockDelta {
        worker,
        block_size: 16,
        changes: BlockChanges {
            stored: names.into_iter().map(|n| (n, medium)).collect(),
            ..Default::default()
        },
    });
}

/// Two workers, worker 1 holding the first 64 tokens of `0..`, priced with `cfg`.
fn holding_64(cfg: KvAwareConfig) -> (WorkerSet, KvAware) {
    let s = test_workers(2);
    let mut p = KvAware::new(cfg, 1, WorkerRole::Regular);
    p.on_workers_changed(&s.view(WorkerRole::Regular, &[]));
    hold(&mut p, 1, 4, Medium::Device);
    (s, p)
}

#[test]
fn the_worker_holding_the_prefix_wins_until_load_outweighs_it() {
    // 0.1.17's cost: load + 1 to the first power.
    let cfg = KvAwareConfig {
        load_exponent: 1.0,
        ..Default::default()
    };
    let (mut s, mut p) = holding_64(cfg);
    // 80 tokens: worker 1 prefills 80 - 64 = 16, worker 0 all 80.
    assert_eq!(pick(&mut p, &s, &prompt(80)), 1);
    // 16 x (3 + 1) = 64 < 80 x 1: still worker 1; at 4 in flight, 80 = 80 ties.
    s.get_mut(1).unwrap().in_flight = 3;
    assert_eq!(pick(&mut p, &s, &prompt(80)), 1);
    s.get_mut(1).unwrap().in_flight = 5;
    assert_eq!(pick(&mut p, &s, &prompt(80)), 0);
    assert_eq!(p.kv_lookups(), [2, 1, 0, 0]);
}

#[test]
fn by_default_load_weighs_as_its_square_root() {
    let (mut s, mut p) = holding_64(KvAwareConfig::default());
    // 16 x sqrt(5 + 1) = 39 < 80: worker 1, where 0.1.17 sends it to the idle worker.
    s.get_mut(1).unwrap().in_flight = 5;
    assert_eq!(pick(&mut p, &s, &prompt(80)), 1);
    // 16 x sqrt(23 + 1) = 78.4 < 80; 16 x sqrt(25 + 1) = 81.6 > 80.
    s.get_mut(1).unwrap().in_flight = 23;
    assert_eq!(pick(&mut p, &s, &prompt(80)), 1);
    s.get_mut(1).unwrap().in_flight = 25;
    assert_eq!(pick(&mut p, &s, &prompt(80)), 0);
}

/// Two workers, and kv_aware weighing their pending prefill as 0.1.17 does.
fn weighing_pending_prefill() -> (WorkerSet, KvAware) {
    let s = test_workers(2);
    let cfg = KvAwareConfig {
        pending_prefill_weight: 1.0,
        load_exponent: 1.0,
        ..Default::default()
    };
    let mut p = KvAware::new(cfg, 1, WorkerRole::Regular);
    p.on_workers_changed(&s.view(WorkerRole::Regular, &[]));
    (s, p)
}

#[test]
fn tokens_still_to_prefill_weigh_as_0_1_17_says() {
    // 40 tokens: worker 1 prefills 8, worker 0 24; worker 1 has one request in
    // flight. Its prefill ahead decides: (8 + 2) x 2 = 20 < 24, (8 + 8) x 2 = 32 > 24.
    let (mut s, mut p) = weighing_pending_prefill();
    hold(&mut p, 0, 1, Medium::Device);
    hold(&mut p, 1, 2, Medium::Device);
    s.get_mut(1).unwrap().in_flight = 1;
    s.get_mut(1).unwrap().prefill_tokens = 2;
    assert_eq!(pick(&mut p, &s, &prompt(40)), 1);
    assert_eq!(
        p.take_charge().map(|c| c.new),
        Some(8),
        "what worker 1 must prefill"
    );
    s.get_mut(1).unwrap().remote_prefill_tokens = 6;
    assert_eq!(pick(&mut p, &s, &prompt(40)), 0);
    assert_eq!(p.take_charge().map(|c| c.new), Some(24));
}

#[test]
fn credits_follow_0_1_17_examples() {
    let p = KvAware::new(KvAwareConfig::default(), 1, WorkerRole::Regular);
    let d = |device, host, disk| Depth {
        worker: 0,
        device,
        host,
        disk,
        external: 0,
        provisional: 0,
    };
    // B = 16, N = 80 (new = N - credited).
    let new = |x: Depth| 80.0 - p.credited(&x, 80, 16);
    assert_eq!(new(d(3, 3, 3)), 32.0);
    assert!(
        (new(d(0, 3, 0)) - 41.6).abs() < 1e-9,
        "CPU 3 blocks: 80 - 38.4"
    );
    assert!((new(d(0, 0, 3)) - 65.6).abs() < 1e-9);
    assert!((new(d(1, 3, 1)) - 38.4).abs() < 1e-9, "GPU 1 + CPU to 3");
    assert!(
        (new(d(1, 2, 4)) - 49.6).abs() < 1e-9,
        "disk adds more blocks"
    );
    let external = |device, external| Depth {
        external,
        ..d(device, device, device)
    };
    assert!(
        (new(external(0, 3)) - 51.2).abs() < 1e-9,
        "external 3 blocks: 80 - 48 x 0.6"
    );
    assert!(
        (new(Depth {
            external: 4,
            ..d(1, 4, 1)
        }) - 25.6)
            .abs()
            < 1e-9,
        "at equal blocks the better credit: host's 0.8 over external's 0.6"
    );
    assert_eq!(new(d(5, 5, 5)), 16.0, "the last token is never credited");
    assert_eq!(
        new(d(0, 5, 0)),
        16.0,
        "CPU 5 blocks: capped at N - 1 overall"
    );
}

#[test]
fn without_tokens_it_routes_by_load() {
    let mut s = test_workers(3);
    let mut p = KvAware::new(KvAwareConfig::default(), 1, WorkerRole::Regular);
    p.on_workers_changed(&s.view(WorkerRole::Regular, &[]));
    s.get_mut(0).unwrap().in_flight = 2;
    s.get_mut(2).unwrap().in_flight = 1;
    let chat = serde_json::json!({"messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(pick(&mut p, &s, &chat), 1, "the least loaded");
    assert_eq!(p.kv_lookups(), [0, 0, 1, 0]);
}

#[test]
fn the_decode_pool_goes_by_load_and_the_prefill_pool_keeps_no_sessions() {
    let mut s = test_workers(2);
    let cfg = KvAwareConfig {
        session_affinity_ttl: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let mut decode = KvAware::new(cfg.clone(), 1, WorkerRole::Decode);
    decode.on_workers_changed(&s.view(WorkerRole::Regular, &[]));
    hold(&mut decode, 1, 4, Medium::Device);
    s.get_mut(1).unwrap().in_flight = 1;
    assert_eq!(pick(&mut decode, &s, &prompt(80)), 0, "blocks do not count");
    assert_eq!(decode.kv_lookups(), [0; 4]);
    let prefill = KvAware::new(cfg, 1, WorkerRole::Prefill);
    assert!(prefill.affinity.is_none());
}

#[test]
fn the_prefill_ahead_leaves_out_what_the_request_shares_with_it() {
    // A burst: the first request (200 tokens) is prefilling on worker 1, so its 12
    // blocks are there provisionally; the second shares them and waits on 8.
    let (mut s, mut p) = weighing_pending_prefill();
    let first = pick(&mut p, &s, &prompt(200));
    let charge = p.take_charge().unwrap().new;
    assert_eq!(charge, 200);
    let w = s.get_mut(first).unwrap();
    (w.in_flight, w.prefill_tokens) = (1, charge);
    assert_eq!(pick(&mut p, &s, &prompt(200)), first, "(8 + 8) x 2 < 200");
    let depth = p.index.depth_of(first, &p.depths).copied();
    assert_eq!(ahead(s.get(first).unwrap(), depth.as_ref(), 16), 8.0);
}

#[test]
fn a_temperature_samples_by_the_softmax_of_the_scores() {
    // Scores 8 (worker 1) and 24 (worker 0); T = 16: weights 1 and e^-1, so worker 1
    // about 73% of the time (0.1.17: 30 of 40).
    let s = test_workers(2);
    let cfg = KvAwareConfig {
        temperature: 16.0,
        provisional_ttl: None,
        ..Default::default()
    };
    let mut p = KvAware::new(cfg, 7, WorkerRole::Regular);
    p.on_workers_changed(&s.view(WorkerRole::Regular, &[]));
    hold(&mut p, 0, 1, Medium::Device);
    hold(&mut p, 1, 2, Medium::Device);
    let ones = (0..4000)
        .filter(|_| pick(&mut p, &s, &prompt(40)) == 1)
        .count();
    assert!((2700..3150).contains(&ones), "{ones} of 4000");
    assert_eq!(
        p.kv_lookups()[..2].iter().sum::<u64>(),
        4000,
        "all credited"
    );
}

#[test]
fn another_shards_provisional_copies_draw_the_prompt_there() {
    let mut s = test_workers(2);
    let mut here = KvAware::new(KvAwareConfig::default(), 1, WorkerRole::Regular);
    let mut there = KvAware::new(KvAwareConfig::default(), 2, WorkerRole::Regular);
    here.on_workers_changed(&s.view(WorkerRole::Regular, &[]));
    there.on_workers_changed(&s.view(WorkerRole::Regular, &[]));
    let chosen = pick(&mut here, &s, &prompt(80));
    let (worker, names) = here
        .take_provisional()
        .expect("a new prompt's blocks are noted");
    assert_eq!((worker, names.len()), (chosen, 5));
    assert!(here.take_provisional().is_none(), "taken once");
    // The chosen worker is busy: by load alone the other shard would go elsewhere.
    s.get_mut(chosen).unwrap().in_flight = 1;
    assert_ne!(pick(&mut there, &s, &prompt(80)), chosen);
    let mut there = KvAware::new(KvAwareConfig::default(), 2, WorkerRole::Regular);
    there.on_workers_changed(&s.view(WorkerRole::Regular, &[]));
    there.remote_provisional(worker, &names);
    assert_eq!(pick(&mut there, &s, &prompt(80)), chosen);
    // What it already knows it does not pass on again.
    assert!(there.take_provisional().is_none());
}

#[test]
fn a_cold_prompt_is_priced_by_each_workers_recent_share_of_the_traffic() {
    let run = |cfg: KvAwareConfig| {
        let mut s = test_workers(3);
        let mut p = KvAware::new(cfg, 1, WorkerRole::Regular);
        p.on_workers_changed(&s.view(WorkerRole::Regular, &[]));
        // Worker 0 holds a prompt and serves it three times: all of the recent traffic.
        hold(&mut p, 0, 4, Medium::Device);
        for _ in 0..3 {
            assert_eq!(pick(&mut p, &s, &prompt(80)), 0);
        }
        // A prompt no worker holds, while worker 0 has nothing in flight, worker 1
        // two requests and worker 2 three.
        s.get_mut(1).unwrap().in_flight = 2;
        s.get_mut(2).unwrap().in_flight = 3;
        let cold = serde_json::json!({ "prompt": (1000..1080).collect::<Vec<u32>>() });
        pick(&mut p, &s, &cold)
    };
    // Worker 0 counts as carrying all 5 in flight and this one: 80 x sqrt(7) against
    // worker 1's 80 x sqrt(3) and worker 2's 80 x sqrt(4).
    assert_eq!(run(KvAwareConfig::default()), 1);
    let by_load = KvAwareConfig {
        cold_by_recent_traffic: false,
        ..Default::default()
    };
    assert_eq!(
        run(by_load),
        0,
        "0.1.17: requests in flight, the idle worker"
    );
}

#[test]
fn another_shards_requests_count_in_the_recent_share() {
    let mut s = test_workers(3);
    let mut p = KvAware::new(KvAwareConfig::default(), 1, WorkerRole::Regular);
    p.on_workers_changed(&s.view(WorkerRole::Regular, &[]));
    // Another shard sent worker 0 three requests; this shard has sent none.
    let tokens: Vec<u32> = (0..80).collect();
    let mut names = Vec::new();
    block_hashes(&tokens, 16, &mut names);
    for _ in 0..3 {
        p.remote_provisional(0, &names);
    }
    s.get_mut(1).unwrap().in_flight = 2;
    s.get_mut(2).unwrap().in_flight = 3;
    let cold = serde_json::json!({ "prompt": (1000..1080).collect::<Vec<u32>>() });
    assert_eq!(
        pick(&mut p, &s, &cold),
        1,
        "worker 0 carried the router's recent traffic, though not this shard's"
    );
}
