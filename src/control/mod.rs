//! The control core: one thread outside the shards that owns every slow or shared
//! concern. It talks to the shards only through `shards::link` (deltas out) and a
//! report channel (reports in).

pub mod registry;

use crossbeam_channel::{select, Receiver};
use shards::link::ControlEnd;
use shards::messages::{Delta, Report};
use std::time::{Duration, Instant};

/// Asked of the control core by the main thread.
pub enum Command {
    /// Drain every shard, waiting up to `grace` for in-flight requests.
    Shutdown { grace: Duration },
}

pub struct ControlCore {
    pub links: Vec<ControlEnd>,
    pub reports: Receiver<Report>,
    pub commands: Receiver<Command>,
}

impl ControlCore {
    /// Runs until shutdown completes. Returns true if every shard drained in time.
    pub fn run(self) -> bool {
        loop {
            select! {
                recv(self.reports) -> r => match r {
                    Ok(report) => self.on_report(report),
                    Err(_) => return true,
                },
                recv(self.commands) -> c => {
                    let grace = match c {
                        Ok(Command::Shutdown { grace }) => grace,
                        Err(_) => Duration::ZERO, // main thread gone
                    };
                    return self.drain(grace);
                },
            }
        }
    }

    fn on_report(&self, report: Report) {
        match report {
            Report::WorkerUnreachable { shard, id } => {
                shards::debug!("shard {shard} could not reach worker {id}");
            }
            Report::Drained { shard } => shards::debug!("shard {shard} drained"),
        }
    }

    fn drain(&self, grace: Duration) -> bool {
        for link in &self.links {
            link.send(Delta::Drain);
        }
        let deadline = Instant::now() + grace;
        let mut left = self.links.len();
        while left > 0 {
            let now = Instant::now();
            if now >= deadline {
                shards::warn!("{left} shard(s) still busy after the grace period; exiting");
                return false;
            }
            match self.reports.recv_timeout(deadline - now) {
                Ok(Report::Drained { .. }) => left -= 1,
                Ok(other) => self.on_report(other),
                Err(_) => {}
            }
        }
        true
    }
}
