//! Flags and values 0.1.17 accepts that this build cannot honour yet. Giving one on the
//! command line stops the start with a line that names it (exit 2); nothing is ever
//! silently ignored.

use super::Cli;
use clap::parser::ValueSource;
use clap::ArgMatches;

/// (argument id, the feature it needs).
const NOT_BUILT: &[(&str, &str)] = &[
    ("mini_lb", "0.1.17's Python debug balancer"),
    ("enable_program_scheduling", "program scheduling"),
    ("program_scheduling_config_json", "program scheduling"),
    ("wasm_middleware", "WASM middleware"),
    ("wasm_middleware_sha256", "WASM middleware"),
    ("wasm_middleware_route", "WASM middleware"),
];

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
    if cli.published.kv_connector == "moriio" {
        out.push("--kv-connector moriio is not supported yet (nixl and mooncake are built)".into());
    }
    out
}
