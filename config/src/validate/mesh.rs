//! `Mesh` → [`model::Mesh`].

use std::time::Duration;

use super::common::{percent, positive_duration};
use super::{optional, Report};
use crate::model::{self, AccessLog, AccessLogTarget, MtlsMode, ProxyLimits, Tracing};
use crate::raw;

/// Largest `spec.proxy.maxHeaders` (Envoy's bound for `max_headers_count`).
const MAX_HEADERS: usize = 10_000;
/// Largest `spec.proxy.maxHeaderBytes`: 8 MiB (Envoy's bound for `max_request_headers_kb`).
const MAX_HEADER_BYTES: usize = 8 << 20;

/// Validates a Mesh spec; left-out fields keep [`model::Mesh::default`] values.
pub(crate) fn validate(report: &mut Report<'_>, spec: &raw::MeshSpec) -> Option<model::Mesh> {
    let defaults = model::Mesh::default();
    let trust_domain = match &spec.trust_domain {
        Some(domain) => trust_domain(report, domain),
        None => Some(defaults.trust_domain),
    };
    let mtls_mode = match spec.mtls.as_ref().map(|mtls| mtls.mode) {
        None => defaults.mtls_mode,
        Some(raw::MtlsMode::Disable) => MtlsMode::Disable,
        Some(raw::MtlsMode::Permissive) => MtlsMode::Permissive,
        Some(raw::MtlsMode::Strict) => MtlsMode::Strict,
    };
    let tracing = spec
        .tracing
        .as_ref()
        .map(|tracing| self::tracing(report, tracing));
    let proxy = match &spec.proxy {
        Some(proxy) => proxy_limits(report, proxy),
        None => Some(defaults.proxy),
    };
    let access_log = spec
        .access_log
        .as_ref()
        .map(|log| self::access_log(report, log));
    Some(model::Mesh {
        trust_domain: trust_domain?,
        mtls_mode,
        tracing: optional(tracing)?,
        proxy: proxy?,
        access_log: optional(access_log)?,
    })
}

/// `spec.accessLog.path`: `/dev/stdout`, `/dev/stderr` or an absolute file path.
fn access_log(report: &mut Report<'_>, log: &raw::AccessLog) -> Option<AccessLog> {
    let path = log.path.as_str();
    let target = match path {
        "/dev/stdout" => AccessLogTarget::Stdout,
        "/dev/stderr" => AccessLogTarget::Stderr,
        _ if path.starts_with('/')
            && !path.ends_with('/')
            && !path.chars().any(char::is_control) =>
        {
            AccessLogTarget::File(path.into())
        }
        _ => {
            report.error(
                "spec.accessLog.path",
                format!("{path:?} is not /dev/stdout, /dev/stderr or an absolute file path"),
                "e.g. /dev/stdout, or /var/log/ficus/access.log",
            );
            return None;
        }
    };
    Some(AccessLog { target })
}

/// SPIFFE trust domain: lowercase letters, digits, `.`, `-` and `_`.
fn trust_domain(report: &mut Report<'_>, domain: &str) -> Option<String> {
    let ok = !domain.is_empty()
        && domain.len() <= 255
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b));
    if ok {
        return Some(domain.to_owned());
    }
    report.error(
        "spec.trustDomain",
        format!("{domain:?} is not a valid SPIFFE trust domain"),
        "use lowercase letters, digits, '.', '-' and '_', e.g. cluster.local",
    );
    None
}

fn tracing(report: &mut Report<'_>, tracing: &raw::Tracing) -> Option<Tracing> {
    let endpoint = &tracing.otlp_endpoint;
    let has_scheme = endpoint.starts_with("http://") || endpoint.starts_with("https://");
    let host = endpoint.split_once("://").map_or("", |(_, rest)| rest);
    let endpoint_ok = has_scheme && !host.is_empty() && !endpoint.chars().any(char::is_whitespace);
    if !endpoint_ok {
        report.error(
            "spec.tracing.otlpEndpoint",
            format!("{endpoint:?} is not an http:// or https:// URL"),
            "give the OTLP/gRPC collector URL, e.g. http://127.0.0.1:4317",
        );
    }
    let sampling_percent = match tracing.sampling_percent {
        Some(value) => percent(report, "spec.tracing.samplingPercent", value),
        None => Some(100.0),
    };
    Some(Tracing {
        otlp_endpoint: endpoint_ok.then(|| endpoint.clone())?,
        sampling_percent: sampling_percent?,
    })
}

fn proxy_limits(report: &mut Report<'_>, proxy: &raw::ProxyLimits) -> Option<ProxyLimits> {
    let defaults = ProxyLimits::default();
    let mut timeout = |name: &str, text: &Option<String>, default: Duration| match text {
        Some(text) => positive_duration(report, &format!("spec.proxy.{name}"), text),
        None => Some(default),
    };
    let header_read_timeout = timeout(
        "headerReadTimeout",
        &proxy.header_read_timeout,
        defaults.header_read_timeout,
    );
    let body_idle_timeout = timeout(
        "bodyIdleTimeout",
        &proxy.body_idle_timeout,
        defaults.body_idle_timeout,
    );
    let stream_idle_timeout = timeout(
        "streamIdleTimeout",
        &proxy.stream_idle_timeout,
        defaults.stream_idle_timeout,
    );
    let connect_timeout = timeout(
        "connectTimeout",
        &proxy.connect_timeout,
        defaults.connect_timeout,
    );
    let upstream_response_timeout = timeout(
        "upstreamResponseTimeout",
        &proxy.upstream_response_timeout,
        defaults.upstream_response_timeout,
    );
    let upstream_idle_timeout = timeout(
        "upstreamIdleTimeout",
        &proxy.upstream_idle_timeout,
        defaults.upstream_idle_timeout,
    );
    let connection_idle_timeout = timeout(
        "connectionIdleTimeout",
        &proxy.connection_idle_timeout,
        defaults.connection_idle_timeout,
    );
    // Upper bounds as Envoy's: the HTTP/1 parser makes room for `maxHeaders` header slots
    // for every request head it reads, so an absurd value would allocate (or abort) per request.
    let mut count = |name: &str, value: Option<u64>, default: usize, max: usize| {
        let Some(value) = value else {
            return Some(default);
        };
        match usize::try_from(value) {
            Ok(value) if value > 0 && value <= max => Some(value),
            _ => {
                report.error(
                    format!("spec.proxy.{name}"),
                    format!("{value} is out of range"),
                    format!("use a number from 1 to {max}"),
                );
                None
            }
        }
    };
    let max_header_bytes = count(
        "maxHeaderBytes",
        proxy.max_header_bytes,
        defaults.max_header_bytes,
        MAX_HEADER_BYTES,
    );
    let max_headers = count(
        "maxHeaders",
        proxy.max_headers,
        defaults.max_headers,
        MAX_HEADERS,
    );
    let max_concurrent_streams = match proxy.max_concurrent_streams {
        Some(0) => {
            report.error(
                "spec.proxy.maxConcurrentStreams",
                "0 would refuse every HTTP/2 request",
                "use a number above 0; the default is 100",
            );
            None
        }
        Some(value) => Some(value),
        None => Some(defaults.max_concurrent_streams),
    };
    let opaque_ports = opaque_ports(report, proxy.opaque_ports.as_deref().unwrap_or_default());
    Some(ProxyLimits {
        header_read_timeout: header_read_timeout?,
        body_idle_timeout: body_idle_timeout?,
        stream_idle_timeout: stream_idle_timeout?,
        connect_timeout: connect_timeout?,
        upstream_response_timeout: upstream_response_timeout?,
        upstream_idle_timeout: upstream_idle_timeout?,
        connection_idle_timeout: connection_idle_timeout?,
        max_header_bytes: max_header_bytes?,
        max_headers: max_headers?,
        max_concurrent_streams: max_concurrent_streams?,
        opaque_ports: opaque_ports?,
    })
}

/// `spec.proxy.opaquePorts`: TCP ports, sorted and without duplicates.
fn opaque_ports(report: &mut Report<'_>, ports: &[u64]) -> Option<Vec<u16>> {
    let mut valid = Vec::with_capacity(ports.len());
    let mut all_valid = true;
    for (i, port) in ports.iter().enumerate() {
        match u16::try_from(*port) {
            Ok(port) if port > 0 => valid.push(port),
            _ => {
                all_valid = false;
                report.error(
                    format!("spec.proxy.opaquePorts[{i}]"),
                    format!("{port} is not a TCP port"),
                    "use a port from 1 to 65535, e.g. 3306",
                );
            }
        }
    }
    valid.sort_unstable();
    valid.dedup();
    all_valid.then_some(valid)
}
