//! Trace context on the wire: W3C Trace Context (`traceparent`, `tracestate`) and B3
//! (`x-b3-*` headers and the single `b3` header), parsed without allocating and written back
//! in the formats a request arrived with.
//!
//! Parsing is strict where the specifications are: lowercase hex only, exact lengths, no
//! all-zero ids, W3C version `ff` invalid, version `00` exactly 55 bytes, a higher version
//! at least 55 bytes with a `-` after the flags (its extra fields are ignored, and we answer
//! in version `00`). More than one `traceparent` is invalid. A `tracestate` travels only with
//! a valid `traceparent` and with at most 32 list members; otherwise it is dropped.

use std::cell::RefCell;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// B3 multi-header trace id.
pub const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// B3 multi-header span id.
pub const X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// B3 multi-header parent span id.
pub const X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// B3 multi-header sampling decision.
pub const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// B3 multi-header debug flag.
pub const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
/// B3 single header.
pub const B3: HeaderName = HeaderName::from_static("b3");
/// Request header that forces sampling of its trace (forwarded unchanged).
pub const X_FICUS_FORCE_TRACE: HeaderName = HeaderName::from_static("x-ficus-force-trace");

/// At most this many `tracestate` list members (W3C); more and the whole header is dropped.
const TRACESTATE_MAX_MEMBERS: usize = 32;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A 16-byte trace id, never all zero once parsed or generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id, never all zero once parsed or generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

thread_local! {
    /// Ids are drawn per thread from a small fast generator seeded from the OS-seeded
    /// thread generator (as the OpenTelemetry SDK's id generator does): ids must be unique
    /// and well spread, not secret, and the request path draws one or two per request.
    static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// `N` random bytes from this thread's id generator.
fn random_bytes<const N: usize>() -> [u8; N] {
    IDS.with_borrow_mut(|rng| rng.random())
}

/// A uniform random `u64` from this thread's id generator (sampling draws).
pub fn random_u64() -> u64 {
    IDS.with_borrow_mut(|rng| rng.random())
}

impl TraceId {
    /// A random, non-zero trace id.
    pub fn random() -> Self {
        loop {
            let id = random_bytes::<16>();
            if id != [0; 16] {
                return Self(id);
            }
        }
    }
}

/// A random trace id and span id, from one draw.
pub fn random_ids() -> (TraceId, SpanId) {
    let bytes = random_bytes::<24>();
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    trace.copy_from_slice(&bytes[..16]);
    span.copy_from_slice(&bytes[16..]);
    // All-zero ids are invalid; drawing one is a 2^-64 event, handled by drawing again.
    match (trace == [0; 16], span == [0; 8]) {
        (false, false) => (TraceId(trace), SpanId(span)),
        (true, false) => (TraceId::random(), SpanId(span)),
        (false, true) => (TraceId(trace), SpanId::random()),
        (true, true) => (TraceId::random(), SpanId::random()),
    }
}

impl SpanId {
    /// A random, non-zero span id.
    pub fn random() -> Self {
        loop {
            let id = random_bytes::<8>();
            if id != [0; 8] {
                return Self(id);
            }
        }
    }
}

/// The trace formats a request carried, so that the answer goes out in the same ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Formats {
    /// Any `x-b3-*` header.
    pub b3_multi: bool,
    /// A `b3` header.
    pub b3_single: bool,
    /// The B3 trace id was 64 bits (16 hex digits): answered in the same width.
    pub b3_short_trace_id: bool,
}

/// The remote parent a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// Its trace.
    pub trace_id: TraceId,
    /// Its span: our span's parent.
    pub span_id: SpanId,
}

/// What the trace headers of a request say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extracted {
    /// The caller's span, from the first valid format (W3C, then B3 multi, then B3 single).
    pub parent: Option<Parent>,
    /// The caller's sampling decision, when it made one.
    pub sampled: Option<bool>,
    /// B3 debug (`x-b3-flags: 1`, `b3: …-d`): sampled, and answered as debug.
    pub debug: bool,
    /// Formats present.
    pub formats: Formats,
    /// The `traceparent` was valid, so `tracestate` (if acceptable) may travel on.
    pub tracestate_ok: bool,
    /// Some trace header was present but malformed: it must be replaced, not forwarded.
    pub malformed: bool,
    /// `x-ficus-force-trace` was present (any value).
    pub forced: bool,
}

/// Whether `name` is one of the headers [`extract`] reads.
fn is_context_header(name: &HeaderName) -> bool {
    match name.as_str().as_bytes() {
        [b't', ..] => name == TRACEPARENT || name == TRACESTATE,
        [b'x', b'-', b'b', b'3', b'-', ..] => {
            name == X_B3_TRACEID
                || name == X_B3_SPANID
                || name == X_B3_PARENTSPANID
                || name == X_B3_SAMPLED
                || name == X_B3_FLAGS
        }
        [b'b', b'3'] => true,
        _ => false,
    }
}

/// Reads the trace headers of `headers`. Never allocates.
pub fn extract(headers: &HeaderMap) -> Extracted {
    let mut out = Extracted::default();
    // Most requests carry no trace context: one pass over the names instead of ten lookups.
    let mut context = false;
    for name in headers.keys() {
        if is_context_header(name) {
            context = true;
        } else if name == X_FICUS_FORCE_TRACE {
            out.forced = true;
        }
    }
    if !context {
        return out;
    }
    let mut traceparents = headers.get_all(TRACEPARENT).iter();
    if let Some(value) = traceparents.next() {
        let parsed = if traceparents.next().is_some() {
            None
        } else {
            parse_traceparent(value.as_bytes())
        };
        match parsed {
            Some((trace_id, span_id, flags)) => {
                out.parent = Some(Parent { trace_id, span_id });
                out.sampled = Some(flags & 1 == 1);
                out.tracestate_ok = tracestate_acceptable(headers);
            }
            None => out.malformed = true,
        }
    }
    if headers.contains_key(TRACESTATE) && !out.tracestate_ok {
        // A tracestate without a valid traceparent (or unacceptable itself) is dropped.
        out.malformed = true;
    }

    let b3_trace = headers.get(X_B3_TRACEID);
    let b3_span = headers.get(X_B3_SPANID);
    let b3_sampled = headers.get(X_B3_SAMPLED);
    let b3_flags = headers.get(X_B3_FLAGS);
    if b3_trace.is_some()
        || b3_span.is_some()
        || b3_sampled.is_some()
        || b3_flags.is_some()
        || headers.contains_key(X_B3_PARENTSPANID)
    {
        out.formats.b3_multi = true;
        let ids = match (b3_trace, b3_span) {
            (Some(trace), Some(span)) => {
                match (
                    parse_b3_trace_id(trace.as_bytes()),
                    parse_span_id(span.as_bytes()),
                ) {
                    (Some((trace_id, short)), Some(span_id)) => {
                        // Written back in 64 bits only if these ids become the parent (a
                        // `traceparent` that wins has 128 of its own).
                        if out.parent.is_none() {
                            out.formats.b3_short_trace_id = short;
                        }
                        Some(Parent { trace_id, span_id })
                    }
                    _ => None,
                }
            }
            (None, None) => None,
            _ => None,
        };
        let ids_malformed = ids.is_none() && (b3_trace.is_some() || b3_span.is_some());
        let parent_ok = headers
            .get(X_B3_PARENTSPANID)
            .is_none_or(|v| parse_span_id(v.as_bytes()).is_some());
        let debug = match b3_flags.map(HeaderValue::as_bytes) {
            None | Some(b"0") => Some(false),
            Some(b"1") => Some(true),
            Some(_) => None,
        };
        let sampled = match b3_sampled.map(HeaderValue::as_bytes) {
            None => Some(None),
            Some(b"1" | b"true") => Some(Some(true)),
            Some(b"0" | b"false") => Some(Some(false)),
            Some(_) => None,
        };
        match (ids_malformed || !parent_ok, debug, sampled) {
            (false, Some(debug), Some(sampled)) => {
                if out.parent.is_none() {
                    out.parent = ids;
                    out.debug = debug;
                    out.sampled = if debug { Some(true) } else { sampled };
                }
            }
            _ => out.malformed = true,
        }
    }

    if let Some(single) = headers.get(B3) {
        out.formats.b3_single = true;
        match parse_b3_single(single.as_bytes()) {
            Some(b3) => {
                // Its ids count whenever no other header gave any (a sampling-only
                // `x-b3-sampled` beside it gives none); its sampling decision only where no
                // other header made one.
                if out.parent.is_none() {
                    if let Some((trace_id, span_id, short)) = b3.ids {
                        out.parent = Some(Parent { trace_id, span_id });
                        out.formats.b3_short_trace_id = short;
                    }
                    if out.sampled.is_none() && !out.debug {
                        out.sampled = b3.sampled;
                        out.debug = b3.debug;
                    }
                }
            }
            None => out.malformed = true,
        }
    }
    out
}

/// `version-traceid-spanid-flags` → (trace id, span id, flags).
pub fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, u8)> {
    if value.len() < 55 {
        return None;
    }
    let version = hex_byte(&value[0..2])?;
    match version {
        0xff => return None,
        0 if value.len() != 55 => return None,
        // A future version may append fields, after a `-`.
        _ if value.len() > 55 && value[55] != b'-' => return None,
        _ => {}
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = TraceId(hex_array::<16>(&value[3..35])?);
    let span_id = SpanId(hex_array::<8>(&value[36..52])?);
    let flags = hex_byte(&value[53..55])?;
    if trace_id.0 == [0; 16] || span_id.0 == [0; 8] {
        return None;
    }
    Some((trace_id, span_id, flags))
}

/// Whether the `tracestate` headers may travel on: visible ASCII, at most 32 members in all.
fn tracestate_acceptable(headers: &HeaderMap) -> bool {
    let mut members = 0;
    for value in headers.get_all(TRACESTATE) {
        let bytes = value.as_bytes();
        if !bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
            return false;
        }
        members += bytes
            .split(|b| *b == b',')
            .filter(|m| m.iter().any(|b| *b != b' ' && *b != b'\t'))
            .count();
    }
    members <= TRACESTATE_MAX_MEMBERS
}

/// A B3 trace id: 16 or 32 lowercase hex digits, not all zero. `true` when 64-bit.
fn parse_b3_trace_id(value: &[u8]) -> Option<(TraceId, bool)> {
    let mut id = [0u8; 16];
    let short = match value.len() {
        16 => {
            id[8..].copy_from_slice(&hex_array::<8>(value)?);
            true
        }
        32 => {
            id = hex_array::<16>(value)?;
            false
        }
        _ => return None,
    };
    (id != [0; 16]).then_some((TraceId(id), short))
}

/// A span id: 16 lowercase hex digits, not all zero.
fn parse_span_id(value: &[u8]) -> Option<SpanId> {
    if value.len() != 16 {
        return None;
    }
    let id = hex_array::<8>(value)?;
    (id != [0; 8]).then_some(SpanId(id))
}

/// A parsed single `b3` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct B3Single {
    ids: Option<(TraceId, SpanId, bool)>,
    sampled: Option<bool>,
    debug: bool,
}

/// `b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]` or `b3: {sampling}`.
pub(crate) fn parse_b3_single(value: &[u8]) -> Option<B3Single> {
    let sampling = |s: &[u8]| match s {
        b"1" => Some((Some(true), false)),
        b"0" => Some((Some(false), false)),
        b"d" => Some((Some(true), true)),
        _ => None,
    };
    let mut fields = value.split(|b| *b == b'-');
    let first = fields.next()?;
    let Some(second) = fields.next() else {
        let (sampled, debug) = sampling(first)?;
        return Some(B3Single {
            ids: None,
            sampled,
            debug,
        });
    };
    let (trace_id, short) = parse_b3_trace_id(first)?;
    let span_id = parse_span_id(second)?;
    let (sampled, debug) = match fields.next() {
        None => (None, false),
        Some(s) => sampling(s)?,
    };
    if let Some(parent) = fields.next() {
        parse_span_id(parent)?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(B3Single {
        ids: Some((trace_id, span_id, short)),
        sampled,
        debug,
    })
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    Some(hex_digit(pair[0])? << 4 | hex_digit(pair[1])?)
}

fn hex_array<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    if hex.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = hex_byte(&hex[2 * i..2 * i + 2])?;
    }
    Some(out)
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// The context this sidecar sends on: its own span as the caller's parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    /// The trace.
    pub trace_id: TraceId,
    /// Our span.
    pub span_id: SpanId,
    /// Our span's parent (B3 `parentspanid`), if any.
    pub parent_span_id: Option<SpanId>,
    /// The sampling decision.
    pub sampled: bool,
    /// B3 debug.
    pub debug: bool,
}

impl Outgoing {
    /// `00-{trace}-{span}-{flags}`.
    pub fn traceparent(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[0..2].copy_from_slice(b"00");
        write_hex(&mut out[3..35], &self.trace_id.0);
        write_hex(&mut out[36..52], &self.span_id.0);
        out[53..55].copy_from_slice(if self.sampled { b"01" } else { b"00" });
        out
    }

    /// The trace id in hex, 16 digits when `short` (B3 64-bit ids), else 32.
    fn trace_hex(&self, short: bool) -> ([u8; 32], usize) {
        let mut out = [0u8; 32];
        write_hex(&mut out, &self.trace_id.0);
        // 64 bits only where they hold the whole id: a 128-bit id is never cut in half.
        if short && self.trace_id.0[..8] == [0; 8] {
            let mut shifted = [0u8; 32];
            shifted[..16].copy_from_slice(&out[16..]);
            (shifted, 16)
        } else {
            (out, 32)
        }
    }

    /// Writes the context into `headers`: `traceparent` always (`tracestate` kept only when
    /// `tracestate_ok`), B3 multi and single as `formats` say. Replaces whatever was there.
    pub fn inject(&self, headers: &mut HeaderMap, formats: Formats, tracestate_ok: bool) {
        let set = |headers: &mut HeaderMap, name: HeaderName, bytes: &[u8]| {
            if let Ok(value) = HeaderValue::from_bytes(bytes) {
                headers.insert(name, value);
            }
        };
        set(headers, TRACEPARENT, &self.traceparent());
        if !tracestate_ok {
            headers.remove(TRACESTATE);
        }
        let short = formats.b3_short_trace_id;
        let mut span = [0u8; 16];
        write_hex(&mut span, &self.span_id.0);
        if formats.b3_multi {
            let (trace, len) = self.trace_hex(short);
            set(headers, X_B3_TRACEID, &trace[..len]);
            set(headers, X_B3_SPANID, &span);
            match self.parent_span_id {
                Some(parent) => {
                    let mut hex = [0u8; 16];
                    write_hex(&mut hex, &parent.0);
                    set(headers, X_B3_PARENTSPANID, &hex);
                }
                None => {
                    headers.remove(X_B3_PARENTSPANID);
                }
            }
            if self.debug {
                // Debug implies sampled; B3 says not to send both.
                headers.remove(X_B3_SAMPLED);
                headers.insert(X_B3_FLAGS, HeaderValue::from_static("1"));
            } else {
                headers.remove(X_B3_FLAGS);
                let sampled = if self.sampled { "1" } else { "0" };
                headers.insert(X_B3_SAMPLED, HeaderValue::from_static(sampled));
            }
        }
        if formats.b3_single {
            let (trace, len) = self.trace_hex(short);
            let mut out = [0u8; 32 + 1 + 16 + 2 + 1 + 16];
            let mut at = 0;
            let mut push = |bytes: &[u8]| {
                out[at..at + bytes.len()].copy_from_slice(bytes);
                at += bytes.len();
            };
            push(&trace[..len]);
            push(b"-");
            push(&span);
            push(match (self.debug, self.sampled) {
                (true, _) => b"-d",
                (false, true) => b"-1",
                (false, false) => b"-0",
            });
            if let Some(parent) = self.parent_span_id {
                let mut hex = [0u8; 16];
                write_hex(&mut hex, &parent.0);
                push(b"-");
                push(&hex);
            }
            set(headers, B3, &out[..at]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    fn hex16(s: &str) -> [u8; 16] {
        hex_array::<16>(s.as_bytes()).unwrap()
    }

    #[test]
    fn valid_traceparent_is_read() {
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let (trace, span, flags) = parse_traceparent(tp.as_bytes()).unwrap();
        assert_eq!(trace.0, hex16(TRACE));
        assert_eq!(span.0, hex_array::<8>(SPAN.as_bytes()).unwrap());
        assert_eq!(flags, 1);
        let e = extract(&headers(&[("traceparent", &tp), ("tracestate", "a=1,b=2")]));
        assert_eq!(e.sampled, Some(true));
        assert!(e.tracestate_ok && !e.malformed);
        assert_eq!(e.parent.unwrap().trace_id.0, hex16(TRACE));
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        let cases = [
            String::new(),
            format!("00-{TRACE}-{SPAN}-0"),   // short flags
            format!("00-{TRACE}-{SPAN}-011"), // version 00 longer than 55
            format!("00-{TRACE}0-{SPAN}-01"), // long trace id
            format!("00-{}-{SPAN}-01", &TRACE[1..]),
            format!("00-{}-{SPAN}-01", "0".repeat(32)), // zero trace id
            format!("00-{TRACE}-{}-01", "0".repeat(16)), // zero span id
            format!("ff-{TRACE}-{SPAN}-01"),            // forbidden version
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{}-01", SPAN.to_uppercase()),
            format!("0A-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-0g"),
            format!("00_{TRACE}_{SPAN}_01"),
            format!("01-{TRACE}-{SPAN}-01x"), // future version: extra fields need a dash
            format!("00-{TRACE}-{SPAN}-01-"),
        ];
        for case in &cases {
            assert_eq!(parse_traceparent(case.as_bytes()), None, "{case:?}");
            let e = extract(&headers(&[("traceparent", case), ("tracestate", "a=1")]));
            assert!(
                e.malformed && e.parent.is_none() && !e.tracestate_ok,
                "{case:?}"
            );
        }
    }

    #[test]
    fn future_versions_keep_the_known_fields() {
        let tp = format!("cc-{TRACE}-{SPAN}-09-what-ever");
        let (trace, _, flags) = parse_traceparent(tp.as_bytes()).unwrap();
        assert_eq!(trace.0, hex16(TRACE));
        assert_eq!(flags & 1, 1);
        assert!(parse_traceparent(format!("cc-{TRACE}-{SPAN}-00").as_bytes()).is_some());
    }

    #[test]
    fn two_traceparents_are_malformed() {
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let e = extract(&headers(&[("traceparent", &tp), ("traceparent", &tp)]));
        assert!(e.malformed && e.parent.is_none());
    }

    #[test]
    fn tracestate_limits() {
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        let e = extract(&headers(&[("traceparent", &tp), ("tracestate", &many)]));
        assert!(!e.tracestate_ok && e.malformed && e.parent.is_some());
        let e = extract(&headers(&[("tracestate", "a=1")]));
        assert!(e.malformed, "tracestate without traceparent is dropped");
    }

    #[test]
    fn b3_multi_is_read() {
        let e = extract(&headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-parentspanid", "0000000000000001"),
            ("x-b3-sampled", "1"),
        ]));
        assert!(e.formats.b3_multi && !e.malformed && !e.formats.b3_short_trace_id);
        assert_eq!(e.sampled, Some(true));
        assert_eq!(e.parent.unwrap().trace_id.0, hex16(TRACE));

        let e = extract(&headers(&[
            ("x-b3-traceid", &TRACE[16..]),
            ("x-b3-spanid", SPAN),
            ("x-b3-flags", "1"),
        ]));
        assert!(e.formats.b3_short_trace_id && e.debug);
        assert_eq!(e.sampled, Some(true));
        let mut expected = [0u8; 16];
        expected[8..].copy_from_slice(&hex16(TRACE)[8..]);
        assert_eq!(e.parent.unwrap().trace_id.0, expected);

        let e = extract(&headers(&[("x-b3-sampled", "0")]));
        assert_eq!(
            (e.parent, e.sampled, e.malformed),
            (None, Some(false), false)
        );
    }

    #[test]
    fn malformed_b3_is_refused() {
        for pairs in [
            &[("x-b3-traceid", TRACE)][..],
            &[("x-b3-traceid", &TRACE[1..]), ("x-b3-spanid", SPAN)],
            &[("x-b3-traceid", "0000000000000000"), ("x-b3-spanid", SPAN)],
            &[("x-b3-traceid", TRACE), ("x-b3-spanid", "00F067AA0BA902B7")],
            &[
                ("x-b3-traceid", TRACE),
                ("x-b3-spanid", SPAN),
                ("x-b3-sampled", "yes"),
            ],
            &[
                ("x-b3-traceid", TRACE),
                ("x-b3-spanid", SPAN),
                ("x-b3-flags", "2"),
            ],
            &[("b3", "1-2")],
            &[("b3", "x")],
            &[("b3", &format!("{TRACE}-{SPAN}-2"))],
            &[("b3", &format!("{TRACE}-{SPAN}-1-{SPAN}-extra"))],
        ] {
            let e = extract(&headers(pairs));
            assert!(e.malformed && e.parent.is_none(), "{pairs:?}");
        }
    }

    #[test]
    fn b3_single_is_read() {
        let e = extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}-d-{SPAN}"))]));
        assert!(e.formats.b3_single && e.debug && !e.malformed);
        assert_eq!(e.sampled, Some(true));
        let e = extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}"))]));
        assert_eq!(e.sampled, None);
        assert!(e.parent.is_some());
        let e = extract(&headers(&[("b3", "0")]));
        assert_eq!((e.parent, e.sampled), (None, Some(false)));
        // A sampling-only multi header beside it does not hide its ids.
        let e = extract(&headers(&[
            ("x-b3-sampled", "1"),
            ("b3", &format!("{TRACE}-{SPAN}-0")),
        ]));
        assert_eq!(e.parent.unwrap().trace_id.0, hex16(TRACE));
        assert_eq!(e.sampled, Some(true), "the multi header decided first");
    }

    #[test]
    fn w3c_wins_over_b3() {
        let tp = format!("00-{TRACE}-{SPAN}-00");
        let e = extract(&headers(&[
            ("traceparent", &tp),
            ("x-b3-traceid", "1111111111111111"),
            ("x-b3-spanid", "2222222222222222"),
            ("x-b3-sampled", "1"),
        ]));
        assert_eq!(e.parent.unwrap().trace_id.0, hex16(TRACE));
        assert_eq!(e.sampled, Some(false));
        assert!(e.formats.b3_multi);
        // The B3 headers sent on carry the winning 128-bit id whole, not its low half.
        assert!(!e.formats.b3_short_trace_id);
        let out = Outgoing {
            trace_id: e.parent.unwrap().trace_id,
            span_id: SpanId([1; 8]),
            parent_span_id: None,
            sampled: false,
            debug: false,
        };
        let mut h = HeaderMap::new();
        out.inject(&mut h, e.formats, false);
        assert_eq!(h["x-b3-traceid"], TRACE);
    }

    #[test]
    fn a_128_bit_trace_id_is_never_written_in_64_bits() {
        let out = Outgoing {
            trace_id: TraceId(hex16(TRACE)),
            span_id: SpanId([1; 8]),
            parent_span_id: None,
            sampled: false,
            debug: false,
        };
        let formats = Formats {
            b3_multi: true,
            b3_short_trace_id: true,
            ..Formats::default()
        };
        let mut h = HeaderMap::new();
        out.inject(&mut h, formats, false);
        assert_eq!(h["x-b3-traceid"], TRACE);
    }

    #[test]
    fn inject_writes_every_received_format() {
        let out = Outgoing {
            trace_id: TraceId(hex16(TRACE)),
            span_id: SpanId([1, 2, 3, 4, 5, 6, 7, 8]),
            parent_span_id: Some(SpanId([0xaa; 8])),
            sampled: true,
            debug: false,
        };
        let mut h = headers(&[("tracestate", "a=1"), ("x-b3-flags", "0")]);
        let formats = Formats {
            b3_multi: true,
            b3_single: true,
            b3_short_trace_id: false,
        };
        out.inject(&mut h, formats, true);
        assert_eq!(h["traceparent"], format!("00-{TRACE}-0102030405060708-01"));
        assert_eq!(h["tracestate"], "a=1");
        assert_eq!(h["x-b3-traceid"], TRACE);
        assert_eq!(h["x-b3-spanid"], "0102030405060708");
        assert_eq!(h["x-b3-parentspanid"], "aaaaaaaaaaaaaaaa");
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(!h.contains_key("x-b3-flags"));
        assert_eq!(
            h["b3"],
            format!("{TRACE}-0102030405060708-1-aaaaaaaaaaaaaaaa")
        );
        let parsed = extract(&h);
        assert_eq!(parsed.parent.unwrap().span_id, out.span_id);

        // A 64-bit B3 trace id (its high half zero) is answered in 64 bits.
        let mut h = HeaderMap::new();
        let mut short_id = [0; 16];
        short_id[8..].copy_from_slice(&hex16(TRACE)[8..]);
        let short = Outgoing {
            trace_id: TraceId(short_id),
            debug: true,
            parent_span_id: None,
            ..out
        };
        let formats = Formats {
            b3_short_trace_id: true,
            ..formats
        };
        short.inject(&mut h, formats, false);
        assert_eq!(h["x-b3-traceid"], &TRACE[16..]);
        assert_eq!(h["x-b3-flags"], "1");
        assert!(!h.contains_key("x-b3-sampled") && !h.contains_key("tracestate"));
        assert_eq!(h["b3"], format!("{}-0102030405060708-d", &TRACE[16..]));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let _ = parse_traceparent(&bytes);
            let _ = parse_b3_single(&bytes);
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                let mut h = HeaderMap::new();
                h.insert(TRACEPARENT, value.clone());
                h.insert(B3, value.clone());
                h.insert(X_B3_TRACEID, value);
                let _ = extract(&h);
            }
        }

        #[test]
        fn written_traceparents_parse_back(trace in proptest::prelude::any::<[u8; 16]>(), span in proptest::prelude::any::<[u8; 8]>(), sampled: bool) {
            proptest::prop_assume!(trace != [0; 16] && span != [0; 8]);
            let out = Outgoing { trace_id: TraceId(trace), span_id: SpanId(span), parent_span_id: None, sampled, debug: false };
            let (t, s, f) = parse_traceparent(&out.traceparent()).unwrap();
            proptest::prop_assert_eq!((t.0, s.0, f & 1 == 1), (trace, span, sampled));
        }
    }
}
