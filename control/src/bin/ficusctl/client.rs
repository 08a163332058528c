//! A small HTTP/1.1 client for the control plane's API: one connection per request, a deadline
//! on connecting and on the whole exchange, a bounded response body.

use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

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
}

impl Client {
    /// A client for `--server` (`http://host[:port]`).
    pub fn new(
        server: &str,
        token: Option<String>,
        author: Option<String>,
    ) -> Result<Self, CtlError> {
        let rest = server.strip_prefix("http://").ok_or_else(|| {
            let why = if server.starts_with("https://") {
                "https is not supported yet"
            } else {
                "it must start with http://"
            };
            CtlError::Usage(format!("invalid --server {server:?}: {why}"))
        })?;
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
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            authority,
            token,
            author,
        })
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
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let driver = tokio::spawn(connection);
            let response = sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let collected = Limited::new(body, MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            driver.abort();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((parts.status, collected.to_bytes()))
        };
        let (status, body) = tokio::time::timeout(RESPONSE_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {RESPONSE_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        if status.is_success() {
            return Ok(body);
        }
        Err(server_error(status, &body))
    }
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
        assert!(matches!(client("https://x:1"), Err(CtlError::Usage(_))));
        assert!(matches!(client("127.0.0.1:15014"), Err(CtlError::Usage(_))));
        assert!(matches!(client("http://x:1/api"), Err(CtlError::Usage(_))));
    }

    #[test]
    fn escapes_path_segments() {
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(path_segment("shop-v2.x"), "shop-v2.x");
    }
}
