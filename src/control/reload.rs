//! `--worker-urls-file`: a worker list re-read on SIGHUP (`systemctl reload`).
//!
//! The file holds one worker URL per line; blank lines and `#` comments are ignored.
//! Workers it adds are probed and get traffic once healthy; workers that disappear
//! from it are removed (their in-flight requests finish). The file owns what it lists;
//! workers only on the command line or added through the admin API are left alone.
//! No client connection is touched.

use super::{ControlConfig, ControlState};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;
use std::rc::Rc;

/// Reads and checks the file: every URL valid, or an error naming the bad line (a
/// half-read list must not remove half the fleet).
pub fn read_worker_file(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --worker-urls-file {}: {e}", path.display()))?;
    let mut urls = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        super::registry::parse_worker_url(line)
            .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        let url = line.trim_end_matches('/').to_string();
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    Ok(urls)
}

/// SIGHUP: re-read the worker list file, telling systemd while it happens.
pub async fn on_sighup(state: &Rc<RefCell<ControlState>>, config: &ControlConfig) {
    let Some(path) = &config.worker_urls_file else {
        shards::warn!("SIGHUP ignored: there is no --worker-urls-file to re-read");
        return;
    };
    if let Some(n) = &config.notifier {
        n.send("RELOADING=1");
    }
    match apply(state, path).await {
        Ok((added, removed)) => {
            state.borrow_mut().reloads[0] += 1;
            shards::info!(
                "reloaded {}: {added} worker(s) added, {removed} removed",
                path.display()
            )
        }
        Err(e) => {
            state.borrow_mut().reloads[1] += 1;
            shards::error!("reload failed, workers unchanged: {e}")
        }
    }
    if let Some(n) = &config.notifier {
        n.send(&format!(
            "READY=1\nSTATUS={}",
            super::status::status_line(&state.borrow())
        ));
    }
}

/// Applies the file's current list; returns (added, removed).
pub async fn apply(
    state: &Rc<RefCell<ControlState>>,
    path: &Path,
) -> Result<(usize, usize), String> {
    let wanted: BTreeSet<String> = read_worker_file(path)?.into_iter().collect();
    let (to_add, to_remove) = {
        let s = state.borrow();
        let registered: BTreeSet<String> = s.registry.bases().into_iter().map(|b| b.0).collect();
        let to_add: Vec<String> = wanted.difference(&registered).cloned().collect();
        let to_remove: Vec<String> = s.file_workers.difference(&wanted).cloned().collect();
        (to_add, to_remove)
    };
    // Add before removing, so a swap never leaves a moment with no worker.
    let mut added = 0;
    for url in &to_add {
        match super::admin::add_worker(state, url, false).await {
            Ok(healthy) => {
                added += 1;
                state.borrow_mut().file_workers.insert(url.clone());
                if healthy {
                    shards::info!("worker {url} added from the worker list file");
                } else {
                    shards::warn!("worker {url} added from the worker list file; not healthy yet");
                }
            }
            Err(e) => shards::warn!("worker {url} from the worker list file: {e}"),
        }
    }
    for url in &to_remove {
        let mut s = state.borrow_mut();
        s.remove_worker(url);
        s.file_workers.remove(url);
        shards::info!("worker {url} removed: no longer in the worker list file");
    }
    // Entries already registered (from the command line, say) are the file's too now:
    // a later edit may remove them.
    state.borrow_mut().file_workers.extend(wanted);
    Ok((added, to_remove.len()))
}
