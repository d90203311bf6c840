//! Length-checked framing of tagged protocol messages (`tag | int32 len | body`).
//!
//! A [`Frame`] keeps the whole message (tag and length included) as one `Bytes`, cut out of
//! the read buffer without copying; forwarding a frame writes those bytes as they are.

use bytes::{Buf, Bytes, BytesMut};

/// Smallest legal value of the length field: it counts itself.
const MIN_LEN: usize = 4;

/// Why a stream of frames cannot be read any further. Each is a protocol violation (08P01).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {len} for message type \"{tag}\"", tag = char::from(*.tag))]
    BadLength { tag: u8, len: i32 },
    #[error("message of type \"{tag}\" is {len} bytes, more than the limit of {max} bytes", tag = char::from(*.tag))]
    TooLarge { tag: u8, len: usize, max: usize },
}

/// One complete protocol message, tag and length included.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    raw: Bytes,
}

impl Frame {
    /// Wraps bytes that are known to hold exactly one well-formed message.
    pub fn from_raw(raw: Bytes) -> Frame {
        debug_assert!(raw.len() >= 5);
        Frame { raw }
    }

    /// The message type byte.
    #[inline]
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    /// The body after the length field.
    #[inline]
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }

    /// The body as a cheap slice of the same buffer.
    pub fn body_bytes(&self) -> Bytes {
        self.raw.slice(5..)
    }

    /// The whole message as it arrived.
    #[inline]
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// Total length on the wire.
    #[inline]
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// One whole message, owned ([`Frame`]) or borrowed from a read buffer ([`Msg`]): what the
/// readers of backend messages take.
pub trait Message {
    /// The whole message as it arrived.
    fn message_bytes(&self) -> &[u8];

    /// The message type byte.
    #[inline]
    fn message_tag(&self) -> u8 {
        self.message_bytes()[0]
    }

    /// The body after the length field.
    #[inline]
    fn message_body(&self) -> &[u8] {
        &self.message_bytes()[5..]
    }
}

impl Message for Frame {
    #[inline]
    fn message_bytes(&self) -> &[u8] {
        &self.raw
    }
}

/// A whole message borrowed where it arrived: a server's answers are read and copied on to
/// the client from the read buffer, without being split off it.
#[derive(Clone, Copy)]
pub struct Msg<'a> {
    raw: &'a [u8],
}

impl<'a> Msg<'a> {
    /// The message type byte.
    #[inline]
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    /// The body after the length field.
    #[inline]
    pub fn body(&self) -> &'a [u8] {
        &self.raw[5..]
    }

    /// The whole message as it arrived.
    #[inline]
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
}

impl Message for Msg<'_> {
    #[inline]
    fn message_bytes(&self) -> &[u8] {
        self.raw
    }
}

impl Frame {
    /// The message, borrowed.
    #[inline]
    pub fn msg(&self) -> Msg<'_> {
        Msg { raw: &self.raw }
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Frame({:?}, {} bytes)",
            char::from(self.tag()),
            self.raw.len()
        )
    }
}

/// Cuts frames out of a read buffer.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_len: usize,
}

impl FrameDecoder {
    /// `max_len` bounds the length field of every message (tag excluded).
    pub fn new(max_len: usize) -> Self {
        FrameDecoder {
            max_len: max_len.max(MIN_LEN),
        }
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The length of the next whole message at the start of `buf` (read it with
    /// [`FrameDecoder::msg`], then advance past it), `None` when more bytes are needed;
    /// checked as [`FrameDecoder::decode`] checks it.
    #[inline]
    pub fn next_len(&self, buf: &mut BytesMut) -> Result<Option<usize>, FrameError> {
        let len = self.peek_len(buf);
        if let Ok(None) = len {
            if buf.len() >= 5 {
                // A message begun: room for the rest, so that the next read fills it.
                let total = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize + 1;
                buf.reserve(total - buf.len());
            }
        }
        len
    }

    /// [`FrameDecoder::next_len`] of a slice: reserves nothing.
    #[inline]
    pub fn peek_len(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let tag = buf[0];
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if len < MIN_LEN as i32 {
            return Err(FrameError::BadLength { tag, len });
        }
        let len = len as usize;
        if len > self.max_len {
            return Err(FrameError::TooLarge {
                tag,
                len,
                max: self.max_len,
            });
        }
        let total = len + 1;
        if buf.len() < total {
            return Ok(None);
        }
        Ok(Some(total))
    }

    /// The message of `len` bytes (from [`FrameDecoder::next_len`]) at the start of `buf`.
    #[inline]
    pub fn msg(buf: &[u8], len: usize) -> Msg<'_> {
        Msg { raw: &buf[..len] }
    }

    /// Returns the next whole frame, `None` when more bytes are needed. When a frame header
    /// has been seen but its body has not fully arrived, reserves room for the rest, so the
    /// caller's next read fills it; the reservation happens only after the length is checked.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        Ok(self.next_len(buf)?.map(|total| Frame {
            raw: buf.split_to(total).freeze(),
        }))
    }
}

/// A cursor over a message body that never reads past its end.
pub struct BodyReader<'a> {
    buf: &'a [u8],
}

/// A body that ended too soon or held something that is not allowed there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct Malformed(pub &'static str);

impl<'a> BodyReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        BodyReader { buf }
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn u8(&mut self) -> Result<u8, Malformed> {
        if self.buf.is_empty() {
            return Err(Malformed("message ended early"));
        }
        let v = self.buf[0];
        self.buf = &self.buf[1..];
        Ok(v)
    }

    pub fn i16(&mut self) -> Result<i16, Malformed> {
        if self.buf.len() < 2 {
            return Err(Malformed("message ended early"));
        }
        let v = (&self.buf[..2]).get_i16();
        self.buf = &self.buf[2..];
        Ok(v)
    }

    pub fn i32(&mut self) -> Result<i32, Malformed> {
        if self.buf.len() < 4 {
            return Err(Malformed("message ended early"));
        }
        let v = (&self.buf[..4]).get_i32();
        self.buf = &self.buf[4..];
        Ok(v)
    }

    /// A NUL-terminated string, without its terminator.
    pub fn cstr(&mut self) -> Result<&'a [u8], Malformed> {
        match memchr0(self.buf) {
            Some(i) => {
                let s = &self.buf[..i];
                self.buf = &self.buf[i + 1..];
                Ok(s)
            }
            None => Err(Malformed("string is not terminated")),
        }
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(Malformed("message ended early"));
        }
        let s = &self.buf[..n];
        self.buf = &self.buf[n..];
        Ok(s)
    }

    pub fn finish(&self) -> Result<(), Malformed> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Malformed("trailing bytes after the message"))
        }
    }
}

/// The terminator of a string, looked for on every Parse, Query and CommandComplete: an
/// empty string seen at once, a short one (a statement of a line, a command tag) 16 bytes at
/// a time with SSE2 (every x86-64 has it) or eight at a time in a register, a long one with
/// memchr (whose set-up costs more than the whole look at a short string).
#[inline]
fn memchr0(buf: &[u8]) -> Option<usize> {
    match buf.first() {
        // An empty name (the unnamed statement or portal): the commonest string of all.
        Some(0) => Some(0),
        None => None,
        Some(_) if buf.len() >= 128 => memchr::memchr(0, buf),
        #[cfg(target_arch = "x86_64")]
        Some(_) if buf.len() >= 16 => zero_in_blocks(buf),
        Some(_) => zero_in_words(buf),
    }
}

/// The first zero byte of 16 or more, 16 bytes at a time (the last block overlaps the one
/// before it).
#[cfg(target_arch = "x86_64")]
#[inline]
fn zero_in_blocks(buf: &[u8]) -> Option<usize> {
    use std::arch::x86_64::*;
    debug_assert!(buf.len() >= 16);
    let zeros_at = |at: usize| {
        // SAFETY: `at + 16 <= buf.len()` at every call (an unaligned load); SSE2 is part
        // of x86-64.
        unsafe {
            let v = _mm_loadu_si128(buf.as_ptr().add(at).cast());
            _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128())) as u32
        }
    };
    let mut at = 0;
    while at + 16 <= buf.len() {
        let zeros = zeros_at(at);
        if zeros != 0 {
            return Some(at + zeros.trailing_zeros() as usize);
        }
        at += 16;
    }
    if at < buf.len() {
        let last = buf.len() - 16;
        // The bytes before `at` were looked at already.
        let zeros = zeros_at(last) >> (at - last);
        if zeros != 0 {
            return Some(at + zeros.trailing_zeros() as usize);
        }
    }
    None
}

/// The first zero byte, eight bytes at a time in a register.
#[inline]
fn zero_in_words(buf: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    let mut words = buf.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let v = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        // The high bit of each zero byte (and maybe of bytes after the first zero, which
        // the lowest bit ignores).
        let zeros = v.wrapping_sub(ONES) & !v & (0x80 * ONES);
        if zeros != 0 {
            return Some(at + zeros.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == 0)
        .map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The first zero byte, whatever the length and wherever the zeros are.
        #[test]
        fn the_terminator_is_the_first_zero_byte(
            buf in proptest::collection::vec(prop_oneof![Just(0u8), Just(0x80u8), Just(1u8), any::<u8>()], 0..200)
        ) {
            let want = buf.iter().position(|&b| b == 0);
            prop_assert_eq!(memchr0(&buf), want);
            prop_assert_eq!(zero_in_words(&buf), want);
            #[cfg(target_arch = "x86_64")]
            if buf.len() >= 16 {
                prop_assert_eq!(zero_in_blocks(&buf), want);
            }
        }
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn whole_frames_come_out_as_they_went_in() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&msg(b'Q', b"select 1\0"));
        buf.extend_from_slice(&msg(b'S', b""));
        let d = FrameDecoder::new(1 << 20);
        let f = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f.tag(), b'Q');
        assert_eq!(f.body(), b"select 1\0");
        assert_eq!(&f.raw()[..], &msg(b'Q', b"select 1\0")[..]);
        let f = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f.tag(), b'S');
        assert!(f.body().is_empty());
        assert_eq!(d.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn messages_are_read_in_place_as_frames_are_cut() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&msg(b'C', b"SELECT 1\0"));
        buf.extend_from_slice(&msg(b'Z', b"I"));
        let d = FrameDecoder::new(1 << 20);
        let len = d.peek_len(&buf).unwrap().unwrap();
        let m = FrameDecoder::msg(&buf, len);
        assert_eq!((m.tag(), m.body()), (b'C', &b"SELECT 1\0"[..]));
        assert_eq!(crate::messages::command_tag(&m).unwrap(), b"SELECT 1");
        let next = &buf[len..];
        let z = FrameDecoder::msg(next, d.peek_len(next).unwrap().unwrap());
        assert_eq!(crate::messages::ready_status(&z).unwrap(), b'I');
        assert_eq!(d.peek_len(&next[z.raw().len()..]).unwrap(), None);
        // A message begun: `next_len` makes room for its rest, `peek_len` only says so.
        let whole = msg(b'D', &[7u8; 3000]);
        let mut part = BytesMut::from(&whole[..10]);
        assert_eq!(d.peek_len(&part).unwrap(), None);
        assert_eq!(d.next_len(&mut part).unwrap(), None);
        assert!(part.capacity() >= whole.len());
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let whole = msg(b'Q', b"select 1\0");
        let d = FrameDecoder::new(1 << 20);
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(d.decode(&mut buf).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn lengths_are_checked_before_allocation() {
        let d = FrameDecoder::new(1 << 20);
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        let cap = buf.capacity();
        assert!(matches!(
            d.decode(&mut buf),
            Err(FrameError::TooLarge { tag: b'Q', .. })
        ));
        assert_eq!(buf.capacity(), cap);
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(FrameError::BadLength { len: 3, .. })
        ));
        let mut buf = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(FrameError::BadLength { len: -1, .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let d = FrameDecoder::new(32);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(f)) = d.decode(&mut buf) {
                prop_assert!(f.len() >= 5);
            }
        }

        #[test]
        fn body_reader_never_reads_past_the_end(data in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut r = BodyReader::new(&data);
            let _ = r.cstr();
            let _ = r.i32();
            let _ = r.i16();
            let _ = r.bytes(7);
            let _ = r.u8();
        }
    }
}
