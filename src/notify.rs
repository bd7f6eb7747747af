//! systemd's notify protocol (sd_notify(3)), spoken directly: one datagram per message
//! to the `AF_UNIX` socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the
//! abstract namespace). No libsystemd. Without `$NOTIFY_SOCKET` every call is a no-op,
//! so the router behaves the same outside systemd.

use nix::sys::socket::{sendto, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// A connectionless socket and the address of systemd's notify socket.
#[derive(Debug)]
pub struct Notifier {
    fd: OwnedFd,
    addr: UnixAddr,
}

impl Notifier {
    /// From the environment; None when not started by systemd with `Type=notify`.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let path = path.to_string_lossy().into_owned();
        let addr = match path.strip_prefix('@') {
            Some(name) => UnixAddr::new_abstract(name.as_bytes()).ok()?,
            None => UnixAddr::new(path.as_str()).ok()?,
        };
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .ok()?;
        Some(Notifier { fd, addr })
    }

    /// Sends newline-separated `KEY=VALUE` assignments. Failures are ignored: the
    /// service manager going away must not affect serving.
    pub fn send(&self, state: &str) {
        let _ = sendto(
            self.fd.as_raw_fd(),
            state.as_bytes(),
            &self.addr,
            MsgFlags::MSG_NOSIGNAL,
        );
    }
}

/// The watchdog interval systemd asked for (`$WATCHDOG_USEC`, for this process when
/// `$WATCHDOG_PID` is set). Pings go at half of it, as sd_watchdog_enabled(3) advises.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn sends_datagrams_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("vr-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            fd: socket(
                AddressFamily::Unix,
                SockType::Datagram,
                SockFlag::empty(),
                None,
            )
            .unwrap(),
            addr: UnixAddr::new(&path).unwrap(),
        };
        n.send("READY=1\nSTATUS=ok");
        let mut buf = [0u8; 64];
        let got = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..got], b"READY=1\nSTATUS=ok");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
