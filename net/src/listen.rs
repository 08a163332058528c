//! An IPv4 listener's IPv6 companion, and [`Listeners`]: both accepted from as one.
//!
//! Flags default to IPv4 addresses (`127.0.0.1:P`, `0.0.0.0:P`), which serve nobody in an
//! IPv6-only cluster: kubelet probes the pod's IPv6 address, and sidecars reach the control
//! plane by an IPv6 Service address. So a listener on `0.0.0.0:P` gets an IPv6-only
//! companion on `[::]:P`, and one on `127.0.0.1:P` gets `[::1]:P`. The companion is IPv6
//! only so that it never competes with the IPv4 listener for IPv4 traffic (a dual-stack
//! `[::]` would, and would fail to bind beside it), and it is best effort: a host without
//! IPv6 simply has none.
//!
//! A server accepts from both through one [`Listeners`], so a companion's connections take
//! exactly the primary's path: the same connection limit, TLS, timeouts and write-stall
//! bound.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::task::{Context, Poll};

use tokio::net::{TcpListener, TcpStream};

/// The companion `address` needs: `[::1]:port` beside `127.0.0.1:port`, `[::]:port` beside
/// `0.0.0.0:port`; `None` for other addresses (IPv6 ones, or one IPv4 interface).
pub fn ipv6_companion(address: SocketAddr) -> Option<SocketAddr> {
    let SocketAddr::V4(v4) = address else {
        return None;
    };
    let ip = if v4.ip().is_loopback() {
        Ipv6Addr::LOCALHOST
    } else if v4.ip().is_unspecified() {
        Ipv6Addr::UNSPECIFIED
    } else {
        return None;
    };
    Some(SocketAddr::new(IpAddr::V6(ip), v4.port()))
}

/// Binds an IPv6-only listener (so it never competes with an IPv4 one for IPv4 traffic),
/// non-blocking, with `backlog` pending connections at most.
pub fn bind_v6_only(address: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    socket.set_only_v6(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Binds the companion of a listener bound on `primary`, which must be the primary's
/// *bound* address (`local_addr`), so that a primary on port 0 gets its companion on the
/// port the kernel picked. `Ok(None)`: `primary` needs no companion.
pub fn bind_companion(
    primary: SocketAddr,
    backlog: i32,
) -> Result<Option<std::net::TcpListener>, CompanionError> {
    let Some(address) = ipv6_companion(primary) else {
        return Ok(None);
    };
    bind_v6_only(address, backlog)
        .map(Some)
        .map_err(|source| CompanionError { address, source })
}

/// [`bind_companion`] for a server that runs without its companion when it cannot have one:
/// a debug line when the host has no IPv6, a warning when the companion cannot be bound
/// otherwise (its port is taken: IPv6 clients reach another process). `flag` names the
/// listener in the log.
pub fn companion_or_log(
    primary: SocketAddr,
    backlog: i32,
    flag: &str,
) -> Option<std::net::TcpListener> {
    match bind_companion(primary, backlog) {
        Ok(companion) => companion,
        Err(error) if error.ipv6_unavailable() => {
            tracing::debug!(flag, %error, "no IPv6 companion listener: IPv6 is unavailable");
            None
        }
        Err(error) => {
            tracing::warn!(flag, %error, "no IPv6 companion listener; IPv4 only");
            None
        }
    }
}

/// A companion that could not be bound. The server runs without it: IPv4 is served as
/// before.
#[derive(Debug)]
pub struct CompanionError {
    /// The companion's address.
    pub address: SocketAddr,
    /// Why it could not be bound.
    pub source: io::Error,
}

impl CompanionError {
    /// Whether the host just has no IPv6 (no IPv6 sockets, or no `::1`), which is expected
    /// and worth a debug line; any other failure, such as another process on the IPv6
    /// port, means IPv6 clients reach something else and is worth a warning.
    pub fn ipv6_unavailable(&self) -> bool {
        self.source.kind() != io::ErrorKind::AddrInUse
    }
}

impl std::fmt::Display for CompanionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot listen on {}: {}", self.address, self.source)
    }
}

impl std::error::Error for CompanionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// A server's listener and its IPv6 companion, if it has one, accepted from as one.
#[derive(Debug)]
pub struct Listeners {
    primary: TcpListener,
    companion: Option<TcpListener>,
}

impl Listeners {
    /// `primary` alone, or with `companion`.
    pub fn new(primary: TcpListener, companion: Option<TcpListener>) -> Self {
        Self { primary, companion }
    }

    /// Registers std listeners (non-blocking, as [`bind_companion`] leaves them) with the
    /// current tokio runtime.
    pub fn from_std(
        primary: std::net::TcpListener,
        companion: Option<std::net::TcpListener>,
    ) -> io::Result<Self> {
        Ok(Self {
            primary: TcpListener::from_std(primary)?,
            companion: companion.map(TcpListener::from_std).transpose()?,
        })
    }

    /// The primary listener's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.primary.local_addr()
    }

    /// The companion's address, when there is one.
    pub fn companion_addr(&self) -> Option<SocketAddr> {
        self.companion.as_ref().and_then(|c| c.local_addr().ok())
    }

    /// The next connection on either listener. Cancel safe, as `TcpListener::accept`: a
    /// connection is taken off a queue only when it is returned.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let mut companion_first = false;
        std::future::poll_fn(|cx| {
            // Alternate which one is asked first, so a flood on one cannot starve the other.
            companion_first = !companion_first;
            self.poll_accept(cx, companion_first)
        })
        .await
    }

    fn poll_accept(
        &self,
        cx: &mut Context<'_>,
        companion_first: bool,
    ) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        let Some(companion) = &self.companion else {
            return self.primary.poll_accept(cx);
        };
        let (first, second) = if companion_first {
            (companion, &self.primary)
        } else {
            (&self.primary, companion)
        };
        match first.poll_accept(cx) {
            Poll::Ready(accepted) => Poll::Ready(accepted),
            Poll::Pending => second.poll_accept(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn ipv6_companions() {
        assert_eq!(
            ipv6_companion("127.0.0.1:15001".parse().unwrap()),
            Some("[::1]:15001".parse().unwrap())
        );
        assert_eq!(
            ipv6_companion("0.0.0.0:15006".parse().unwrap()),
            Some("[::]:15006".parse().unwrap())
        );
        assert_eq!(ipv6_companion("10.0.0.1:15006".parse().unwrap()), None);
        assert_eq!(ipv6_companion("[::1]:15001".parse().unwrap()), None);
        assert_eq!(ipv6_companion("[::]:15001".parse().unwrap()), None);
    }

    #[test]
    fn an_address_that_needs_none_gets_none() {
        let bound = bind_companion("[::1]:0".parse().unwrap(), 16);
        assert!(matches!(bound, Ok(None)), "{bound:?}");
    }

    #[test]
    fn only_a_port_taken_by_someone_else_is_more_than_missing_ipv6() {
        let error = |kind: io::ErrorKind| CompanionError {
            address: "[::]:1".parse().unwrap(),
            source: io::Error::from(kind),
        };
        assert!(!error(io::ErrorKind::AddrInUse).ipv6_unavailable());
        assert!(error(io::ErrorKind::AddrNotAvailable).ipv6_unavailable());
        assert!(error(io::ErrorKind::Unsupported).ipv6_unavailable());
    }

    /// Both families reach the one server, on the port picked for the IPv4 listener.
    #[tokio::test]
    async fn both_listeners_are_accepted_from() {
        let primary = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        primary.set_nonblocking(true).unwrap();
        let port = primary.local_addr().unwrap().port();
        let companion = match bind_companion(primary.local_addr().unwrap(), 16) {
            Ok(companion) => companion.expect("127.0.0.1 has a companion"),
            Err(error) => {
                eprintln!("SKIPPED: {error} (no IPv6 loopback here)");
                return;
            }
        };
        let listeners = Listeners::from_std(primary, Some(companion)).unwrap();
        assert_eq!(
            listeners.companion_addr(),
            Some(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
        );
        let server = tokio::spawn(async move {
            let mut peers = Vec::new();
            for _ in 0..4 {
                let (mut stream, peer) = listeners.accept().await.unwrap();
                stream.write_all(b"ok").await.unwrap();
                peers.push(peer.ip());
            }
            peers
        });
        for ip in ["127.0.0.1", "::1", "::1", "127.0.0.1"] {
            let address = SocketAddr::new(ip.parse().unwrap(), port);
            let mut stream = TcpStream::connect(address).await.unwrap();
            let mut answer = [0; 2];
            stream.read_exact(&mut answer).await.unwrap();
            assert_eq!(&answer, b"ok", "{address}");
        }
        let peers = server.await.unwrap();
        assert_eq!(peers.iter().filter(|ip| ip.is_ipv6()).count(), 2);
        assert_eq!(peers.iter().filter(|ip| ip.is_ipv4()).count(), 2);
    }
}
