//! Port 0 for SO_REUSEPORT listeners. Every shard binds its own listener, so `--port 0`
//! cannot be left to each bind (each would get another port): the port is chosen once
//! by a socket bound here, which never listens and is dropped once the listeners are
//! bound. Users with many routers on one host, the tests, and the mock worker use it.

use nix::sys::socket::{
    bind, getsockname, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType,
    SockaddrStorage,
};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

/// A port held for the shards.
pub struct Reserved {
    pub addr: SocketAddr,
    _socket: Option<OwnedFd>,
}

/// For port 0, binds a non-listening SO_REUSEPORT socket to a port the kernel picks;
/// any other address is returned as it is.
pub fn reserve_port(addr: SocketAddr) -> Result<Reserved, String> {
    if addr.port() != 0 {
        return Ok(Reserved {
            addr,
            _socket: None,
        });
    }
    let why = |e: nix::Error| format!("cannot choose a port on {}: {e}", addr.ip());
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(why)?;
    setsockopt(&fd, sockopt::ReusePort, &true).map_err(why)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(why)?;
    use std::os::fd::AsRawFd;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(why)?;
    let bound: SockaddrStorage = getsockname(fd.as_raw_fd()).map_err(why)?;
    let port = bound
        .as_sockaddr_in()
        .map(|a| a.port())
        .or_else(|| bound.as_sockaddr_in6().map(|a| a.port()))
        .ok_or_else(|| format!("cannot choose a port on {}", addr.ip()))?;
    Ok(Reserved {
        addr: SocketAddr::new(addr.ip(), port),
        _socket: Some(fd),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_gets_a_real_port_that_others_can_share() {
        let r = reserve_port("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(r.addr.port(), 0);
        // What a shard does: its own SO_REUSEPORT socket on the same port.
        let again = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        setsockopt(&again, sockopt::ReusePort, &true).unwrap();
        use std::os::fd::AsRawFd;
        bind(again.as_raw_fd(), &SockaddrStorage::from(r.addr)).unwrap();
        let fixed = reserve_port("127.0.0.1:1234".parse().unwrap()).unwrap();
        assert_eq!(fixed.addr.port(), 1234);
    }
}
