//! The lock-free link between the control core and one shard.
//!
//! Deltas travel on a crossbeam channel; a one-byte "doorbell" on a socketpair wakes
//! the shard's executor, which then drains the channel. The shard never polls on a
//! timer and never blocks: the doorbell read is an ordinary io_uring read.

use crate::messages::Delta;
use crossbeam_channel::{unbounded, Receiver, Sender};
use std::io::{self, Write};
use std::os::unix::net::UnixStream;

/// The control core's end: send a delta, ring the bell.
pub struct ControlEnd {
    tx: Sender<Delta>,
    bell: UnixStream,
}

/// The shard's end, handed to its executor thread.
pub struct ShardEnd {
    pub rx: Receiver<Delta>,
    pub bell: UnixStream,
}

pub fn link() -> io::Result<(ControlEnd, ShardEnd)> {
    let (tx, rx) = unbounded();
    let (a, b) = UnixStream::pair()?;
    a.set_nonblocking(true)?;
    Ok((ControlEnd { tx, bell: a }, ShardEnd { rx, bell: b }))
}

impl ControlEnd {
    /// Queues a delta and wakes the shard. A full doorbell socket means a wake-up is
    /// already pending, so `WouldBlock` is fine.
    pub fn send(&self, delta: Delta) -> bool {
        if self.tx.send(delta).is_err() {
            return false;
        }
        match (&self.bell).write(&[1]) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(_) => false,
        }
    }
}
