//! `ficus_grpc_responses_total`: the status each gRPC call ended with.
//!
//! A gRPC call that fails still answers HTTP 200 (the status comes in trailers), so
//! `ficus_requests_total{response_code}` shows a failing gRPC backend as healthy. This counts
//! the call's gRPC status where it is known: the response headers of a trailers-only response
//! (counted at once), else the trailers at the end of the body. A body that ends without a
//! status counts as `UNKNOWN` (2), one that fails as `INTERNAL` (13), and one the client
//! abandons before its end as `CANCELLED` (1), as a gRPC client would see them.
//!
//! The request's span ends here too ([`finish`]): at once, with the status of the response
//! head, or, for a gRPC call whose status comes in trailers, when it comes, so that the span
//! covers the whole call and records `rpc.grpc.status_code`.
//!
//! Only responses that are gRPC (HTTP/2, `content-type: application/grpc…`) are looked at; an
//! HTTP/1.1 response costs one comparison.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{self, Body, BoxError};
use crate::policy::grpc;
use crate::telemetry::metrics::{GrpcCounters, RequestMetrics};
use crate::telemetry::trace::{AwaitingStatus, Finishing};

const CANCELLED: u8 = 1;
const INTERNAL: u8 = 13;

/// Ends the request's `span` and counts a gRPC response's status against `metrics`: at once
/// when the response head tells all, else when the body's trailers come (`flags` and
/// `elapsed` describe the response head).
pub fn finish(
    response: Response<Body>,
    metrics: &RequestMetrics,
    span: Finishing<'_>,
    flags: &'static str,
    elapsed: std::time::Duration,
) -> Response<Body> {
    if response.version() != Version::HTTP_2 || !grpc::is_grpc(response.headers()) {
        span.finish(&response, flags, elapsed);
        return response;
    }
    let counters = metrics.grpc();
    if response.headers().contains_key("grpc-status") || response.status() != StatusCode::OK {
        if let Some(code) = grpc::status(response.status(), response.headers()) {
            counters.count(code);
        }
        span.finish(&response, flags, elapsed);
        return response;
    }
    // A body already at its end is never polled: no trailers will come.
    if response.body().is_end_stream() {
        counters.count(grpc::UNKNOWN);
        if let Some(span) = span.await_status(&response, flags) {
            span.finish(grpc::UNKNOWN);
        }
        return response;
    }
    let counters = Arc::clone(counters);
    let span = span.await_status(&response, flags);
    response.map(|inner| {
        body::boxed(Observed {
            inner,
            counters: Some(counters),
            span,
        })
    })
}

/// A gRPC response body that counts its status (and ends the request's span with it) when
/// its trailers come, it ends, it fails or it is dropped.
struct Observed {
    inner: Body,
    /// Until the status is counted.
    counters: Option<Arc<GrpcCounters>>,
    /// The sampled span, until it ends.
    span: Option<AwaitingStatus>,
}

impl Observed {
    fn count(&mut self, code: u8) {
        if let Some(counters) = self.counters.take() {
            counters.count(code);
        }
        if let Some(span) = self.span.take() {
            span.finish(code);
        }
    }
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc::status(StatusCode::OK, trailers).unwrap_or(grpc::UNKNOWN);
                    self.count(code);
                } else if self.inner.is_end_stream() {
                    self.count(grpc::UNKNOWN);
                }
            }
            Poll::Ready(Some(Err(_))) => self.count(INTERNAL),
            Poll::Ready(None) => self.count(grpc::UNKNOWN),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.count(CANCELLED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::{Direction, Metrics};
    use crate::telemetry::trace::{Kind, Span, SpanSink};
    use http_body_util::BodyExt;

    fn grpc_response(body: Body) -> Response<Body> {
        let mut response = Response::new(body);
        *response.version_mut() = Version::HTTP_2;
        response
            .headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        response
    }

    /// [`finish`] with tracing off.
    fn observe(response: Response<Body>, metrics: &RequestMetrics) -> Response<Body> {
        let identity = crate::state::Identity {
            workload: String::new(),
            namespace: String::new(),
            node_id: String::new(),
            app: "127.0.0.1:1".parse().unwrap(),
        };
        let sink = Arc::new(SpanSink::new(Metrics::new(), &identity));
        let request = http::Request::new(());
        let peer = "127.0.0.1:2".parse().unwrap();
        let span = Span::start(None, Kind::Client, &request, peer);
        let span = Finishing::new(span, &sink, std::time::Instant::now());
        finish(response, metrics, span, "", std::time::Duration::ZERO)
    }

    fn counted(metrics: &Metrics, code: &str) -> f64 {
        let text = String::from_utf8(metrics.encode().to_vec()).unwrap();
        text.lines()
            .filter(|l| l.starts_with("ficus_grpc_responses_total{"))
            .filter(|l| l.contains(&format!("grpc_status=\"{code}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    #[tokio::test]
    async fn statuses_are_counted_from_trailers_headers_or_how_the_body_ends() {
        let metrics = Metrics::new();
        let request = metrics.request_metrics(Direction::Outbound, "shop/api", "shop/api");

        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().unwrap());
        let with_trailers = http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Ok(Frame::trailers(trailers)),
        ]));
        let response = observe(grpc_response(body::boxed(with_trailers)), &request);
        response.into_body().collect().await.unwrap();
        assert_eq!(counted(&metrics, "14"), 1.0);

        let mut trailers_only = grpc_response(body::full(""));
        trailers_only
            .headers_mut()
            .insert("grpc-status", "5".parse().unwrap());
        drop(observe(trailers_only, &request));
        assert_eq!(counted(&metrics, "5"), 1.0);

        let ended_without = observe(grpc_response(body::full("x")), &request);
        ended_without.into_body().collect().await.unwrap();
        assert_eq!(counted(&metrics, "2"), 1.0, "no status: UNKNOWN");

        drop(observe(grpc_response(body::full("x")), &request));
        assert_eq!(counted(&metrics, "1"), 1.0, "abandoned: CANCELLED");

        drop(observe(grpc_response(body::empty()), &request));
        assert_eq!(counted(&metrics, "2"), 2.0, "empty, no status: UNKNOWN");

        let mut plain = Response::new(body::full("x"));
        *plain.version_mut() = Version::HTTP_11;
        plain
            .headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        drop(observe(plain, &request));
        assert_eq!(counted(&metrics, "1"), 1.0, "not HTTP/2: not looked at");
    }
}
