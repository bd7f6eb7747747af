//! vllm-router: parse flags, check the machine, start the shards and the control core,
//! then wait for a signal to drain. The binary is [`main`]; [`kv_ingest`] is the one
//! other door, for the ingestion benchmark in `bench/`.

mod cli;
mod control;
mod cpu_quota;
mod kv_settings;
mod notify;
mod preflight;
mod settings;
mod signals;

use cli::Cli;
use control::{Command, ControlCore, StartUp};
use nix::sys::signal::Signal;
use shards::log::Level;
use std::process::ExitCode;
use std::time::Duration;

/// The log writer is a thread fed by a channel; the last lines need a moment to reach
/// the file or terminal before the process exits (a line takes microseconds).
const LOG_FLUSH_PAUSE: Duration = Duration::from_millis(20);

/// The `vllm-router` program.
pub fn main() -> ExitCode {
    let (cli, unsupported) = Cli::parse_checked();
    if !unsupported.is_empty() {
        for line in &unsupported {
            eprintln!("error: {line}");
        }
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The control core's KV-event ingestion without its sockets: decoding a message's
/// payload and applying it to a source's block table (`bench/benches/kv_ingest.rs`).
pub mod kv_ingest {
    pub use crate::control::kv_events::index::SourceBlocks;
    pub use crate::control::kv_events::wire::{decode_batch, KvEvent};
    pub use shards::kv_blocks::BlockChanges;
}

fn run(cli: Cli) -> Result<(), String> {
    // Before any thread starts: every thread inherits the blocked mask.
    let signals = signals::take()?;
    let level = match cli.log_level.as_str() {
        "critical" => Level::Error,
        other => Level::parse(other).unwrap_or(Level::Info),
    };
    shards::log::init(level, cli.log_dir.as_deref())
        .map_err(|e| format!("cannot open the log: {e}"))?;

    let cpus = preflight::allowed_cpus();
    let quota = cpu_quota::cpu_quota();
    let pin = cpu_quota::PinShards::parse(&cli.pin_shards).unwrap_or(cpu_quota::PinShards::Auto);
    let online = cpu_quota::online_cpus().unwrap_or(usize::MAX);
    let (shard_count, placement) =
        cpu_quota::shard_plan(cli.shards, pin, cpus.len(), online, quota);
    let pinned = placement == cpu_quota::ShardPlacement::Pinned;
    preflight::check_io_uring()?;
    preflight::check_memlock(shard_count)?;
    if let Some((before, after)) = preflight::raise_nofile() {
        shards::debug!("open-file limit raised from {before} to {after}");
    }

    let settings = settings::Settings::from_cli(&cli, shard_count)?;
    let (listen, policy) = (settings.shard.listen, settings.shard.policy);
    let worker_urls = settings.control.worker_urls.clone();
    let notifier = settings.control.notifier.clone();
    let (config, control_config, reserved) = (settings.shard, settings.control, settings.reserved);

    // Links first: the control core queues the worker set on them before the shards
    // exist, and each shard applies what is queued before it accepts a connection.
    let (report_tx, report_rx) = crossbeam_channel::unbounded();
    let mut control_ends = Vec::with_capacity(shard_count);
    let mut shard_ends = Vec::with_capacity(shard_count);
    for _ in 0..shard_count {
        let (c, s) = shards::link::link().map_err(|e| format!("cannot create shard link: {e}"))?;
        control_ends.push(c);
        shard_ends.push(s);
    }
    let (command_tx, command_rx) = crossbeam_channel::bounded(4);
    let (started_tx, started_rx) = crossbeam_channel::bounded(1);
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let control = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let clean = ControlCore {
                links: control_ends,
                reports: report_rx,
                commands: command_rx,
                config: control_config,
            }
            .run(started_tx);
            let _ = done_tx.send(clean);
        })
        .map_err(|e| format!("cannot start the control core: {e}"))?;
    // The shards listen once the control core is bound, during the start-up wait too:
    // `/readiness` and inference calls answer 503 with what it waits for.
    match next_start_event(&started_rx, &signals)? {
        Some(StartUp::Bound) => {}
        Some(StartUp::Failed(e)) => return Err(e),
        Some(StartUp::Ready(_)) => return Err("the control core started out of order".into()),
        None => return Ok(()), // interrupted: nothing serves yet, nothing to drain
    }
    let mut threads = Vec::with_capacity(shard_count);
    for (index, shard_end) in shard_ends.into_iter().enumerate() {
        let cpu = cpus
            .get(index % cpus.len().max(1))
            .copied()
            .filter(|_| pinned);
        let thread = shards::spawn_shard(index, cpu, config.clone(), shard_end, report_tx.clone())?;
        threads.push(thread);
    }
    drop(reserved); // every shard holds the port now
    if !worker_urls.is_empty() {
        shards::info!(
            "checking {} worker(s) before serving; meanwhile http://{listen} answers 503 and says why",
            worker_urls.len()
        );
    }
    let started = match next_start_event(&started_rx, &signals)? {
        Some(StartUp::Ready(started)) => started,
        Some(StartUp::Failed(e)) => return Err(e),
        Some(StartUp::Bound) => return Err("the control core started out of order".into()),
        None => return Ok(()), // interrupted during the wait: nothing was served
    };
    let prometheus = started.metrics;

    let placed = match placement {
        cpu_quota::ShardPlacement::Pinned => {
            let cpu_list: Vec<String> = cpus
                .iter()
                .take(shard_count)
                .map(|c| c.to_string())
                .collect();
            format!("on CPU(s) {}", cpu_list.join(","))
        }
        cpu_quota::ShardPlacement::UnderQuota(q) => format!(
            "not pinned, for a CPU quota of {q:.2} of the {} CPU(s) in the affinity mask,",
            cpus.len()
        ),
        cpu_quota::ShardPlacement::Shared => format!(
            "not pinned, sharing the {} CPU(s) of the affinity mask (--pin-shards)",
            cpus.len()
        ),
    };
    shards::info!(
        "vllm-router listening on http://{listen} with {shard_count} shard(s) {placed} \
         (policy {}); metrics on http://{prometheus}/metrics",
        policy.name()
    );
    if config.access.admin.is_none() && !listen.ip().is_loopback() {
        shards::warn!(
            "the admin API is open to anyone who reaches {listen}: POST /add_worker can send \
             traffic anywhere; set --admin-api-key (or VLLM_ROUTER_ADMIN_API_KEY)"
        );
    }
    if started.workers.is_empty() {
        shards::warn!("no workers configured: add them with POST /add_worker?url=...");
    }
    for (url, healthy, why) in &started.workers {
        if *healthy {
            shards::info!("worker {url} is healthy");
        } else {
            shards::warn!(
                "worker {url} is not healthy yet: {}",
                why.as_deref().unwrap_or("?")
            );
        }
    }

    if let Some(n) = &notifier {
        let healthy = started.workers.iter().filter(|w| w.1).count();
        n.send(&format!(
            "READY=1\nSTATUS=serving; {healthy} of {} worker(s) healthy\nMAINPID={}",
            started.workers.len(),
            std::process::id()
        ));
    }

    let signal = loop {
        match signals
            .recv()
            .map_err(|_| "the signal thread stopped".to_string())?
        {
            Signal::SIGHUP => {
                shards::info!("SIGHUP received: re-reading the worker list");
                let _ = command_tx.send(Command::Reload);
            }
            other => break other,
        }
    };
    if let Some(n) = &notifier {
        n.send("STOPPING=1\nSTATUS=draining");
    }
    let grace = Duration::from_secs(cli.shutdown_grace_period_secs);
    shards::info!(
        "{signal:?} received: draining (grace period {}s)",
        grace.as_secs()
    );
    let _ = command_tx.send(Command::Shutdown { grace });
    let clean = loop {
        crossbeam_channel::select! {
            recv(done_rx) -> clean => break clean.unwrap_or(false),
            recv(signals) -> again => if let Ok(again) = again {
                shards::warn!(
                    "{again:?} received again while draining: ignored; in-flight requests \
                     have until the grace period ends ({}s)",
                    grace.as_secs()
                );
            },
        }
    };
    let _ = control.join();
    if clean {
        for t in threads {
            let _ = t.join();
        }
    }
    let dropped = shards::log::dropped();
    if dropped > 0 {
        shards::warn!("{dropped} log line(s) were dropped because the log writer fell behind");
    }
    shards::info!("stopped");
    std::thread::sleep(LOG_FLUSH_PAUSE);
    Ok(())
}

/// The control core's next start-up event; SIGINT or SIGTERM meanwhile stops at once
/// (None). SIGHUP then is noted: the worker list file is read at start anyway.
fn next_start_event(
    started: &crossbeam_channel::Receiver<StartUp>,
    signals: &crossbeam_channel::Receiver<Signal>,
) -> Result<Option<StartUp>, String> {
    loop {
        crossbeam_channel::select! {
            recv(started) -> r => {
                let r = r.map_err(|_| "the control core stopped during start-up".to_string())?;
                return Ok(Some(r));
            }
            recv(signals) -> s => match s {
                Ok(Signal::SIGHUP) => shards::info!("SIGHUP during start-up: nothing to reload yet"),
                Ok(s) => {
                    shards::info!("{s:?} during start-up: stopping");
                    std::thread::sleep(LOG_FLUSH_PAUSE);
                    return Ok(None);
                }
                Err(_) => return Err("the signal thread stopped".to_string()),
            },
        }
    }
}
