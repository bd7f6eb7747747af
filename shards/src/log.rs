//! Logging without blocking a shard: lines go over a channel to a writer thread.
//!
//! Shards must never do file I/O, and a write to stderr can block when the reader is
//! slow; so a log line is formatted, handed to a bounded channel with `try_send`, and
//! dropped (and counted) if the writer falls behind.

use crossbeam_channel::{bounded, Sender, TrySendError};
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" | "trace" => Some(Level::Debug),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

/// Lines buffered between the process and the writer thread.
const LOG_QUEUE_LINES: usize = 4096;

struct Logger {
    level: Level,
    tx: Sender<String>,
    dropped: AtomicU64,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Starts the writer thread: to `dir/vllm-router.log` when a directory is given,
/// else to stderr. Before `init` (and in tests) lines go straight to stderr.
pub fn init(level: Level, dir: Option<&Path>) -> std::io::Result<()> {
    let mut sink: Box<dyn Write + Send> = match dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(d.join("vllm-router.log"))?;
            Box::new(std::io::LineWriter::new(file))
        }
        None => Box::new(std::io::stderr()),
    };
    let (tx, rx) = bounded::<String>(LOG_QUEUE_LINES);
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            for line in rx {
                let _ = sink.write_all(line.as_bytes());
                let _ = sink.flush();
            }
        })?;
    let _ = LOGGER.set(Logger {
        level,
        tx,
        dropped: AtomicU64::new(0),
    });
    Ok(())
}

pub fn enabled(level: Level) -> bool {
    match LOGGER.get() {
        Some(l) => level <= l.level,
        None => level <= Level::Info,
    }
}

/// Lines lost because the writer fell behind.
pub fn dropped() -> u64 {
    LOGGER
        .get()
        .map_or(0, |l| l.dropped.load(Ordering::Relaxed))
}

pub fn emit(level: Level, target: &str, args: fmt::Arguments<'_>) {
    let line = format!("{} {:5} {}: {}\n", timestamp(), level.label(), target, args);
    match LOGGER.get() {
        Some(l) => {
            if let Err(TrySendError::Full(_)) = l.tx.try_send(line) {
                l.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        None => eprint!("{line}"),
    }
}

/// RFC 3339 UTC time with milliseconds, computed without a date crate.
fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        now.subsec_millis()
    )
}

#[macro_export]
macro_rules! log_at {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            $crate::log::emit($level, module_path!(), format_args!($($arg)*));
        }
    };
}
#[macro_export]
macro_rules! error { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Error, $($arg)*) }; }
#[macro_export]
macro_rules! warn { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Warn, $($arg)*) }; }
#[macro_export]
macro_rules! info { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Info, $($arg)*) }; }
#[macro_export]
macro_rules! debug { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Debug, $($arg)*) }; }
