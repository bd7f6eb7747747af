//! cache_aware's unit tests: decisions from hand-made worker sets and trees.
use super::*;
use crate::codec::request::RequestHead;
use crate::state::WorkerSet;
use crate::worker::WorkerRole;
use std::time::Instant;

fn set(n: u32) -> WorkerSet {
    crate::state::test_workers(n)
}

fn cfg() -> CacheAwareConfig {
    CacheAwareConfig {
        cache_threshold: 0.3,
        balance_abs_threshold: 64,
        balance_rel_threshold: 1.5,
        max_tree_size: 1 << 20,
    }
}

fn policy(s: &WorkerSet, cfg: CacheAwareConfig) -> CacheAware {
    let mut p = CacheAware::new(cfg);
    p.on_workers_changed(&s.view(WorkerRole::Regular, &[]));
    p
}

fn pick(p: &mut CacheAware, s: &WorkerSet, prompt: &str) -> WorkerId {
    let h = RequestHead::default();
    let body = serde_json::json!({ "prompt": prompt });
    let input = RouteInput {
        head: &h,
        json: Some(&body),
        tokens: None,
    };
    p.pick(&s.view(WorkerRole::Regular, &[]), &input).unwrap()
}

#[test]
fn a_shared_prefix_stays_on_its_worker() {
    let s = set(4);
    let mut p = policy(&s, cfg());
    let prefix = "You are a helpful assistant. ".repeat(20);
    let first = pick(&mut p, &s, &format!("{prefix} question 1"));
    for i in 2..10 {
        assert_eq!(pick(&mut p, &s, &format!("{prefix} question {i}")), first);
    }
    assert_eq!((p.hits, p.misses), (8, 1));
}

#[test]
fn a_new_prefix_lands_on_the_same_worker_in_every_shard_and_replica() {
    let s = set(4);
    // A replica numbers the same workers the other way round.
    let mut other = WorkerSet::default();
    for (id, w) in s.all().iter().rev().enumerate() {
        let mut spec = w.spec.clone();
        spec.id = id as WorkerId;
        other.upsert(&spec);
    }
    let url = |set: &WorkerSet, id| set.get(id).unwrap().spec.url.clone();
    let mut places = std::collections::HashSet::new();
    for k in 0..40 {
        let prompt = format!("system prompt {k}: {}", "be precise. ".repeat(40));
        let (mut a, mut b) = (policy(&s, cfg()), policy(&s, cfg()));
        let mut r = policy(&other, cfg());
        let wa = pick(&mut a, &s, &prompt);
        assert_eq!(wa, pick(&mut b, &s, &prompt), "two shards disagree");
        assert_eq!(url(&s, wa), url(&other, pick(&mut r, &other, &prompt)));
        places.insert(wa);
    }
    assert_eq!(places.len(), 4, "new prefixes spread over the workers");
}

#[test]
fn a_conversation_stays_where_its_longer_prefix_is_cached() {
    let mut s = set(4);
    let mut p = policy(&s, cfg());
    let system = "You answer questions about routing. ".repeat(10); // 360 bytes
    let conversation = format!("{system}{}", "user: and then? assistant: more. ".repeat(20));
    p.remote_insert(1, &system, Instant::now());
    p.remote_insert(2, &conversation, Instant::now());
    // The worker with the whole conversation has one request more in flight.
    s.get_mut(1).unwrap().in_flight = 1;
    s.get_mut(2).unwrap().in_flight = 2;
    assert_eq!(pick(&mut p, &s, &format!("{conversation} next")), 2);
}

#[test]
fn a_busy_cached_worker_passes_a_hot_prefix_on() {
    let mut s = set(2);
    let mut p = policy(&s, cfg());
    let prefix = "shared system prompt ".repeat(20);
    let first = pick(&mut p, &s, &format!("{prefix} a"));
    // Twelve in flight, more than the mean (6.5) plus NEW_CONVERSATION_SLACK: a new
    // conversation goes to the other worker.
    s.get_mut(first).unwrap().in_flight = 12;
    let second = pick(&mut p, &s, &format!("{prefix} b"));
    assert_ne!(second, first);
    // The home has room again: new conversations go back to it, as they do from
    // every other replica.
    s.get_mut(first).unwrap().in_flight = 1;
    s.get_mut(second).unwrap().in_flight = 0;
    assert_eq!(pick(&mut p, &s, &format!("{prefix} c")), first);
}

fn chat(p: &mut CacheAware, s: &WorkerSet, messages: &[(&str, &str)]) -> WorkerId {
    let h = RequestHead::default();
    let messages: Vec<_> = (messages.iter())
        .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
        .collect();
    let body = serde_json::json!({ "messages": messages });
    let input = RouteInput {
        head: &h,
        json: Some(&body),
        tokens: None,
    };
    p.pick(&s.view(WorkerRole::Regular, &[]), &input).unwrap()
}

fn system_prompt(k: usize) -> String {
    format!("System prompt {k}: you are an expert on topic {k}. ").repeat(12)
}

#[test]
fn replicas_give_shared_prompts_the_same_even_homes_whatever_order_they_saw_them_in() {
    let s = set(4);
    let (mut a, mut b) = (policy(&s, cfg()), policy(&s, cfg()));
    // Two conversations per prompt make it shared; b sees the prompts backwards.
    for k in 0..8 {
        for c in 0..2 {
            chat(
                &mut a,
                &s,
                &[("system", &system_prompt(k)), ("user", &format!("a{c}"))],
            );
            chat(
                &mut b,
                &s,
                &[
                    ("system", &system_prompt(7 - k)),
                    ("user", &format!("b{c}")),
                ],
            );
        }
    }
    let mut per_worker = [0; 4];
    for k in 0..8 {
        let m = [
            ("system", system_prompt(k)),
            ("user", "a new question".into()),
        ];
        let m: Vec<(&str, &str)> = m.iter().map(|(r, c)| (*r, c.as_str())).collect();
        let home = chat(&mut a, &s, &m);
        assert_eq!(
            home,
            chat(&mut b, &s, &m),
            "prompt {k}: the replicas disagree"
        );
        per_worker[home as usize] += 1;
    }
    assert_eq!(per_worker, [2, 2, 2, 2]);
}

#[test]
fn a_new_prompt_stays_where_its_first_request_went_when_it_becomes_shared() {
    let s = set(4);
    let user = |p: &mut CacheAware, k: usize, q: &str| {
        chat(p, &s, &[("system", &system_prompt(k)), ("user", q)])
    };
    let first_text = |k: usize| format!("system: {}\nuser: q0\n", system_prompt(k));
    let mut moved_without_pin = 0;
    for trial in 0..20 {
        // Shard y knows six shared prompts; shard x sends a new prompt p's first request
        // (nothing shared decides it: its best-ranked worker).
        let base = 1000 + 10 * trial;
        let (mut x, mut y, mut z) = (policy(&s, cfg()), policy(&s, cfg()), policy(&s, cfg()));
        for k in base..base + 6 {
            for shard in [&mut y, &mut z] {
                user(shard, k, "q0");
                user(shard, k, "q1");
            }
        }
        let p = base + 7;
        let first = user(&mut x, p, "q0");
        // p's second request reaches y after x's report: p becomes shared there while
        // only `first` holds it, and stays there.
        y.remote_insert(first, &first_text(p), Instant::now());
        assert_eq!(
            user(&mut y, p, "q1"),
            first,
            "trial {trial}: the prompt split"
        );
        // Without the pin (z learns p is shared some other way), its home is wherever
        // the even spread puts it.
        z.remote_insert(first, &first_text(p), Instant::now());
        let key = placement_key(&format!("system: {}", system_prompt(p)));
        z.homes.note_shared(key, None, Instant::now());
        if user(&mut z, p, "q9") != first {
            moved_without_pin += 1;
        }
    }
    assert!(
        moved_without_pin > 0,
        "the pin was never needed: the test tests nothing"
    );
}

#[test]
fn a_late_report_of_an_older_prompt_does_not_move_a_newer_one() {
    // Under load another shard's report can arrive tens of milliseconds late. Two
    // prompts ranked best on the same worker: the newer one (pinned there, its burst
    // under way) keeps it when the older one is learned late; a report that really
    // is newer takes the pin, so the test can tell the two apart.
    let s = set(4);
    let view = s.view(WorkerRole::Regular, &[]);
    let user = |p: &mut CacheAware, k: usize, q: &str| {
        chat(p, &s, &[("system", &system_prompt(k)), ("user", q)])
    };
    let first_text = |k: usize| format!("system: {}\nuser: q0\n", system_prompt(k));
    let best = |p: &CacheAware, k: usize| {
        let key = placement_key(&first_text(k));
        let w = view
            .routable()
            .max_by_key(|w| p.placement.score(key, w.spec.id));
        w.unwrap().spec.id
    };
    let probe = policy(&s, cfg());
    let (old, new) = (2000..2100)
        .flat_map(|a| (a + 1..2100).map(move |b| (a, b)))
        .find(|&(a, b)| best(&probe, a) == best(&probe, b))
        .unwrap();
    for late_is_older in [true, false] {
        let mut y = policy(&s, cfg());
        let routed_elsewhere = Instant::now();
        let home = user(&mut y, new, "q0");
        assert_eq!(
            user(&mut y, new, "q1"),
            home,
            "the new prompt became shared"
        );
        let at = if late_is_older {
            routed_elsewhere
        } else {
            Instant::now()
        };
        // Two of the older prompt's requests, routed by another shard: shared now.
        let text = |q: &str| format!("system: {}\nuser: {q}\n", system_prompt(old));
        y.remote_insert(best(&y, old), &text("q0"), at);
        y.remote_insert(best(&y, old), &text("q1"), at);
        let next = user(&mut y, new, "q2");
        if late_is_older {
            assert_eq!(next, home, "an older report moved the newer prompt");
        } else {
            assert_ne!(next, home, "a newer sole-held prompt takes the pin");
        }
    }
}

/// Three conversations on `system` make it a shared prompt; returns its home.
fn share_prompt(p: &mut CacheAware, s: &WorkerSet, system: &str) -> WorkerId {
    for c in 0..3 {
        chat(p, s, &[("system", system), ("user", &format!("q{c}"))]);
    }
    chat(p, s, &[("system", system), ("user", "hello")])
}

#[test]
fn a_conversation_whose_last_turn_went_through_another_replica_goes_home() {
    let s = set(4);
    let mut p = policy(&s, cfg());
    let system = system_prompt(1);
    let home = share_prompt(&mut p, &s, &system);
    // This router saw turn 1 elsewhere (a worker holding only its first question)...
    let other = (home + 1) % 4;
    let turn1 = format!("system: {system}\nuser: mine\n");
    p.remote_insert(other, &turn1, Instant::now());
    // ...and not turn 2, which the other replica sent home: turn 3 follows it.
    let turn3 = [
        ("system", system.as_str()),
        ("user", "mine"),
        ("assistant", "an answer"),
        ("user", "more"),
        ("assistant", "another answer"),
        ("user", "and more"),
    ];
    assert_eq!(chat(&mut p, &s, &turn3), home);
    // A conversation this router followed all along stays where it is, once its own
    // history outweighs the pull of the home (HOME_PULL).
    let long = "tell me everything about the first topic. ".repeat(20);
    p.remote_insert(
        other,
        &format!("system: {system}\nuser: {long}\n"),
        Instant::now(),
    );
    let turn2 = [
        ("system", system.as_str()),
        ("user", long.as_str()),
        ("assistant", "an answer"),
        ("user", "more"),
    ];
    assert_eq!(chat(&mut p, &s, &turn2), other);
}

#[test]
fn a_conversation_that_started_away_from_home_comes_back_at_its_next_turn() {
    let mut s = set(4);
    let mut p = policy(&s, cfg());
    let system = system_prompt(2);
    let home = share_prompt(&mut p, &s, &system);
    // Its first turn went elsewhere (before the prompt was known to be shared, or
    // over the cap), and that worker is no busier than the home.
    let other = (home + 1) % 4;
    p.remote_insert(
        other,
        &format!("system: {system}\nuser: early\n"),
        Instant::now(),
    );
    s.get_mut(home).unwrap().in_flight = 1;
    s.get_mut(other).unwrap().in_flight = 1;
    let turn2 = [
        ("system", system.as_str()),
        ("user", "early"),
        ("assistant", "an answer"),
        ("user", "more"),
    ];
    assert_eq!(chat(&mut p, &s, &turn2), home, "re-prefilling one question");
    // A home two requests busier lets it stay.
    let mut q = policy(&s, cfg());
    share_prompt(&mut q, &s, &system);
    q.remote_insert(
        other,
        &format!("system: {system}\nuser: early\n"),
        Instant::now(),
    );
    s.get_mut(home).unwrap().in_flight = 3;
    assert_eq!(chat(&mut q, &s, &turn2), other);
}

#[test]
fn imbalanced_loads_override_the_cache() {
    let mut s = set(2);
    let mut p = policy(&s, cfg());
    let prefix = "a long shared prefix ".repeat(20);
    let home = pick(&mut p, &s, &format!("{prefix} 1"));
    // max - min > 64 and max > 1.5 x min: the published guard.
    s.get_mut(home).unwrap().in_flight = 70;
    assert_ne!(pick(&mut p, &s, &format!("{prefix} 2")), home);
}

#[test]
fn memory_stays_bounded() {
    let s = set(2);
    let mut c = cfg();
    c.max_tree_size = 10_000;
    let mut p = policy(&s, c);
    for i in 0..2_000 {
        pick(
            &mut p,
            &s,
            &format!("unique prompt number {i} {}", "x".repeat(100)),
        );
        assert!(p.tree_sizes().iter().all(|(_, sz)| *sz <= 10_000));
    }
}
