//! Entry points for the fuzz targets (`fuzz/`, outside the workspace) and for the seed corpus
//! that `cargo test` replays (`fuzz/corpus/<target>/`). Each takes arbitrary bytes and must
//! never panic: a panic is a bug (RELIABILITY promise 1).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::snapshot::ServerSettings;
use crate::telemetry::trace::propagation;

/// Trace context from one header value, in every format the sidecar reads.
pub fn traceparent(data: &[u8]) {
    let _ = propagation::parse_traceparent(data);
    let _ = propagation::parse_b3_single(data);
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        for name in [
            "traceparent",
            "tracestate",
            "b3",
            "x-b3-traceid",
            "x-b3-spanid",
        ] {
            headers.insert(name, value.clone());
        }
        let _ = propagation::extract(&headers);
    }
}

/// `data` as the bytes a client sends on an HTTP/1.1 connection to the sidecar's server, with
/// its default limits and its request checks.
pub fn http1(data: &[u8]) {
    let _ = serve(data, false);
}

/// `data` as the frames after the preface on an HTTP/2 connection to the sidecar's server.
pub fn http2(data: &[u8]) {
    let _ = serve(data, true);
}

/// `data` as a request path, through the checks every request meets before it is routed
/// (RELIABILITY HTTP1-6). Besides never panicking: the one-pass check agrees with the full
/// one, and a path the sidecar forwards reads the same to an app that percent-decodes it as
/// it reads to routing and authorization ([`read_differently`]). A panic here is a finding.
pub fn path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if !text.starts_with('/') {
        return;
    }
    let Ok(mut request) = Request::builder().uri(text).header("host", "svc").body(()) else {
        return;
    };
    let path = request.uri().path().to_owned();
    if crate::proxy::guard::plainly_normal(&path) {
        let full = crate::proxy::guard::check_path_fully(&path);
        assert!(
            full.is_ok(),
            "{path:?} passes the one-pass check only: {full:?}"
        );
    }
    if crate::proxy::guard::check(&mut request, 100).is_err() {
        return;
    }
    let forwarded = request.uri().path();
    if let Some(problem) = read_differently(forwarded) {
        panic!("{text:?} is forwarded as {forwarded:?}, which an app reads with {problem}");
    }
}

/// What an app that percent-decodes `path` once (and drops each segment's `;` parameters, as
/// Tomcat does) reads differently from routing, which matches `path` as it is.
fn read_differently(path: &str) -> Option<&'static str> {
    if ficus_config::path::decode_unreserved(path).is_some() {
        return Some(
            "a letter, digit or `-._~` that routing saw encoded (or an escape in lower case)",
        );
    }
    let decoded = percent_decode(path.as_bytes());
    let slashes = |bytes: &[u8]| bytes.iter().filter(|&&b| b == b'/').count();
    if slashes(&decoded) != slashes(path.as_bytes()) {
        return Some("a `/` that routing saw encoded");
    }
    if decoded.contains(&b'\\') || decoded.contains(&0) {
        return Some("a backslash or NUL");
    }
    let mut segments = decoded.split(|&b| b == b'/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let bare = segment.split(|&b| b == b';').next().unwrap_or_default();
        if bare == b"." || bare == b".." {
            return Some("a dot segment");
        }
        if bare.is_empty() && segments.peek().is_some() {
            return Some("an empty segment");
        }
    }
    None
}

/// `bytes` with every `%XX` escape decoded, once.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let (b'%', Some(Some(high)), Some(Some(low))) = (
            bytes[i],
            bytes.get(i + 1).map(|&b| hex(b)),
            bytes.get(i + 2).map(|&b| hex(b)),
        ) {
            out.extend(u8::try_from(high << 4 | low));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// How long one input may take; the connection is dropped after it (a stall is not a crash).
const PER_INPUT: Duration = Duration::from_secs(2);
/// How long an HTTP/2 connection may go on after the input before its client ends its side.
const H2_END_WAIT: Duration = Duration::from_millis(100);
/// How long a request's body is read before it is answered anyway.
const BODY_WAIT: Duration = Duration::from_millis(50);

/// Serves `data` on one connection; what the server answered.
fn serve(data: &[u8], http2: bool) -> Vec<u8> {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    let mut input = Vec::with_capacity(data.len() + 24);
    if http2 {
        input.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    }
    input.extend_from_slice(data);
    if http2 {
        // A GOAWAY of the client's last: the server ends the connection once its streams are
        // done, as an HTTP/1.1 server does at the end of a half-closed input.
        input.extend_from_slice(&[
            0, 0, 8, 7, 0, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0,
        ]);
    }
    runtime.block_on(async move {
        let limits = ficus_config::ProxyLimits::default();
        let settings = ServerSettings::new(&limits);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let service = service_fn(move |mut request: Request<Incoming>| async move {
            let checked = crate::proxy::guard::check(&mut request, limits.max_headers);
            // A body that never ends (no END_STREAM) is not waited for past a moment.
            let body = Limited::new(request.into_body(), 1 << 20);
            let _ = tokio::time::timeout(BODY_WAIT, body.collect()).await;
            let status = if checked.is_ok() { 200 } else { 400 };
            let mut response = Response::new(Empty::<Bytes>::new());
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
            Ok::<_, Infallible>(response)
        });
        let connection = async {
            if http2 {
                let _ = settings
                    .http2
                    .serve_connection(TokioIo::new(server), service)
                    .await;
            } else {
                // The whole input, then EOF: answered before the connection ends.
                let _ = settings
                    .http1
                    .clone()
                    .half_close(true)
                    .serve_connection(TokioIo::new(server), service)
                    .with_upgrades()
                    .await;
            }
        };
        let mut answer = Vec::new();
        let peer = async {
            let _ = client.write_all(&input).await;
            if !http2 {
                let _ = client.shutdown().await;
                let _ = client.read_to_end(&mut answer).await;
                return;
            }
            // An HTTP/2 input that ends inside a frame leaves h2 waiting for the rest (the
            // GOAWAY above is read as part of it): the input ends once the server has not
            // finished for a moment.
            let ended = tokio::time::timeout(H2_END_WAIT, client.read_to_end(&mut answer)).await;
            if ended.is_err() {
                let _ = client.shutdown().await;
                let _ = client.read_to_end(&mut answer).await;
            }
        };
        let _ = tokio::time::timeout(PER_INPUT, async { tokio::join!(connection, peer) }).await;
        answer
    })
}

/// Every file of `fuzz/corpus/<target>/` (the seeds and the crashers found so far).
#[cfg(test)]
pub(crate) fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .filter_map(|entry| Some(entry.ok()?.path()))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    files
        .iter()
        .map(|file| std::fs::read(file).expect("a corpus file"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness reaches the server: a plain request is answered, a bad one refused.
    #[test]
    fn requests_are_served() {
        let answer = serve(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n", false);
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
        let answer = serve(b"GET / HTTP/1.1\r\n\r\n", false);
        assert!(answer.starts_with(b"HTTP/1.1 400"), "no Host: {answer:?}");
        // SETTINGS, then a GET: among the server's frames, HEADERS (END_STREAM | END_HEADERS)
        // on stream 1 starting with `:status: 200` (static index 8).
        let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/http2/get");
        let get = std::fs::read(seed).expect("the http2 GET seed");
        let answer = serve(&get, true);
        let headers = [0x01, 0x05, 0, 0, 0, 1, 0x88];
        assert!(
            answer.windows(7).any(|w| w == headers),
            "HEADERS: {answer:?}"
        );
    }

    #[test]
    fn the_corpus_never_panics() {
        for seed in corpus("traceparent") {
            traceparent(&seed);
        }
        for seed in corpus("http1") {
            http1(&seed);
        }
        for seed in corpus("http2") {
            http2(&seed);
        }
        for seed in corpus("path") {
            path(&seed);
        }
    }

    /// The oracle of [`path`] finds what it is there to find.
    #[test]
    fn read_differently_finds_a_second_reading() {
        for (forwarded, problem) in [
            ("/%61dmin", "encoded"),
            ("/a%2Fb", "`/`"),
            ("/a%5Cb", "backslash"),
            ("/caf%c3%a9", "lower case"),
            ("/public/..%3B/admin", "dot segment"),
            ("/public/%2e/admin", "encoded"),
            ("/;/admin", "empty segment"),
        ] {
            let found = read_differently(forwarded);
            assert!(
                found.is_some_and(|found| found.contains(problem)),
                "{forwarded}: {found:?}"
            );
        }
        for same in ["/", "/admin", "/a/", "/a%20b", "/%2561", "/a;x/b", "/a/;x"] {
            assert_eq!(read_differently(same), None, "{same}");
        }
    }

    /// Paths that were read one way by routing and another by the app (found by the `path`
    /// target): each is refused now.
    #[test]
    fn paths_an_app_reads_differently_are_refused() {
        for found in [
            "/%%36%31dmin",
            "/public/..%3b/admin",
            "/;/admin",
            "/a/.%3Bx/b",
        ] {
            let mut request = Request::builder()
                .uri(found)
                .header("host", "svc")
                .body(())
                .expect("a request");
            assert!(
                crate::proxy::guard::check(&mut request, 100).is_err(),
                "{found} is forwarded as {}",
                request.uri().path()
            );
        }
    }
}
