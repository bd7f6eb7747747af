//! cache_aware learns from the workers' own request counters whether it sends all of
//! their traffic (`vllm_router_sole_sender`), and notices when another sender starts.

mod common;

use common::*;
use std::time::{Duration, Instant};

const SOLE: &str = "vllm_router_sole_sender";

/// Sends small chats to each of `ports` in turn until `done` holds, for at most
/// `within`; whether it came to hold.
fn chat_until(ports: &[u16], within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    let mut conns: Vec<Conn> = ports.iter().map(|p| Conn::open(*p)).collect();
    let body = chat_body("hello", 1, false).to_string();
    let mut since_check = 0;
    while Instant::now() < deadline {
        for c in conns.iter_mut() {
            c.post("/v1/chat/completions", &body);
            assert_eq!(c.read_response(false).status, 200);
        }
        since_check += 1;
        if since_check >= 8 {
            since_check = 0;
            if done() {
                return true;
            }
        }
    }
    false
}

#[test]
fn the_workers_counters_tell_a_router_whether_it_is_their_sole_sender() {
    let a = mock(&["--name", "a"]);
    let b = mock(&["--name", "b"]);
    let r = router(&[&a, &b], &["--policy", "cache_aware"]);
    // Before any traffic the counters have said nothing.
    assert_eq!(metric(&r.metrics(), SOLE, &[]), None);
    let sole = chat_until(&[r.port], Duration::from_secs(30), || {
        metric(&r.metrics(), SOLE, &[]) == Some(1.0)
    });
    assert!(sole, "never the sole sender:\n{}", r.metrics());
    // Another sender (a second replica, a direct client) takes as many requests
    // straight to the workers as go through the router.
    let shared = chat_until(&[r.port, a.port, b.port], Duration::from_secs(30), || {
        metric(&r.metrics(), SOLE, &[]) == Some(0.0)
    });
    assert!(shared, "the other sender went unseen:\n{}", r.metrics());
}

#[test]
fn two_replicas_over_the_same_workers_each_see_the_other() {
    let a = mock(&["--name", "a"]);
    let b = mock(&["--name", "b"]);
    let one = router(&[&a, &b], &["--policy", "cache_aware"]);
    let two = router(&[&a, &b], &["--policy", "cache_aware"]);
    let settled = chat_until(&[one.port, two.port], Duration::from_secs(30), || {
        let said = |r: &Router| metric(&r.metrics(), SOLE, &[]);
        said(&one) == Some(0.0) && said(&two) == Some(0.0)
    });
    assert!(settled, "{}\n{}", one.metrics(), two.metrics());
}

#[test]
fn a_sole_sender_still_places_a_new_prefix_once_across_shards() {
    // Homes follow the traffic only once the router is the sole sender: the burst
    // target must hold then too (a new prompt's pin is shorter there).
    let ws: Vec<Proc> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| mock(&["--name", n]))
        .collect();
    let refs: Vec<&Proc> = ws.iter().collect();
    let r = router(&refs, &["--policy", "cache_aware", "--shards", "2"]);
    let sole = chat_until(&[r.port], Duration::from_secs(30), || {
        metric(&r.metrics(), SOLE, &[]) == Some(1.0)
    });
    assert!(sole, "never the sole sender:\n{}", r.metrics());
    each_new_prefix_lands_on_one_worker(r.port);
    assert_eq!(metric(&r.metrics(), SOLE, &[]), Some(1.0));
}
