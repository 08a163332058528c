//! A raw HTTP/2 client for peers no library would be: exact frames, hand-built HPACK blocks
//! (literals only, no Huffman), and every frame the server sends, read back with a deadline.
//!
//! [`RawH2::connect`] announces `SETTINGS_HEADER_TABLE_SIZE = 0`, so the server's encoder keeps
//! no dynamic table: every response's `:status` is then a static index (200, 204, 206, 304,
//! 400, 404, 500) or a literal, possibly Huffman-coded, which [`Frame::status`] decodes
//! without tracking the connection's HPACK state.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// Frame types (RFC 9113 §6).
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0x0;
    /// HEADERS.
    pub const HEADERS: u8 = 0x1;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 0x3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 0x4;
    /// PING.
    pub const PING: u8 = 0x6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 0x7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 0x8;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    /// END_STREAM (DATA, HEADERS).
    pub const END_STREAM: u8 = 0x1;
    /// ACK (SETTINGS, PING).
    pub const ACK: u8 = 0x1;
    /// END_HEADERS (HEADERS, CONTINUATION).
    pub const END_HEADERS: u8 = 0x4;
    /// PADDED (DATA, HEADERS).
    pub const PADDED: u8 = 0x8;
    /// PRIORITY (HEADERS).
    pub const PRIORITY: u8 = 0x20;
}

/// Error codes (RFC 9113 §7).
pub mod code {
    /// NO_ERROR.
    pub const NO_ERROR: u32 = 0x0;
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 0x1;
    /// COMPRESSION_ERROR.
    pub const COMPRESSION_ERROR: u32 = 0x9;
    /// REFUSED_STREAM.
    pub const REFUSED_STREAM: u32 = 0x7;
    /// CANCEL.
    pub const CANCEL: u32 = 0x8;
    /// ENHANCE_YOUR_CALM.
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// SETTINGS_HEADER_TABLE_SIZE.
pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
/// SETTINGS_ENABLE_PUSH.
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
/// SETTINGS_INITIAL_WINDOW_SIZE.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

/// One frame as read from (or written to) the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Type ([`kind`]).
    pub kind: u8,
    /// Flags ([`flag`]).
    pub flags: u8,
    /// Stream identifier.
    pub stream: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The wire bytes of a frame. Panics on a payload over 2^24 - 1 bytes (a test's mistake).
    pub fn encode(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l < 1 << 24)
            .expect("a frame payload under 16 MiB");
        let mut frame = Vec::with_capacity(9 + payload.len());
        frame.extend_from_slice(&length.to_be_bytes()[1..]);
        frame.extend_from_slice(&[kind, flags]);
        frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// The error code of a GOAWAY or RST_STREAM.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            kind::GOAWAY => 4,
            kind::RST_STREAM => 0,
            _ => return None,
        };
        let bytes = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }

    /// The last stream identifier of a GOAWAY.
    pub fn last_stream(&self) -> Option<u32> {
        if self.kind != kind::GOAWAY {
            return None;
        }
        let bytes = self.payload.get(..4)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?) & 0x7fff_ffff)
    }

    /// A GOAWAY's debug data as text.
    pub fn debug_data(&self) -> String {
        if self.kind != kind::GOAWAY {
            return String::new();
        }
        String::from_utf8_lossy(self.payload.get(8..).unwrap_or_default()).into_owned()
    }

    /// Whether a HEADERS or DATA frame ends its stream.
    pub fn ends_stream(&self) -> bool {
        matches!(self.kind, kind::HEADERS | kind::DATA) && self.flags & flag::END_STREAM != 0
    }

    /// The `:status` of a response HEADERS frame: the first field of its block, read as a static
    /// index or a literal with the `:status` name (plain or Huffman-coded digits). `None` for
    /// anything else (a dynamic-table reference: see the module doc).
    pub fn status(&self) -> Option<u16> {
        if self.kind != kind::HEADERS {
            return None;
        }
        let mut block = self.payload.as_slice();
        if self.flags & flag::PADDED != 0 {
            let pad = usize::from(*block.first()?);
            block = block.get(1..block.len().checked_sub(pad)?)?;
        }
        if self.flags & flag::PRIORITY != 0 {
            block = block.get(5..)?;
        }
        status_of_block(block)
    }
}

/// The `:status` at the head of an HPACK block (see [`Frame::status`]).
fn status_of_block(block: &[u8]) -> Option<u16> {
    let mut at = 0;
    // Dynamic table size updates (`001xxxxx`) come first.
    while block.get(at)? & 0xe0 == 0x20 {
        read_int(block, &mut at, 5)?;
    }
    let first = *block.get(at)?;
    let static_status = |index| match index {
        8 => Some(200),
        9 => Some(204),
        10 => Some(206),
        11 => Some(304),
        12 => Some(400),
        13 => Some(404),
        14 => Some(500),
        _ => None,
    };
    if first & 0x80 != 0 {
        return static_status(read_int(block, &mut at, 7)?);
    }
    // A literal: with incremental indexing (`01`, 6-bit name index), else without or never
    // indexed (`0000` / `0001`, 4-bit).
    let prefix = if first & 0xc0 == 0x40 { 6 } else { 4 };
    let name = read_int(block, &mut at, prefix)?;
    static_status(name)?;
    let huffman = block.get(at)? & 0x80 != 0;
    let length = read_int(block, &mut at, 7)?;
    let value = block.get(at..at + length)?;
    let digits = if huffman {
        huffman_digits(value)?
    } else {
        String::from_utf8(value.to_vec()).ok()?
    };
    digits.parse().ok()
}

/// An HPACK integer with an `prefix`-bit prefix at `block[*at]` (RFC 7541 §5.1).
fn read_int(block: &[u8], at: &mut usize, prefix: u32) -> Option<usize> {
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(*block.get(*at)?) & max;
    *at += 1;
    if value < max {
        return Some(value);
    }
    let mut shift = 0;
    loop {
        let byte = *block.get(*at)?;
        *at += 1;
        value = value.checked_add(usize::from(byte & 0x7f).checked_shl(shift)?)?;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some(value);
        }
        if shift > 28 {
            return None;
        }
    }
}

/// Decodes a Huffman-coded string of decimal digits (RFC 7541 Appendix B: `0`-`2` are the
/// 5-bit codes 0-2, `3`-`9` the 6-bit codes 0x19-0x1f); `None` for any other symbol.
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let total = bytes.len() * 8;
    let bit = |i: usize| (bytes[i / 8] >> (7 - i % 8)) & 1;
    let bits = |from: usize, n: usize| (from..from + n).fold(0u8, |v, i| v << 1 | bit(i));
    let mut out = String::new();
    let mut at = 0;
    loop {
        let left = total - at;
        // Padding: fewer than 8 bits, all ones (a prefix of EOS).
        if left < 8 && (at..total).all(|i| bit(i) == 1) {
            return Some(out);
        }
        if left < 5 {
            return None;
        }
        let five = bits(at, 5);
        if five <= 2 {
            out.push(char::from(b'0' + five));
            at += 5;
            continue;
        }
        if left < 6 {
            return None;
        }
        let six = bits(at, 6);
        if (0x19..=0x1f).contains(&six) {
            out.push(char::from(b'3' + (six - 0x19)));
            at += 6;
            continue;
        }
        return None;
    }
}

/// An HPACK header block built by hand: indexed fields and literals, never Huffman-coded.
#[derive(Debug, Clone, Default)]
pub struct HeaderBlock(Vec<u8>);

impl HeaderBlock {
    /// An empty block.
    pub fn new() -> Self {
        Self::default()
    }

    /// `:method GET`, `:scheme http`, `:path`, `:authority` (the four pseudo-headers of a GET).
    pub fn get(authority: &str, path: &str) -> Self {
        Self::new()
            .indexed(2)
            .indexed(6)
            .literal_name_index(4, path)
            .literal_name_index(1, authority)
    }

    /// A field from the static (1-61) or dynamic (62-) table.
    pub fn indexed(mut self, index: usize) -> Self {
        write_int(&mut self.0, 0x80, 7, index);
        self
    }

    /// A literal without indexing whose name is the static table's `index` (1 `:authority`,
    /// 2 `:method`, 4 `:path`, 6 `:scheme`, 32 `cookie`, 38 `host`, …).
    pub fn literal_name_index(mut self, index: usize, value: &str) -> Self {
        write_int(&mut self.0, 0x00, 4, index);
        write_string(&mut self.0, value.as_bytes());
        self
    }

    /// A literal without indexing with a literal name, sent as given (uppercase included).
    pub fn literal(mut self, name: &str, value: &str) -> Self {
        self.0.push(0x00);
        write_string(&mut self.0, name.as_bytes());
        write_string(&mut self.0, value.as_bytes());
        self
    }

    /// A literal with incremental indexing and a literal name: the decoder adds it to its
    /// dynamic table (index 62 once added, the newest entry).
    pub fn incremental(mut self, name: &str, value: &str) -> Self {
        self.0.push(0x40);
        write_string(&mut self.0, name.as_bytes());
        write_string(&mut self.0, value.as_bytes());
        self
    }

    /// A dynamic table size update.
    pub fn size_update(mut self, size: usize) -> Self {
        write_int(&mut self.0, 0x20, 5, size);
        self
    }

    /// The encoded block.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds no field.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn write_int(out: &mut Vec<u8>, high_bits: u8, prefix: u32, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(high_bits | value as u8);
        return;
    }
    out.push(high_bits | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

fn write_string(out: &mut Vec<u8>, bytes: &[u8]) {
    write_int(out, 0x00, 7, bytes.len());
    out.extend_from_slice(bytes);
}

/// How the server ended the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// A FIN (end of stream).
    Fin,
    /// A TCP reset (or another read error).
    Reset,
}

/// What a read with a deadline found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole frame.
    Frame(Frame),
    /// The connection ended (after every frame before it was returned).
    Closed(Closed),
    /// Nothing before the deadline.
    TimedOut,
}

/// How a request stream ended, as [`RawH2::response`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Response HEADERS with this `:status` (0 when [`Frame::status`] could not read it).
    Status(u16),
    /// RST_STREAM on the stream with this code.
    Reset(u32),
    /// A GOAWAY with an error code (not `NO_ERROR`) before any answer on the stream.
    GoAway(u32),
    /// The connection ended without an answer.
    Closed(Closed),
    /// Nothing before the deadline.
    TimedOut,
}

/// An HTTP/2 client on a raw socket: it sees every frame the server sends.
#[derive(Debug)]
pub struct RawH2 {
    stream: TcpStream,
    /// Bytes read but not yet returned as frames.
    buffer: Vec<u8>,
    /// Set once a read saw the end; frames still in `buffer` come first.
    closed: Option<Closed>,
}

impl RawH2 {
    /// The client connection preface.
    pub const PREFACE: &'static [u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// Connects and sends the preface with SETTINGS `HEADER_TABLE_SIZE = 0` (see the module
    /// doc). Panics if the connection fails.
    pub async fn connect(address: SocketAddr) -> Self {
        let stream = TcpStream::connect(address).await.expect("connect");
        Self::handshake(stream).await
    }

    /// [`RawH2::connect`] with a small socket receive buffer (`bytes`), for a client that
    /// stops reading: the server's writes then stall soon.
    pub async fn connect_small_receive_buffer(address: SocketAddr, bytes: u32) -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        let stream = socket.connect(address).await.expect("connect");
        Self::handshake(stream).await
    }

    async fn handshake(mut stream: TcpStream) -> Self {
        let mut hello = Self::PREFACE.to_vec();
        hello.extend_from_slice(&settings_frame(&[(SETTINGS_HEADER_TABLE_SIZE, 0)]));
        stream.write_all(&hello).await.expect("write the preface");
        Self {
            stream,
            buffer: Vec::new(),
            closed: None,
        }
    }

    /// Writes `bytes` (frames); an error means the server has closed or reset.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Writes one frame.
    pub async fn send_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        self.send(&Frame::encode(kind, flags, stream, payload))
            .await
    }

    /// HEADERS with END_HEADERS carrying `block`, with END_STREAM when `end_stream`.
    pub async fn headers(
        &mut self,
        id: u32,
        block: &HeaderBlock,
        end_stream: bool,
    ) -> std::io::Result<()> {
        let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
        self.send_frame(kind::HEADERS, flags, id, block.bytes())
            .await
    }

    /// HEADERS with END_STREAM but without END_HEADERS: the start of a header block that
    /// CONTINUATION frames must finish. Panics if the write fails.
    pub async fn headers_fragment(&mut self, id: u32, block: &HeaderBlock) {
        self.send_frame(kind::HEADERS, flag::END_STREAM, id, block.bytes())
            .await
            .expect("write HEADERS");
    }

    /// Opens stream `id` with a GET, ending the stream. Panics if the write fails.
    pub async fn get(&mut self, id: u32, authority: &str, path: &str) {
        self.headers(id, &HeaderBlock::get(authority, path), true)
            .await
            .expect("write HEADERS");
    }

    /// SETTINGS ACK (for the server's SETTINGS; a server may wait for it to apply them).
    pub async fn ack_settings(&mut self) -> std::io::Result<()> {
        self.send_frame(kind::SETTINGS, flag::ACK, 0, &[]).await
    }

    /// Reads the next frame, waiting at most until `until`. Cancel-safe: bytes read stay in
    /// the buffer.
    pub async fn next_frame(&mut self, until: Instant) -> Event {
        loop {
            if let Some(frame) = self.parse() {
                return Event::Frame(frame);
            }
            if let Some(closed) = self.closed {
                return Event::Closed(closed);
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(until, self.stream.read(&mut chunk)).await {
                Err(_) => return Event::TimedOut,
                Ok(Ok(0)) => self.closed = Some(Closed::Fin),
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
                Ok(Err(_)) => self.closed = Some(Closed::Reset),
            }
        }
    }

    /// Reads until stream `id` gets its answer (response HEADERS or RST_STREAM), the server
    /// sends a GOAWAY with an error code, the connection ends, or `deadline` passes.
    /// SETTINGS and PINGs are acknowledged on the way.
    pub async fn response(&mut self, id: u32, deadline: Duration) -> Outcome {
        let until = Instant::now() + deadline;
        loop {
            let frame = match self.next_frame(until).await {
                Event::Frame(frame) => frame,
                Event::Closed(closed) => return Outcome::Closed(closed),
                Event::TimedOut => return Outcome::TimedOut,
            };
            self.acknowledge(&frame).await;
            match frame.kind {
                kind::HEADERS if frame.stream == id => {
                    return Outcome::Status(frame.status().unwrap_or(0))
                }
                kind::RST_STREAM if frame.stream == id => {
                    return Outcome::Reset(frame.error_code().unwrap_or(u32::MAX))
                }
                kind::GOAWAY => match frame.error_code() {
                    Some(code::NO_ERROR) | None => {}
                    Some(code) => return Outcome::GoAway(code),
                },
                _ => {}
            }
        }
    }

    /// Reads every frame until the connection ends; `None` if it is still open at `deadline`.
    /// SETTINGS and PINGs are acknowledged on the way.
    pub async fn frames_until_close(&mut self, deadline: Duration) -> Option<(Vec<Frame>, Closed)> {
        let until = Instant::now() + deadline;
        let mut frames = Vec::new();
        loop {
            match self.next_frame(until).await {
                Event::Frame(frame) => {
                    self.acknowledge(&frame).await;
                    frames.push(frame);
                }
                Event::Closed(closed) => return Some((frames, closed)),
                Event::TimedOut => return None,
            }
        }
    }

    /// Reads frames (acknowledging SETTINGS and PINGs) until the server closes; whether a
    /// GOAWAY came before. Panics if the connection is still open after `deadline`.
    pub async fn goaway_before_close(&mut self, deadline: Duration) -> bool {
        let Some((frames, _)) = self.frames_until_close(deadline).await else {
            panic!("the connection is still open after {deadline:?}");
        };
        frames.iter().any(|f| f.kind == kind::GOAWAY)
    }

    /// Writes `bytes` while reading whatever the server sends meanwhile (kept for
    /// [`RawH2::next_frame`]), so that a server answering a flood never blocks on this client.
    /// Stops when everything is written, a write fails (the server closed), the connection
    /// ends, or at `until`; returns how many bytes were written.
    pub async fn flood(&mut self, bytes: &[u8], until: Instant) -> usize {
        let mut written = 0;
        let mut chunk = vec![0u8; 64 * 1024];
        while written < bytes.len() && self.closed.is_none() {
            let end = (written + 64 * 1024).min(bytes.len());
            let (mut read, mut write) = self.stream.split();
            // `write` and `read` are cancel-safe: a branch that loses moved no bytes.
            tokio::select! {
                wrote = write.write(&bytes[written..end]) => match wrote {
                    // The server has closed or reset; what it sent before is still to be
                    // read (a reset's data stays readable ahead of the error).
                    Ok(0) | Err(_) => break,
                    Ok(n) => written += n,
                },
                got = read.read(&mut chunk) => match got {
                    Ok(0) => self.closed = Some(Closed::Fin),
                    Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                    Err(_) => self.closed = Some(Closed::Reset),
                },
                () = tokio::time::sleep_until(until) => break,
            }
        }
        written
    }

    /// Writes `bytes` over and over without ever reading, until a write fails (the server
    /// closed or reset: `true`) or `deadline` passes (`false`). Returns also the bytes written.
    pub async fn flood_without_reading(
        &mut self,
        bytes: &[u8],
        deadline: Duration,
    ) -> (bool, usize) {
        let until = Instant::now() + deadline;
        let mut written = 0;
        loop {
            match tokio::time::timeout_at(until, self.stream.write_all(bytes)).await {
                Err(_) => return (false, written),
                Ok(Err(_)) => return (true, written),
                Ok(Ok(())) => written += bytes.len(),
            }
        }
    }

    async fn acknowledge(&mut self, frame: &Frame) {
        let answer = match frame.kind {
            kind::SETTINGS if frame.flags & flag::ACK == 0 => {
                Frame::encode(kind::SETTINGS, flag::ACK, 0, &[])
            }
            kind::PING if frame.flags & flag::ACK == 0 => {
                Frame::encode(kind::PING, flag::ACK, 0, &frame.payload)
            }
            _ => return,
        };
        // The server may have closed already; the next read says so.
        let _ = self.stream.write_all(&answer).await;
    }

    fn parse(&mut self) -> Option<Frame> {
        let head = self.buffer.get(..9)?;
        let length = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        if self.buffer.len() < 9 + length {
            return None;
        }
        let frame = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload: self.buffer[9..9 + length].to_vec(),
        };
        self.buffer.drain(..9 + length);
        Some(frame)
    }
}

/// A SETTINGS frame with these `(identifier, value)` pairs.
pub fn settings_frame(settings: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(settings.len() * 6);
    for (id, value) in settings {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    Frame::encode(kind::SETTINGS, 0, 0, &payload)
}

/// An RST_STREAM frame.
pub fn rst_stream_frame(id: u32, error: u32) -> Vec<u8> {
    Frame::encode(kind::RST_STREAM, 0, id, &error.to_be_bytes())
}

/// A PING frame (not an ACK).
pub fn ping_frame(payload: [u8; 8]) -> Vec<u8> {
    Frame::encode(kind::PING, 0, 0, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip() {
        for (prefix, value) in [(7, 0), (7, 126), (7, 127), (5, 31), (5, 1337), (4, 70_000)] {
            let mut out = Vec::new();
            write_int(&mut out, 0, prefix, value);
            let mut at = 0;
            assert_eq!(read_int(&out, &mut at, prefix), Some(value));
            assert_eq!(at, out.len());
        }
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        write_int(&mut out, 0, 5, 1337);
        assert_eq!(out, [31, 154, 10]);
    }

    #[test]
    fn statuses() {
        let headers = |block: &[u8]| Frame {
            kind: kind::HEADERS,
            flags: flag::END_HEADERS,
            stream: 1,
            payload: block.to_vec(),
        };
        assert_eq!(headers(&[0x88]).status(), Some(200));
        assert_eq!(headers(&[0x20, 0x8d]).status(), Some(404));
        // Literal, incremental indexing, name :status (8), "431" plain.
        assert_eq!(headers(&[0x48, 0x03, b'4', b'3', b'1']).status(), Some(431));
        // RFC 7541 C.6.1: "302" Huffman-coded is 0x64 0x02.
        assert_eq!(headers(&[0x48, 0x82, 0x64, 0x02]).status(), Some(302));
        // "431": 011010 011001 00001 + 1111111 padding.
        assert_eq!(headers(&[0x08, 0x83, 0x69, 0x90, 0xff]).status(), Some(431));
        assert_eq!(headers(&[0xbe]).status(), None, "a dynamic reference");
    }
}
