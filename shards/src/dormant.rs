//! Idle keep-alive client connections that cost their socket and nothing else.
//!
//! A chat client or an agent keeps its connection open between turns, for seconds
//! or minutes, and a router in front of many of them holds tens of thousands such
//! connections. A connection's task (its state, its read of the next head, glommio's
//! poll of its socket) is about 1.5 KiB; nginx keeps about 0.5 KiB. So a connection
//! with no request for [`DORMANT_AFTER`] ends its task and leaves only its socket, in
//! this shard's epoll set (the kernel holds the readiness watch, outside the
//! process's memory). When the client sends again, the socket comes back out and a
//! new task serves it; when it stays silent past the keep-alive timeout, it is
//! closed as a waiting connection would be.
//!
//! One glommio poll on the epoll descriptor wakes the shard for all of them
//! (`server::wake_dormant`). Every call here is a non-blocking syscall
//! (`epoll_ctl`, `epoll_wait` with a zero timeout, `close`).

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Silence after which a connection leaves its task. Requests on a busy keep-alive
/// connection come milliseconds apart and never pay for the trip (an `epoll_ctl`
/// each way and a new task, a few microseconds); a chat turn or an agent's tool call
/// takes seconds, against which that is nothing.
pub const DORMANT_AFTER: Duration = Duration::from_secs(1);

/// Connections gone dormant after which the shard gives freed memory back to the
/// system, once the wave is over. Their tasks' memory is freed, but the allocator
/// keeps freed pages for reuse, so connections going quiet would leave the process
/// as large as at its busiest moment. 1,024 tasks are about 1.5 MiB.
pub const TRIM_AFTER_SLEEPERS: u64 = 1024;

/// A wave is over when fewer than this many connections went dormant since the
/// sweep before (a second). While connections keep coming and going, freed memory is
/// taken again by new ones and trimming would only cost time: `malloc_trim` walks
/// the heap, 0.5-1.5 ms for 10,000 connections' worth (debug log).
pub const WAVE_OVER_BELOW: u64 = 64;

/// Events taken per `epoll_wait`: a burst of returning clients is served in batches
/// of this many, each batch's tasks spawned before the next is read.
const EVENTS_PER_WAIT: usize = 64;

/// A dormant connection: the socket and when it became idle (the keep-alive timeout
/// counts from there, across dormancy).
struct Sleeper {
    socket: OwnedFd,
    idle_since: Instant,
}

/// A connection the client spoke on again (or hung up): serve it from `idle_since`.
pub struct Woken {
    pub socket: OwnedFd,
    pub idle_since: Instant,
}

/// One shard's dormant connections. Single-threaded (`RefCell`), like the shard.
pub struct Dormant {
    epoll: Epoll,
    /// Slot `i` is the connection whose epoll data is `i`.
    slots: RefCell<Vec<Option<Sleeper>>>,
    /// Empty slots, for reuse: every other slot holds a connection.
    free: RefCell<Vec<u32>>,
    /// Connections put to sleep since memory was last given back.
    slept_since_trim: Cell<u64>,
    /// `slept_since_trim` at the sweep before.
    slept_at_last_sweep: Cell<u64>,
}

impl Dormant {
    pub fn new() -> std::io::Result<Self> {
        Ok(Dormant {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            slots: RefCell::default(),
            free: RefCell::default(),
            slept_since_trim: Cell::new(0),
            slept_at_last_sweep: Cell::new(0),
        })
    }

    /// The descriptor that turns readable when a dormant connection wakes.
    pub fn raw_fd(&self) -> RawFd {
        self.epoll.0.as_raw_fd()
    }

    /// Connections dormant now.
    pub fn count(&self) -> usize {
        self.slots.borrow().len() - self.free.borrow().len()
    }

    /// Puts an idle connection to sleep. When the kernel refuses the watch (out of
    /// memory, or over `max_user_watches`), the socket is closed: a server may close
    /// an idle connection at any time (RFC 9112 §9.6), and its client reconnects.
    pub fn keep(&self, socket: OwnedFd, idle_since: Instant) {
        let mut slots = self.slots.borrow_mut();
        let key = match self.free.borrow_mut().pop() {
            Some(k) => k,
            None => {
                slots.push(None);
                (slots.len() - 1) as u32
            }
        };
        // Level-triggered: bytes that came in before the watch still wake it.
        let event = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, u64::from(key));
        if self.epoll.add(socket.as_fd(), event).is_err() {
            self.free.borrow_mut().push(key);
            return; // `socket` closes here
        }
        slots[key as usize] = Some(Sleeper { socket, idle_since });
        self.slept_since_trim.set(self.slept_since_trim.get() + 1);
    }

    /// Takes the connections that turned readable (a request, or a hang-up, which the
    /// new task reads as an end) out of the set, into `out`. Returns false once
    /// nothing more is ready.
    pub fn take_woken(&self, out: &mut Vec<Woken>) -> bool {
        let mut events = [EpollEvent::empty(); EVENTS_PER_WAIT];
        let n = self
            .epoll
            .wait(&mut events, EpollTimeout::ZERO)
            .unwrap_or(0);
        let mut slots = self.slots.borrow_mut();
        for event in &events[..n] {
            let key = event.data() as usize;
            let Some(sleeper) = slots.get_mut(key).and_then(Option::take) else {
                continue;
            };
            let _ = self.epoll.delete(sleeper.socket.as_fd());
            self.free.borrow_mut().push(key as u32);
            out.push(Woken {
                socket: sleeper.socket,
                idle_since: sleeper.idle_since,
            });
        }
        n == EVENTS_PER_WAIT
    }

    /// Once a wave of connections went dormant (at least [`TRIM_AFTER_SLEEPERS`]
    /// since the last time) and is over, gives the memory their tasks freed back to
    /// the system. Called once a second from the shard's sweeper; returns how long
    /// the trim took, when it ran.
    pub fn trim_after_wave(&self) -> Option<Duration> {
        let slept = self.slept_since_trim.get();
        let lately = slept - self.slept_at_last_sweep.replace(slept);
        if slept < TRIM_AFTER_SLEEPERS || lately >= WAVE_OVER_BELOW {
            return None;
        }
        self.slept_since_trim.set(0);
        self.slept_at_last_sweep.set(0);
        let started = Instant::now();
        // SAFETY: malloc_trim only releases free pages; it may be called at any time.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        unsafe {
            nix::libc::malloc_trim(0);
        }
        Some(started.elapsed())
    }

    /// Closes the connections idle since before `cutoff` (past the keep-alive
    /// timeout). Closing a socket also takes it out of the epoll set. Returns how
    /// many were closed.
    pub fn close_idle_since(&self, cutoff: Instant) -> usize {
        self.close_where(|s| s.idle_since < cutoff)
    }

    /// Closes every dormant connection (the shard is draining: idle connections
    /// close, as the ones waiting in a task do).
    pub fn close_all(&self) -> usize {
        self.close_where(|_| true)
    }

    fn close_where(&self, due: impl Fn(&Sleeper) -> bool) -> usize {
        let mut closed = 0;
        let mut free = self.free.borrow_mut();
        for (key, slot) in self.slots.borrow_mut().iter_mut().enumerate() {
            if slot.as_ref().is_some_and(&due) {
                *slot = None; // closes the socket
                free.push(key as u32);
                closed += 1;
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn pair(listener: &TcpListener) -> (TcpStream, OwnedFd) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, OwnedFd::from(server))
    }

    /// Waits (bounded) until the epoll set reports something, as the shard's poll
    /// would.
    fn take_within(d: &Dormant, out: &mut Vec<Woken>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while out.is_empty() && Instant::now() < deadline {
            d.take_woken(out);
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_sleeping_socket_wakes_with_its_bytes_and_its_idle_clock() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let d = Dormant::new().unwrap();
        let (quiet, quiet_fd) = pair(&listener);
        let (mut talker, talker_fd) = pair(&listener);
        let since = Instant::now() - Duration::from_secs(3);
        d.keep(quiet_fd, Instant::now());
        d.keep(talker_fd, since);
        assert_eq!(d.count(), 2);
        let mut out = Vec::new();
        assert!(!d.take_woken(&mut out));
        assert!(out.is_empty(), "nothing was sent yet");

        talker.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        take_within(&d, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].idle_since, since);
        assert_eq!(d.count(), 1);
        // The bytes are still in the socket for the task that serves it.
        let mut server = TcpStream::from(out.pop().unwrap().socket);
        let mut head = [0u8; 18];
        server.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"GET / HTTP/1.1\r\n\r\n");
        // Out of the set: more bytes do not wake it again.
        talker.write_all(b"x").unwrap();
        d.take_woken(&mut out);
        assert!(out.is_empty());

        // A hang-up wakes a sleeper too (its task reads the end and closes).
        quiet.shutdown(std::net::Shutdown::Write).unwrap();
        take_within(&d, &mut out);
        assert_eq!((out.len(), d.count()), (1, 0));
        let mut rest = Vec::new();
        let mut server = TcpStream::from(out.pop().unwrap().socket);
        assert_eq!(server.read_to_end(&mut rest).unwrap(), 0);
    }

    #[test]
    fn sleepers_past_the_keepalive_timeout_are_closed_and_slots_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let d = Dormant::new().unwrap();
        let now = Instant::now();
        let (mut old, old_fd) = pair(&listener);
        let (_young, young_fd) = pair(&listener);
        d.keep(old_fd, now - Duration::from_secs(100));
        d.keep(young_fd, now);
        assert_eq!(d.close_idle_since(now - Duration::from_secs(75)), 1);
        assert_eq!(d.count(), 1);
        // The client of the closed one sees the end of the stream.
        let mut rest = Vec::new();
        assert_eq!(old.read_to_end(&mut rest).unwrap(), 0);
        // Its slot is taken by the next sleeper; nothing grows.
        let (_next, next_fd) = pair(&listener);
        d.keep(next_fd, now);
        assert_eq!(d.slots.borrow().len(), 2);
        assert_eq!(d.close_all(), 2);
        assert_eq!(d.count(), 0);
    }

    #[test]
    fn memory_is_given_back_once_a_wave_of_sleepers_is_over() {
        let d = Dormant::new().unwrap();
        let add = |n: u64| d.slept_since_trim.set(d.slept_since_trim.get() + n);
        add(TRIM_AFTER_SLEEPERS - 1);
        assert!(d.trim_after_wave().is_none(), "too few");
        add(1);
        assert!(d.trim_after_wave().is_some(), "enough, and a calm second");
        assert!(d.trim_after_wave().is_none(), "nothing since");
        add(TRIM_AFTER_SLEEPERS);
        assert!(d.trim_after_wave().is_none(), "the wave goes on");
        add(WAVE_OVER_BELOW - 1);
        assert!(d.trim_after_wave().is_some(), "a calm second after it");
        assert!(d.trim_after_wave().is_none(), "once per wave");
    }
}
