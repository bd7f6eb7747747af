//! Asking a pool's policy for a worker, and the 503 a client gets when there is none.

use crate::client::Client;
use crate::kv_blocks::ProvisionalBlocks;
use crate::policy::{Policy, Priced, RouteInput};
use crate::shard::Shard;
use crate::worker::{WorkerId, WorkerRole};

/// A routable worker of `role`'s pool for the request, leaving out `excluded` (the
/// workers a retried request failed on) when others can serve. What the policy says
/// the worker must prefill is noted in `c.prefill_charge` when the answer's start
/// tells when the prefill ended: a stream's first event, or a P/D prefill leg's answer
/// (one token). A whole answer comes after the last token: counting its prompt until
/// then (0.1.17 does) prices a worker long past that prefill as if it were not, and
/// on a chat workload cost a fifth of the prefix-cache hits (docs/kv-aware.md).
pub fn pick(
    shard: &Shard,
    c: &mut Client,
    json: Option<&serde_json::Value>,
    role: WorkerRole,
    excluded: &[WorkerId],
) -> Option<WorkerId> {
    let input = RouteInput {
        head: &c.head,
        json,
        tokens: c.tokens.as_deref(),
    };
    let (picked, (insert, charge, noted)) = match igw_model(shard, json, role) {
        Some(model) => {
            let mut pools = shard.model_pools.borrow_mut();
            let workers = shard.workers.borrow();
            let kind = (shard.config.policy, &shard.config.policy_options);
            let policy = pools.policy(model, &workers, kind, shard.index);
            let picked = policy.pick(&workers.view_serving(role, excluded, model), &input);
            (picked, left_by_pick(policy.as_mut()))
        }
        None => {
            let mut policy = shard.policy(role).borrow_mut();
            let workers = shard.workers.borrow();
            let picked = policy.pick(&workers.view(role, excluded), &input);
            (picked, left_by_pick(policy.as_mut()))
        }
    };
    let timed = |_: &Priced| {
        let streamed = json
            .and_then(|j| j.get("stream"))
            .and_then(serde_json::Value::as_bool);
        role == WorkerRole::Prefill || streamed == Some(true)
    };
    c.prefill_charge = picked.zip(charge.filter(timed));
    if let Some(insert) = insert {
        shard.queue_insert(insert);
    }
    if let Some(noted) = noted {
        shard.queue_provisional(noted);
    }
    if let Some(id) = picked {
        if let Some(w) = shard.workers.borrow_mut().get_mut(id) {
            w.decisions += 1;
        }
    }
    picked
}

/// What a pick leaves for the pipeline to take: a decision for the other shards
/// (cache_aware, sticky sessions), the prompt tokens the worker must prefill, and
/// kv_aware's provisional copies for the other shards.
type LeftByPick = (
    Option<(WorkerId, std::sync::Arc<str>)>,
    Option<Priced>,
    Option<ProvisionalBlocks>,
);

fn left_by_pick(policy: &mut dyn Policy) -> LeftByPick {
    (
        policy.take_insert(),
        policy.take_charge(),
        policy.take_provisional(),
    )
}

/// The model a request is routed by (`--enable-igw`, regular pool): its `model`.
pub fn igw_model<'j>(
    shard: &Shard,
    json: Option<&'j serde_json::Value>,
    role: WorkerRole,
) -> Option<&'j str> {
    if !shard.config.igw || role != WorkerRole::Regular {
        return None;
    }
    json?.get("model")?.as_str()
}

/// Answers 404 in OpenAI's shape for a model no worker serves (`--enable-igw`).
pub async fn unknown_model(c: &mut Client, model: &str) -> bool {
    let msg = format!("The model `{model}` does not exist.");
    c.send_error_coded(404, &msg, "model_not_found", Some("model"), true)
        .await
}

/// Answers 503 for a pool without a routable worker, saying whether breakers are why.
pub async fn no_worker(shard: &Shard, c: &mut Client, body_read: bool, role: WorkerRole) -> bool {
    let (healthy, open) = shard.workers.borrow().view(role, &[]).unavailable_counts();
    let pool = match role {
        WorkerRole::Regular => "",
        WorkerRole::Prefill => "prefill ",
        WorkerRole::Decode => "decode ",
    };
    let starting = shard.starting.borrow().clone();
    let msg = if let Some(why) = starting {
        format!("the router is starting and waits for {why}")
    } else if open > 0 {
        format!(
            "no {pool}worker is available: {open} of {healthy} healthy {pool}worker(s) \
             have an open circuit breaker after repeated failures"
        )
    } else {
        format!("no healthy {pool}worker is available")
    };
    c.send_error(503, &msg, body_read).await
}
