//! HTTP/2 frame boundaries in a byte stream that is read or written in pieces of any size.
//!
//! hyper tells neither the frames a peer sends nor the ones h2 sends on its own. Where the
//! sidecar needs one of those facts (an upstream's `MAX_CONCURRENT_STREAMS`, the streams h2
//! resets on a downstream connection), a wrapper around the connection's I/O feeds the bytes
//! that pass to a [`FrameCursor`], which follows the 9-byte frame headers (RFC 9113 §4.1) and
//! hands a [`FrameVisitor`] the payloads it asks for; all others are passed over without
//! being copied. A piece may end anywhere: inside a header, inside a payload, between frames.
//!
//! The cursor trusts the length of each frame header: it is only ever fed a stream that is
//! HTTP/2 frames from its first byte (the server's frames from its SETTINGS on; a peer's once
//! its connection preface is past), and a peer whose lengths are nonsense has its connection
//! ended by h2 anyway.

/// The header of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length in bytes (24 bits).
    pub length: usize,
    /// Frame type (`DATA` 0x0, `HEADERS` 0x1, `RST_STREAM` 0x3, `SETTINGS` 0x4, …).
    pub kind: u8,
    /// Type-specific flags.
    pub flags: u8,
    /// Stream identifier (the reserved bit cleared); 0 for the connection.
    pub stream: u32,
}

/// Frame type `RST_STREAM` (RFC 9113 §6.4).
pub const RST_STREAM: u8 = 0x3;
/// Frame type `SETTINGS` (RFC 9113 §6.5).
pub const SETTINGS: u8 = 0x4;

/// What a [`FrameCursor`] tells as it passes over frames.
pub trait FrameVisitor {
    /// A frame's header is complete. Returns whether its payload is wanted: if so, it is
    /// handed to [`FrameVisitor::payload`] as it passes; if not, it is passed over.
    fn header(&mut self, header: &FrameHeader) -> bool;
    /// The next piece of a wanted payload, in order.
    fn payload(&mut self, bytes: &[u8]);
    /// The frame is complete (all of its payload has passed; at once for an empty one).
    fn end(&mut self, header: &FrameHeader);
}

/// Where frames begin and end in the bytes fed so far.
#[derive(Debug, Default)]
pub struct FrameCursor {
    /// The next frame's header, as much of it as has passed.
    header: [u8; 9],
    header_len: usize,
    /// The frame whose payload is passing, and how much of it is still to come.
    current: Option<Current>,
}

#[derive(Debug)]
struct Current {
    header: FrameHeader,
    remaining: usize,
    wanted: bool,
}

impl FrameCursor {
    /// A cursor at the start of a frame.
    pub fn new() -> Self {
        Self::default()
    }

    /// Follows the frames through `bytes`, the next piece of the stream, telling `visitor`.
    pub fn feed(&mut self, mut bytes: &[u8], visitor: &mut impl FrameVisitor) {
        while !bytes.is_empty() {
            if let Some(current) = &mut self.current {
                let n = current.remaining.min(bytes.len());
                if current.wanted {
                    visitor.payload(&bytes[..n]);
                }
                current.remaining -= n;
                bytes = &bytes[n..];
                if current.remaining == 0 {
                    let header = current.header;
                    self.current = None;
                    visitor.end(&header);
                }
                continue;
            }
            let n = (9 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len < 9 {
                return;
            }
            self.header_len = 0;
            let h = &self.header;
            let header = FrameHeader {
                length: usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]),
                kind: h[3],
                flags: h[4],
                stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
            };
            let wanted = visitor.header(&header);
            if header.length == 0 {
                visitor.end(&header);
            } else {
                self.current = Some(Current {
                    header,
                    remaining: header.length,
                    wanted,
                });
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A frame of `kind` on `stream` with `payload`.
    pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = payload.len();
        let mut frame = vec![(length >> 16) as u8, (length >> 8) as u8, length as u8];
        frame.extend_from_slice(&[kind, flags]);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// Records what the cursor tells: each frame's header and its wanted payload.
    #[derive(Default)]
    struct Record {
        open: Option<(FrameHeader, Vec<u8>)>,
        frames: Vec<(FrameHeader, Vec<u8>)>,
    }

    impl FrameVisitor for Record {
        fn header(&mut self, header: &FrameHeader) -> bool {
            assert!(self.open.is_none(), "a header inside a frame");
            self.open = Some((*header, Vec::new()));
            // Only odd types' payloads are wanted: the others must be passed over.
            header.kind % 2 == 1
        }

        fn payload(&mut self, bytes: &[u8]) {
            let (header, payload) = self.open.as_mut().expect("a payload outside a frame");
            assert_eq!(header.kind % 2, 1, "an unwanted payload was handed over");
            payload.extend_from_slice(bytes);
        }

        fn end(&mut self, header: &FrameHeader) {
            let open = self.open.take().expect("an end without a header");
            assert_eq!(open.0, *header);
            self.frames.push(open);
        }
    }

    #[test]
    fn frames_are_found_whatever_the_pieces() {
        let frames = [
            frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]),
            frame(0x1, 0x4, 1, b"a header block"),
            frame(0x0, 0x1, 1, &[0xff; 20_000]),
            frame(0x6, 0x1, 0, &[]),
            frame(RST_STREAM, 0, 0x8000_0003, &[0, 0, 0, 7]),
            frame(0x8, 0, 5, &[0, 1, 0, 0]),
        ];
        let stream: Vec<u8> = frames.concat();
        for piece in [1, 2, 5, 9, 10, 13, 4096, stream.len()] {
            let mut cursor = FrameCursor::new();
            let mut record = Record::default();
            for bytes in stream.chunks(piece) {
                cursor.feed(bytes, &mut record);
            }
            assert!(record.open.is_none(), "pieces of {piece}");
            let found: Vec<_> = record
                .frames
                .iter()
                .map(|(h, payload)| (h.kind, h.flags, h.stream, h.length, payload.len()))
                .collect();
            assert_eq!(
                found,
                [
                    (SETTINGS, 0, 0, 6, 0),
                    (0x1, 0x4, 1, 14, 14),
                    (0x0, 0x1, 1, 20_000, 0),
                    (0x6, 0x1, 0, 0, 0),
                    // The reserved bit is not part of the stream id.
                    (RST_STREAM, 0, 3, 4, 4),
                    (0x8, 0, 5, 4, 0),
                ],
                "pieces of {piece}"
            );
            assert_eq!(record.frames[1].1, b"a header block");
            assert_eq!(record.frames[4].1, [0, 0, 0, 7]);
        }
    }
}
