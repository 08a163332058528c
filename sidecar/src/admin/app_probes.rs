//! `/app-health/...` on the admin port: the app's own kubelet probes, relayed by the sidecar.
//!
//! Injection points the app containers' `httpGet` and `tcpSocket` probes at the admin port
//! (so the probed port can stay redirected to the sidecar, inside the mesh) and hands the
//! originals to the sidecar in `--app-probes` (`FICUS_APP_PROBES`), as Istio's
//! `ISTIO_KUBE_APP_PROBERS` does:
//!
//! ```json
//! {"/app-health/web/readyz": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP",
//!   "httpHeaders": [{"name": "x-probe", "value": "1"}]}, "timeoutSeconds": 1},
//!  "/app-health/web/livez": {"tcpSocket": {"port": 8080}}}
//! ```
//!
//! Only those paths are answered, and only by a GET to (or a TCP connect to) the fixed
//! target `127.0.0.1:<port>`: nothing in a request chooses where the sidecar connects, so the
//! admin port (readable from the pod network, for kubelet) cannot be used to make the sidecar
//! fetch other URLs. Loopback is never redirected, so the probe reaches the app itself. Plain
//! HTTP only: `HTTPS` probes are refused here (injection leaves them to kubelet and excludes
//! their port, which serves the app's own TLS and must bypass the sidecar anyway).
//!
//! Answers: the app's status when it is 200–399 (success for kubelet) or 400 and above (a
//! failure, with the app's code); 503 when the app cannot be reached or does not answer within
//! the probe's `timeoutSeconds` (default 1, kubelet's; at most [`MAX_TIMEOUT`]). A TCP probe is
//! 200 when the connection opens in time, else 503.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST, USER_AGENT};
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::body::{self, Body};

/// The longest a relayed probe waits, whatever its `timeoutSeconds` says.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// kubelet's default `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Every relayed probe path starts with this.
pub const PATH_PREFIX: &str = "/app-health/";

/// The app probes this sidecar answers, by admin path.
#[derive(Debug, Clone, Default)]
pub struct AppProbes {
    probes: HashMap<String, AppProbe>,
}

/// One relayed probe: where it goes and how long it may take.
#[derive(Debug, Clone)]
pub struct AppProbe {
    target: Target,
    timeout: Duration,
}

#[derive(Debug, Clone)]
enum Target {
    /// `GET path` to `127.0.0.1:port`.
    Http {
        port: u16,
        path: PathAndQuery,
        headers: HeaderMap,
    },
    /// A TCP connection to `127.0.0.1:port`.
    Tcp { port: u16 },
}

/// Why `--app-probes` was refused (the sidecar does not start: a bad flag).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppProbesError {
    /// Not JSON, or not the shape above (unknown fields, e.g. `host`, are refused).
    #[error("not a JSON object of probes by path: {0}")]
    Json(#[from] serde_json::Error),
    /// A path outside `/app-health/`.
    #[error("{path:?}: probe paths start with {PATH_PREFIX}")]
    Path {
        /// The path.
        path: String,
    },
    /// Neither or both of `httpGet` and `tcpSocket`.
    #[error("{path:?}: exactly one of httpGet and tcpSocket is needed")]
    Action {
        /// The path.
        path: String,
    },
    /// Port 0.
    #[error("{path:?}: port 0 is not a port")]
    Port {
        /// The path.
        path: String,
    },
    /// A scheme other than `HTTP`.
    #[error("{path:?}: scheme {scheme:?} is not relayed; only HTTP probes are")]
    Scheme {
        /// The path.
        path: String,
        /// What it said.
        scheme: String,
    },
    /// An `httpGet.path` that is not an origin-form path (`/...`).
    #[error("{path:?}: httpGet.path {target:?} is not a path starting with /")]
    TargetPath {
        /// The probe's path.
        path: String,
        /// The app path.
        target: String,
    },
    /// A header name or value HTTP does not allow.
    #[error("{path:?}: httpHeaders: {name:?} is not a valid header")]
    Header {
        /// The probe's path.
        path: String,
        /// The header's name.
        name: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProbe {
    http_get: Option<RawHttpGet>,
    tcp_socket: Option<RawTcpSocket>,
    timeout_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHttpGet {
    path: Option<String>,
    port: u16,
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<RawHeader>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcpSocket {
    port: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    value: String,
}

impl AppProbes {
    /// Parses the JSON of `--app-probes`.
    pub fn parse(text: &str) -> Result<Self, AppProbesError> {
        let raw: HashMap<String, RawProbe> = serde_json::from_str(text)?;
        let mut probes = HashMap::with_capacity(raw.len());
        for (path, probe) in raw {
            let parsed = AppProbe::try_from_raw(&path, probe)?;
            probes.insert(path, parsed);
        }
        Ok(Self { probes })
    }

    /// The probe answered on `path`, if any.
    pub fn get(&self, path: &str) -> Option<&AppProbe> {
        self.probes.get(path)
    }

    /// How many probes are relayed.
    pub fn len(&self) -> usize {
        self.probes.len()
    }

    /// True when no probe is relayed.
    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }
}

impl AppProbe {
    fn try_from_raw(path: &str, raw: RawProbe) -> Result<Self, AppProbesError> {
        let at = || path.to_owned();
        if !path.starts_with(PATH_PREFIX) || path.len() == PATH_PREFIX.len() {
            return Err(AppProbesError::Path { path: at() });
        }
        let timeout = raw
            .timeout_seconds
            .filter(|s| *s > 0)
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
            .min(MAX_TIMEOUT);
        let target = match (raw.http_get, raw.tcp_socket) {
            (Some(http), None) => {
                let scheme = http.scheme.unwrap_or_else(|| "HTTP".to_owned());
                if !scheme.eq_ignore_ascii_case("HTTP") {
                    return Err(AppProbesError::Scheme { path: at(), scheme });
                }
                let target = http.path.unwrap_or_else(|| "/".to_owned());
                let parsed = target
                    .starts_with('/')
                    .then(|| PathAndQuery::try_from(target.as_str()).ok())
                    .flatten()
                    .ok_or_else(|| AppProbesError::TargetPath {
                        path: at(),
                        target: target.clone(),
                    })?;
                let mut headers = HeaderMap::new();
                for header in http.http_headers {
                    let bad = || AppProbesError::Header {
                        path: at(),
                        name: header.name.clone(),
                    };
                    let name = HeaderName::try_from(header.name.as_str()).map_err(|_| bad())?;
                    let value = HeaderValue::try_from(header.value.as_str()).map_err(|_| bad())?;
                    headers.append(name, value);
                }
                Target::Http {
                    port: port(path, http.port)?,
                    path: parsed,
                    headers,
                }
            }
            (None, Some(tcp)) => Target::Tcp {
                port: port(path, tcp.port)?,
            },
            _ => return Err(AppProbesError::Action { path: at() }),
        };
        Ok(Self { target, timeout })
    }

    /// Runs the probe against the app and answers as kubelet expects. `user_agent` is
    /// kubelet's (`kube-probe/1.x`), passed on unless the probe sets its own.
    pub async fn check(&self, user_agent: Option<&HeaderValue>) -> Response<Body> {
        match &self.target {
            Target::Http {
                port,
                path,
                headers,
            } => {
                let sent =
                    tokio::time::timeout(self.timeout, http_get(*port, path, headers, user_agent))
                        .await;
                match sent {
                    Ok(Ok(status)) => text(status, &format!("app answered {}\n", status.as_u16())),
                    Ok(Err(error)) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("app probe failed: {error}\n"),
                    ),
                    Err(_) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("app did not answer within {:?}\n", self.timeout),
                    ),
                }
            }
            Target::Tcp { port } => {
                let address = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
                match tokio::time::timeout(self.timeout, TcpStream::connect(address)).await {
                    Ok(Ok(_)) => text(StatusCode::OK, "app port open\n"),
                    Ok(Err(error)) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("cannot connect to the app on {address}: {error}\n"),
                    ),
                    Err(_) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("no connection to the app within {:?}\n", self.timeout),
                    ),
                }
            }
        }
    }
}

fn port(path: &str, port: u16) -> Result<u16, AppProbesError> {
    if port == 0 {
        return Err(AppProbesError::Port {
            path: path.to_owned(),
        });
    }
    Ok(port)
}

/// `GET path` to the app on loopback; its status (any error is the caller's 503). Cancel
/// safe: dropping it closes the connection.
async fn http_get(
    port: u16,
    path: &PathAndQuery,
    headers: &HeaderMap,
    user_agent: Option<&HeaderValue>,
) -> Result<StatusCode, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    let (mut sender, mut connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let mut request = Request::get(path.as_str()).body(Empty::<Bytes>::new())?;
    let request_headers = request.headers_mut();
    request_headers.insert(HOST, HeaderValue::from_str(&format!("127.0.0.1:{port}"))?);
    if let Some(agent) = user_agent {
        request_headers.insert(USER_AGENT, agent.clone());
    }
    // The probe's own headers win (kubelet lets them replace Host and User-Agent too).
    let mut replaced = Vec::new();
    for (name, value) in headers {
        if !replaced.contains(name) {
            request_headers.remove(name);
            replaced.push(name.clone());
        }
        request_headers.append(name.clone(), value.clone());
    }
    // The connection is driven here rather than spawned, so nothing outlives the probe.
    tokio::select! {
        response = sender.send_request(request) => Ok(response?.status()),
        ended = &mut connection => match ended {
            Ok(()) => Err("the app closed the connection without answering".into()),
            Err(error) => Err(error.into()),
        },
    }
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(body::full(Bytes::copy_from_slice(message.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_injected_shape_parses() {
        let probes = AppProbes::parse(
            r#"{"/app-health/web/readyz": {"httpGet": {"path": "/healthz?full=1", "port": 8080,
                 "scheme": "HTTP", "httpHeaders": [{"name": "x-probe", "value": "1"}]},
                 "timeoutSeconds": 3},
                "/app-health/web/livez": {"tcpSocket": {"port": 8080}},
                "/app-health/web/startupz": {"httpGet": {"port": 8080}, "timeoutSeconds": 600}}"#,
        )
        .unwrap();
        assert_eq!(probes.len(), 3);
        let ready = probes.get("/app-health/web/readyz").unwrap();
        assert_eq!(ready.timeout, Duration::from_secs(3));
        let Target::Http {
            port,
            path,
            headers,
        } = &ready.target
        else {
            panic!("{ready:?}");
        };
        assert_eq!((*port, path.as_str()), (8080, "/healthz?full=1"));
        assert_eq!(headers["x-probe"], "1");
        let live = probes.get("/app-health/web/livez").unwrap();
        assert!(matches!(live.target, Target::Tcp { port: 8080 }));
        assert_eq!(live.timeout, DEFAULT_TIMEOUT);
        let startup = probes.get("/app-health/web/startupz").unwrap();
        assert_eq!(startup.timeout, MAX_TIMEOUT, "bounded");
        assert!(probes.get("/app-health/web").is_none());
        assert!(probes.get("/ready").is_none());
    }

    #[test]
    fn anything_that_could_leave_loopback_or_the_app_path_is_refused() {
        let refused = |text: &str| AppProbes::parse(text).unwrap_err().to_string();
        for (text, expected) in [
            (r#"{"/ready": {"tcpSocket": {"port": 1}}}"#, "start with"),
            (
                r#"{"/app-health/": {"tcpSocket": {"port": 1}}}"#,
                "start with",
            ),
            (
                r#"{"/app-health/a/livez": {"tcpSocket": {"port": 1, "host": "10.0.0.1"}}}"#,
                "unknown field `host`",
            ),
            (
                r#"{"/app-health/a/livez": {"httpGet": {"port": 1, "host": "example.com"}}}"#,
                "unknown field `host`",
            ),
            (
                r#"{"/app-health/a/livez": {"httpGet": {"port": 1, "path": "http://example.com/"}}}"#,
                "is not a path",
            ),
            (
                r#"{"/app-health/a/livez": {"httpGet": {"port": 1, "scheme": "HTTPS"}}}"#,
                "only HTTP",
            ),
            (
                r#"{"/app-health/a/livez": {"tcpSocket": {"port": 0}}}"#,
                "port 0",
            ),
            (r#"{"/app-health/a/livez": {}}"#, "exactly one"),
            (
                r#"{"/app-health/a/livez": {"httpGet": {"port": 1, "httpHeaders": [{"name": "a b", "value": "1"}]}}}"#,
                "not a valid header",
            ),
            ("[]", "JSON object"),
        ] {
            let error = refused(text);
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
