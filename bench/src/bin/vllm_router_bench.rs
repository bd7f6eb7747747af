//! vllm-router-bench: latency of OpenAI-style traffic through one or more targets,
//! side by side (docs/benchmarks.md; `bench/compare.sh` drives it).
//!
//!   vllm-router-bench --target direct=http://127.0.0.1:8001 \
//!       --target router=http://127.0.0.1:30000 --rate 200 --duration 20 --stream

use clap::Parser;
use std::net::ToSocketAddrs;
use std::time::Duration;
use vllm_router_bench::loadgen::{self, report, workload::Workload, Load, RunConfig, Target};

#[derive(Parser, Debug)]
#[command(
    name = "vllm-router-bench",
    about = "Open-loop, SSE-aware latency benchmark for OpenAI-style endpoints"
)]
struct Args {
    /// NAME=URL, repeated; a target named `direct` is the baseline for "added" rows.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Requests per second per target (open loop).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Poisson arrivals instead of a constant rate.
    #[arg(long)]
    poisson: bool,
    /// Closed loop instead: this many connections per target, back to back.
    #[arg(long)]
    connections: Option<usize>,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of traffic before measuring starts (connections warm, caches filled).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Chat completions (default) or completions.
    #[arg(long, default_value = "chat", value_parser = ["chat", "completions"])]
    api: String,
    /// Ask for SSE streams (`"stream": true`): time to first token and between tokens.
    #[arg(long)]
    stream: bool,
    /// `max_tokens` of every request.
    #[arg(long, default_value_t = 16)]
    max_tokens: u32,
    /// `model` of every request.
    #[arg(long, default_value = "mock-model")]
    model: String,
    /// Prompt length in words: N or MIN-MAX (uniform).
    #[arg(long, default_value = "64-256")]
    prompt_words: String,
    /// Multi-turn sessions sharing a system prompt (0: independent requests).
    #[arg(long, default_value_t = 0)]
    sessions: usize,
    /// Turns per session (each resends the conversation so far).
    #[arg(long, default_value_t = 4)]
    turns: usize,
    /// Length of the sessions' shared system prompt, in words.
    #[arg(long, default_value_t = 200)]
    system_words: usize,
    /// JSONL workload file (overrides the generated bodies).
    #[arg(long)]
    workload: Option<std::path::PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write a latency-percentile plot (SVG) here.
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
    /// Seed of the prompt and arrival generator: the same seed, the same requests.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Extra request header `NAME: VALUE`, repeatable (`x-mock-timestamps: 1` makes the
    /// mock stamp its events, for the event delivery table).
    #[arg(long = "header")]
    headers: Vec<String>,
}

fn parse_target(s: &str) -> Result<Target, String> {
    let (name, url) = s
        .split_once('=')
        .ok_or(format!("--target {s:?}: expected NAME=URL"))?;
    let host = url
        .strip_prefix("http://")
        .ok_or(format!("--target {s:?}: only http:// URLs"))?
        .trim_end_matches('/');
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("--target {s:?}: {e}"))?
        .next()
        .ok_or(format!("--target {s:?}: no address"))?;
    Ok(Target {
        name: name.to_string(),
        addr,
        host: host.to_string(),
    })
}

fn main() {
    let a = Args::parse();
    if let Err(e) = run(a) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<(), String> {
    let targets = a
        .targets
        .iter()
        .map(|t| parse_target(t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut workload = Workload::new(
        a.api == "chat",
        a.stream,
        a.max_tokens,
        a.model.clone(),
        a.prompt_words.parse()?,
        a.sessions,
        a.turns,
        a.system_words,
    );
    if let Some(path) = &a.workload {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        workload.load_file(&text)?;
    }
    let load = match a.connections {
        Some(c) => Load::Closed {
            connections: c.max(1),
        },
        None => Load::Open {
            rate: a.rate,
            poisson: a.poisson,
        },
    };
    let cfg = RunConfig {
        targets: targets.clone(),
        load,
        duration: Duration::from_secs_f64(a.duration),
        warmup: Duration::from_secs_f64(a.warmup),
        seed: a.seed,
        headers: a
            .headers
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or(format!("--header {h:?}: expected NAME: VALUE"))
            })
            .collect::<Result<_, _>>()?,
    };
    let results = loadgen::run(&cfg, workload).map_err(|e| e.to_string())?;
    let mode = match load {
        Load::Open { rate, poisson } => format!(
            "open loop, {rate} req/s per target{}",
            if poisson { " (Poisson)" } else { "" }
        ),
        Load::Closed { connections } => {
            format!("closed loop, {connections} connection(s) per target")
        }
    };
    println!(
        "{mode}, {}s measured after {}s warm-up, {} {}, max_tokens {}, prompt {} words\n",
        a.duration,
        a.warmup,
        a.api,
        if a.stream { "streamed" } else { "not streamed" },
        a.max_tokens,
        a.prompt_words
    );
    print!("{}", report::table(&targets, &results));
    let mut all_failed = Vec::new();
    for (t, s) in targets.iter().zip(&results.stats) {
        if !s.first_errors.is_empty() {
            eprintln!("{}: first failures: {}", t.name, s.first_errors.join("; "));
        }
        if s.ok == 0 && s.errors + s.bad_status > 0 {
            all_failed.push(t.name.clone());
        }
    }
    if let Some(path) = &a.json {
        let config = serde_json::json!({
            "mode": mode, "duration_s": a.duration, "warmup_s": a.warmup, "api": a.api,
            "stream": a.stream, "max_tokens": a.max_tokens, "prompt_words": a.prompt_words,
            "sessions": a.sessions, "targets": a.targets,
        });
        let doc = report::json(&targets, &results, config);
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap())
            .map_err(|e| e.to_string())?;
    }
    if let Some(path) = &a.svg {
        std::fs::write(path, report::svg(&targets, &results)).map_err(|e| e.to_string())?;
    }
    if !all_failed.is_empty() {
        return Err(format!(
            "every measured request failed at {}",
            all_failed.join(", ")
        ));
    }
    Ok(())
}
