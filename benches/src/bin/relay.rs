//! `relay`: the least a proxy can do, as a floor for the "added latency" rows of `benches/run`.
//!
//! Accepts TCP connections, opens one upstream connection for each, and copies bytes both ways
//! from one thread over epoll (mio): a readable socket is read, and the bytes go out to its
//! peer with one `write`. No HTTP parsing, no timers or tasks on the path, no allocation per
//! message: nginx's architecture with everything but the event loop taken out. The latency it
//! adds over a direct connection is the cost of the extra hop itself on this machine (two more
//! loopback sends and the wakeups of the core it is pinned to).
//!
//! Bounded: at most `--max-connections` relayed at once (more are closed when accepted), an
//! upstream connect times out after 1 s, a connection with no bytes either way for `--idle`
//! seconds is closed, and at most one read (64 KiB) waits for a slow peer: a side is not read
//! while its bytes wait. An EOF is passed on as a half close once what waits is written; the
//! connection ends when both sides have sent theirs (or on any error).
#![forbid(unsafe_code)]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// Minimal single-threaded TCP relay over epoll.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (`:0` picks a port, printed on stderr).
    #[arg(long)]
    listen: SocketAddr,
    /// Where every accepted connection is relayed to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Connections relayed at once; further ones are closed when accepted.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// A connection with no bytes either way for this long is closed, in seconds.
    #[arg(long, default_value_t = 60)]
    idle: u64,
}

const LISTENER: Token = Token(usize::MAX);

/// One relayed connection: `sides[0]` the client, `sides[1]` the upstream; `pending[i]` the
/// bytes still to be written to `sides[i]`; `eof[i]`: `sides[i]` has sent its EOF.
struct Conn {
    /// Index in the connection table: its sides' tokens are `2 * slot` and `2 * slot + 1`.
    slot: usize,
    sides: [TcpStream; 2],
    pending: [Vec<u8>; 2],
    eof: [bool; 2],
    active: Instant,
}

/// What an event left of a connection.
enum State {
    Open,
    Done,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut listener = TcpListener::bind(args.listen)
        .with_context(|| format!("failed to bind to address {}", args.listen))?;
    eprintln!("relay listening on {}", listener.local_addr()?);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(256);
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let idle = Duration::from_secs(args.idle.max(1));
    let mut swept = Instant::now();
    loop {
        if let Err(error) = poll.poll(&mut events, Some(Duration::from_secs(1))) {
            if error.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(error.into());
        }
        for event in &events {
            if event.token() == LISTENER {
                accept(&args, &listener, &poll, &mut conns);
                continue;
            }
            let (slot, side) = (event.token().0 / 2, event.token().0 % 2);
            let Some(conn) = conns.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let mut state = Ok(State::Open);
            if event.is_writable() {
                state = conn.flush(side, &poll, &mut buf);
            }
            if event.is_readable() && matches!(state, Ok(State::Open)) {
                state = conn.forward(side, &poll, &mut buf);
            }
            if !matches!(state, Ok(State::Open)) {
                close(&poll, &mut conns[slot]);
            }
        }
        if swept.elapsed() >= Duration::from_secs(1) {
            swept = Instant::now();
            for entry in &mut conns {
                if entry.as_ref().is_some_and(|c| c.active.elapsed() > idle) {
                    close(&poll, entry);
                }
            }
        }
    }
}

/// Accepts every waiting connection and connects each to the upstream.
fn accept(args: &Args, listener: &TcpListener, poll: &Poll, conns: &mut Vec<Option<Conn>>) {
    loop {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return,
            Err(error) => {
                // Typically EMFILE: leave the rest queued until the next readiness.
                eprintln!("accept failed: {error}");
                return;
            }
        };
        let open = conns.iter().filter(|c| c.is_some()).count();
        if open >= args.max_connections {
            continue; // dropped: closed
        }
        match connect(args.upstream, client) {
            Ok(mut conn) => {
                let slot = conns.iter().position(Option::is_none).unwrap_or_else(|| {
                    conns.push(None);
                    conns.len() - 1
                });
                conn.slot = slot;
                let registered = (0..2).try_for_each(|side| {
                    let token = conn.token(side);
                    poll.registry()
                        .register(&mut conn.sides[side], token, Interest::READABLE)
                });
                match registered {
                    Ok(()) => conns[slot] = Some(conn),
                    Err(error) => eprintln!("register failed: {error}"),
                }
            }
            Err(error) => eprintln!("connect to {} failed: {error}", args.upstream),
        }
    }
}

fn connect(upstream: SocketAddr, client: TcpStream) -> io::Result<Conn> {
    let upstream = std::net::TcpStream::connect_timeout(&upstream, Duration::from_secs(1))?;
    upstream.set_nonblocking(true)?;
    let sides = [client, TcpStream::from_std(upstream)];
    for side in &sides {
        side.set_nodelay(true)?;
    }
    Ok(Conn {
        slot: 0,
        sides,
        pending: [Vec::new(), Vec::new()],
        eof: [false; 2],
        active: Instant::now(),
    })
}

impl Conn {
    fn token(&self, side: usize) -> Token {
        Token(self.slot * 2 + side)
    }

    fn interest(&mut self, poll: &Poll, side: usize, interest: Interest) -> io::Result<()> {
        let token = self.token(side);
        poll.registry()
            .reregister(&mut self.sides[side], token, interest)
    }

    /// Reads `side` until it would block, writing what arrives to the other side; stops early
    /// while bytes wait for the other side (`flush` resumes it).
    fn forward(&mut self, side: usize, poll: &Poll, buf: &mut [u8]) -> io::Result<State> {
        let to = 1 - side;
        while self.pending[to].is_empty() && !self.eof[side] {
            let n = match self.sides[side].read(buf) {
                Ok(0) => {
                    self.eof[side] = true;
                    self.sides[to].shutdown(Shutdown::Write)?;
                    break;
                }
                Ok(n) => n,
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            self.active = Instant::now();
            let written = match self.sides[to].write(&buf[..n]) {
                Ok(written) => written,
                Err(error) if error.kind() == ErrorKind::WouldBlock => 0,
                Err(error) => return Err(error),
            };
            if written < n {
                self.pending[to].extend_from_slice(&buf[written..n]);
                self.interest(poll, to, Interest::READABLE | Interest::WRITABLE)?;
            }
        }
        let done = self.eof == [true; 2] && self.pending.iter().all(Vec::is_empty);
        Ok(if done { State::Done } else { State::Open })
    }

    /// Writes what waits for `side`; once all of it is out, stops asking for writability and
    /// resumes reading the other side.
    fn flush(&mut self, side: usize, poll: &Poll, buf: &mut [u8]) -> io::Result<State> {
        if self.pending[side].is_empty() {
            return Ok(State::Open);
        }
        while !self.pending[side].is_empty() {
            match self.sides[side].write(&self.pending[side]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => drop(self.pending[side].drain(..n)),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(State::Open),
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        self.interest(poll, side, Interest::READABLE)?;
        // (An EOF from the other side is only read once nothing waits for this one, so its
        // half close has already been passed on.)
        self.forward(1 - side, poll, buf)
    }
}

fn close(poll: &Poll, entry: &mut Option<Conn>) {
    if let Some(mut conn) = entry.take() {
        for side in &mut conn.sides {
            let _ = poll.registry().deregister(side);
        }
    }
}
