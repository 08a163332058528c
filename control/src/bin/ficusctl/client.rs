//! A small HTTP/1.1 client for the control plane's API: one connection per request, a deadline
//! on connecting and on the whole exchange, a bounded response body.
//!
//! Over `https://` (the control plane's `--https`) the server is verified by the mesh root in
//! `--ca-file` and by its SPIFFE ID, `spiffe://<td>/ns/ficus-system/sa/ficus-control` (the host
//! name in `--server` is not checked against the certificate); `<td>` is `--trust-domain`, else
//! the trust domain of `--cert-file`, else `cluster.local`. TLS 1.3 only. `--cert-file` and
//! `--key-file` present an admin client certificate (`ficus-control issue-admin-cert`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ficus_identity::tls::{self, CertStore, Credentials, TrustBundle, ALPN_HTTP1};
use ficus_identity::SpiffeId;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use crate::CtlError;

/// Time to open the TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the whole exchange once connected (an apply waits for an fsync).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response body accepted (a whole config with history is far smaller).
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// Talks to one control plane.
#[derive(Debug, Clone)]
pub struct Client {
    /// `host:port` to connect to and to send as `Host`.
    authority: String,
    /// `Authorization: Bearer …`, from `--token-file`.
    token: Option<String>,
    /// Sent as `x-ficus-author` on writes.
    pub author: Option<String>,
    /// Whether `--server` is `https://`.
    https: bool,
    /// The TLS config for `https://` (see [`Client::with_tls`]).
    tls: Option<Arc<ClientConfig>>,
}

/// `--ca-file`, `--cert-file`, `--key-file` and `--trust-domain`.
#[derive(Debug, Default)]
pub struct TlsFiles {
    /// The mesh root(s): the control plane's `<data>/ca.pem`.
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The mesh's trust domain.
    pub trust_domain: Option<String>,
}

impl Client {
    /// A client for `--server` (`http://host[:port]`).
    pub fn new(
        server: &str,
        token: Option<String>,
        author: Option<String>,
    ) -> Result<Self, CtlError> {
        let (rest, https) = match server.strip_prefix("https://") {
            Some(rest) => (rest, true),
            None => (
                server.strip_prefix("http://").ok_or_else(|| {
                    CtlError::Usage(format!(
                        "invalid --server {server:?}: it must start with http:// or https://"
                    ))
                })?,
                false,
            ),
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || authority.contains('@') {
            return Err(CtlError::Usage(format!(
                "invalid --server {server:?}: give http://HOST:PORT, e.g. http://127.0.0.1:15014"
            )));
        }
        let has_port = authority.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && !port.is_empty() && port.chars().all(|c| c.is_ascii_digit())
        }) && !authority.ends_with(']');
        let authority = if has_port {
            authority.to_owned()
        } else if https {
            format!("{authority}:443")
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            authority,
            token,
            author,
            https,
            tls: None,
        })
    }

    /// Sets up TLS for an `https://` server from `files`; refuses TLS files with `http://`.
    pub fn with_tls(mut self, files: &TlsFiles) -> Result<Self, CtlError> {
        let given =
            files.ca_file.is_some() || files.cert_file.is_some() || files.key_file.is_some();
        if !self.https {
            if given {
                return Err(CtlError::Usage(
                    "--ca-file, --cert-file and --key-file need an https:// --server".to_owned(),
                ));
            }
            return Ok(self);
        }
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read_to_string(path)
                .map_err(|e| CtlError::Usage(format!("cannot read {flag} {}: {e}", path.display())))
        };
        let Some(ca_file) = &files.ca_file else {
            return Err(CtlError::Usage(
                "an https:// --server needs --ca-file (the control plane's <data>/ca.pem)"
                    .to_owned(),
            ));
        };
        let roots = read("--ca-file", ca_file)?;
        let credentials = match (&files.cert_file, &files.key_file) {
            (Some(cert), Some(key)) => Some(
                Credentials::from_pem_key(&read("--cert-file", cert)?, &read("--key-file", key)?)
                    .map_err(|e| CtlError::Usage(format!("--cert-file/--key-file: {e}")))?,
            ),
            (None, None) => None,
            _ => {
                return Err(CtlError::Usage(
                    "--cert-file and --key-file go together".to_owned(),
                ))
            }
        };
        let store = credentials.map(CertStore::with_credentials);
        let trust_domain = files
            .trust_domain
            .clone()
            .or_else(|| {
                let id = store.as_ref()?.id()?;
                Some(id.trust_domain().to_owned())
            })
            .unwrap_or_else(|| "cluster.local".to_owned());
        let bundle = TrustBundle::from_pem(&roots, &trust_domain)
            .map_err(|e| CtlError::Usage(format!("--ca-file {}: {e}", ca_file.display())))?;
        let expected = SpiffeId::workload(&trust_domain, "ficus-system", "ficus-control")
            .map_err(|e| CtlError::Usage(format!("--trust-domain {trust_domain:?}: {e}")))?;
        let config = tls::client_config(store, &bundle, &expected)
            .map_err(|e| CtlError::Usage(format!("TLS configuration: {e}")))?;
        self.tls = Some(tls::with_alpn(&config, ALPN_HTTP1));
        Ok(self)
    }

    /// `GET path`, decoded from JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CtlError> {
        let body = self.send(Method::GET, path, None).await?;
        decode(&body)
    }

    /// A request with a JSON body (or none), decoded from JSON.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, CtlError> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let answer = self.send(method, path, body).await?;
        decode(&answer)
    }

    /// Sends one request on a new connection; a non-2xx answer becomes [`CtlError::Failed`]
    /// with the server's message and diagnostics.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Bytes, CtlError> {
        let unreachable = |what: String| {
            CtlError::Unreachable(format!(
                "cannot reach the control plane at {}: {what}",
                self.authority
            ))
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.authority);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(author) = &self.author {
            if let Ok(value) = http::HeaderValue::from_str(author) {
                request = request.header("x-ficus-author", value);
            }
        }
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| CtlError::Usage(format!("invalid request: {e}")))?;
        let exchange = async {
            if self.https {
                let config = self
                    .tls
                    .clone()
                    .ok_or_else(|| ExchangeError::connection("https:// needs --ca-file"))?;
                let host = self.authority.rsplit_once(':').map_or("", |(host, _)| {
                    host.trim_start_matches('[').trim_end_matches(']')
                });
                // Not checked against the certificate (the SPIFFE ID is); any valid name works.
                let name = ServerName::try_from(host.to_owned())
                    .unwrap_or_else(|_| ServerName::from(std::net::IpAddr::from([127, 0, 0, 1])));
                let stream = TlsConnector::from(config)
                    .connect(name, stream)
                    .await
                    .map_err(|e| ExchangeError::connection(format!("TLS handshake: {e}")))?;
                exchange(stream, request).await
            } else {
                exchange(stream, request).await
            }
        };
        let (status, body) = tokio::time::timeout(RESPONSE_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {RESPONSE_TIMEOUT:?}")))?
            .map_err(|e| match e {
                ExchangeError::Connection(e) => unreachable(with_sources(&*e)),
                answer @ ExchangeError::Answer(_) => CtlError::failed(answer.to_string()),
            })?;
        if status.is_success() {
            return Ok(body);
        }
        Err(server_error(status, &body))
    }
}

/// `error` and its sources, `: `-separated (hyper's "connection error" alone hides a TLS alert).
fn with_sources(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = inner.source();
    }
    text
}

/// Why an exchange failed: which side of "the control plane answered" decides the exit code.
#[derive(Debug)]
enum ExchangeError {
    /// No answer: the TLS handshake, the HTTP handshake or sending the request failed, or the
    /// connection closed before a status line came. The control plane is unreachable (exit 3).
    Connection(Box<dyn std::error::Error + Send + Sync>),
    /// The control plane answered, but its body could not be read: larger than
    /// [`MAX_RESPONSE`], or cut short. It is up, so the request failed (exit 1).
    Answer(String),
}

impl ExchangeError {
    fn connection(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Connection(error.into())
    }

    /// The failure to read an answer's body: `error` from [`Limited`].
    fn answer(error: &(dyn std::error::Error + 'static)) -> Self {
        if error.is::<http_body_util::LengthLimitError>() {
            return Self::Answer(format!(
                "the control plane's answer is larger than {} MiB; ask for less (e.g. \
                 `ficusctl history --limit N`)",
                MAX_RESPONSE / (1024 * 1024)
            ));
        }
        Self::Answer(format!(
            "reading the control plane's answer failed: {}",
            with_sources(error)
        ))
    }
}

// === impl ExchangeError ===

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connection(error) => f.write_str(&with_sources(&**error)),
            Self::Answer(message) => f.write_str(message),
        }
    }
}

/// One request and its whole (bounded) answer on `stream`.
async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), ExchangeError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ExchangeError::connection)?;
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(ExchangeError::connection)?;
    let (parts, body) = response.into_parts();
    let collected = Limited::new(body, MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| ExchangeError::answer(&*e))?;
    driver.abort();
    Ok((parts.status, collected.to_bytes()))
}

/// The server's `{"error", "diagnostics"}` answer, or what it sent instead.
fn server_error(status: StatusCode, body: &[u8]) -> CtlError {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
        #[serde(default)]
        diagnostics: Vec<String>,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(answer) => CtlError::Failed {
            message: answer.error,
            diagnostics: answer.diagnostics,
        },
        Err(_) => {
            let text: String = String::from_utf8_lossy(body).chars().take(300).collect();
            CtlError::failed(format!(
                "the control plane answered {status}: {}",
                text.trim()
            ))
        }
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CtlError> {
    serde_json::from_slice(body)
        .map_err(|e| CtlError::failed(format!("unexpected answer from the control plane: {e}")))
}

/// Escapes a path segment (`/`, spaces, non-ASCII) for a URL.
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_urls() {
        let client = |s: &str| Client::new(s, None, None).map(|c| c.authority);
        assert_eq!(client("http://127.0.0.1:15014").unwrap(), "127.0.0.1:15014");
        assert_eq!(client("http://localhost:1/").unwrap(), "localhost:1");
        assert_eq!(client("http://control").unwrap(), "control:80");
        assert_eq!(client("https://x:1").unwrap(), "x:1");
        assert_eq!(client("https://control").unwrap(), "control:443");
        assert!(matches!(client("ftp://x:1"), Err(CtlError::Usage(_))));
        assert!(matches!(client("127.0.0.1:15014"), Err(CtlError::Usage(_))));
        assert!(matches!(client("http://x:1/api"), Err(CtlError::Usage(_))));
    }

    /// A stand-in control plane on loopback that answers one request with `answer` (raw
    /// HTTP/1.1) and closes the connection.
    async fn answering(answer: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let read = stream.read(&mut buffer).await.unwrap();
                assert!(read > 0, "the request ended early");
                request.extend_from_slice(&buffer[..read]);
            }
            // The peer may have given up reading; that is what some of these tests are about.
            let _ = stream.write_all(&answer).await;
            let _ = stream.shutdown().await;
        });
        format!("http://{addr}")
    }

    /// An answer cut short (the server is up: it answered) fails the request (exit 1); it is
    /// not "cannot reach the control plane" (exit 3).
    #[tokio::test]
    async fn a_truncated_answer_is_a_failure_not_unreachable() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n{\"current\": 1, ".to_vec();
        let client = Client::new(&answering(answer).await, None, None).unwrap();
        let error = client
            .get::<serde_json::Value>("/v1/history")
            .await
            .unwrap_err();
        assert!(matches!(error, CtlError::Failed { .. }), "{error:?}");
        assert_eq!(error.exit_code(), 1);
        assert!(!error.to_string().contains("cannot reach"), "{error}");
    }

    /// An answer over the size limit fails the request (exit 1) and says why.
    #[tokio::test]
    async fn an_oversized_answer_is_a_failure_not_unreachable() {
        let body = vec![b' '; MAX_RESPONSE + 1];
        let mut answer =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        answer.extend_from_slice(&body);
        let client = Client::new(&answering(answer).await, None, None).unwrap();
        let error = client
            .get::<serde_json::Value>("/v1/history")
            .await
            .unwrap_err();
        assert!(matches!(error, CtlError::Failed { .. }), "{error:?}");
        assert_eq!(error.exit_code(), 1);
        assert!(error.to_string().contains("larger than"), "{error}");
    }

    #[test]
    fn escapes_path_segments() {
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(path_segment("shop-v2.x"), "shop-v2.x");
    }
}
