//! Flags and values 0.1.17 accepts that this build cannot honour yet. Giving one on the
//! command line stops the start with a line that names it (exit 2); nothing is ever
//! silently ignored.

use super::Cli;
use clap::parser::ValueSource;
use clap::ArgMatches;

/// (argument id, the feature it needs).
const NOT_BUILT: &[(&str, &str)] = &[
    ("router_temperature", "the kv_aware policy"),
    ("kv_penalty_host", "the kv_aware policy"),
    ("kv_penalty_external", "the kv_aware policy"),
    ("kv_penalty_disk", "the kv_aware policy"),
    ("kv_aware_session_affinity_ttl_secs", "the kv_aware policy"),
    ("kv_event_source", "the kv_aware policy"),
    ("kv_event_replay_source", "the kv_aware policy"),
    ("kv_event_block_size", "the kv_aware policy"),
    ("kv_event_model", "the kv_aware policy"),
    ("pd_kv_events", "the kv_aware policy"),
    ("mini_lb", "0.1.17's Python debug balancer"),
    ("enable_program_scheduling", "program scheduling"),
    ("program_scheduling_config_json", "program scheduling"),
    ("wasm_middleware", "WASM middleware"),
    ("wasm_middleware_sha256", "WASM middleware"),
    ("wasm_middleware_route", "WASM middleware"),
];

/// Policy names 0.1.17 has and this build does not yet.
const POLICIES_NOT_BUILT: &[&str] = &["kv_aware"];

/// One line per flag or value given that this build cannot honour.
pub fn refusals(cli: &Cli, m: &ArgMatches) -> Vec<String> {
    let given = |id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
    let mut out: Vec<String> = NOT_BUILT
        .iter()
        .filter(|(id, _)| given(id))
        .map(|(id, feature)| {
            format!(
                "--{} is not supported yet ({feature} is not built in this version)",
                id.replace('_', "-")
            )
        })
        .collect();
    let policies = [
        ("--policy", Some(&cli.policy)),
        ("--prefill-policy", cli.prefill_policy.as_ref()),
        ("--decode-policy", cli.decode_policy.as_ref()),
    ];
    for (flag, value) in policies {
        if let Some(v) = value.filter(|v| POLICIES_NOT_BUILT.contains(&v.as_str())) {
            out.push(format!(
                "{flag} {v} is not supported yet (a policy of 0.1.17 not built in this version)"
            ));
        }
    }
    if cli.published.kv_connector == "moriio" {
        out.push("--kv-connector moriio is not supported yet (nixl and mooncake are built)".into());
    }
    out
}
