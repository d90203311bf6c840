//! A row as a shard sent it: the DataRow body, kept as bytes, with the span of each column
//! (one small vector per row, no allocation per column). And the writing of DataRow frames.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::MergeError;

/// A DataRow body and where each of its columns lies in it.
#[derive(Debug, Clone)]
pub struct Row {
    body: Bytes,
    /// (offset, length); length -1 is NULL.
    spans: Vec<(u32, i32)>,
}

impl Row {
    /// Reads a DataRow body (without its tag and length): column count, then each column's
    /// length (-1: NULL) and bytes.
    pub fn parse(body: Bytes) -> Result<Row, MergeError> {
        let bad = |why: &str| MergeError::BadData(format!("malformed DataRow from a shard: {why}"));
        if body.len() < 2 {
            return Err(bad("no column count"));
        }
        let n = i16::from_be_bytes([body[0], body[1]]);
        if n < 0 {
            return Err(bad("negative column count"));
        }
        let mut spans = Vec::with_capacity(n as usize);
        let mut at = 2usize;
        for _ in 0..n {
            if body.len() < at + 4 {
                return Err(bad("short"));
            }
            let len = i32::from_be_bytes(body[at..at + 4].try_into().expect("4 bytes"));
            at += 4;
            if len < -1 {
                return Err(bad("negative length"));
            }
            if len >= 0 {
                if body.len() - at < len as usize {
                    return Err(bad("short"));
                }
                spans.push((at as u32, len));
                at += len as usize;
            } else {
                spans.push((at as u32, -1));
            }
        }
        if at != body.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(Row { body, spans })
    }

    /// A row built from column values (an aggregated row).
    pub fn from_values<'a>(values: impl IntoIterator<Item = Option<&'a [u8]>>) -> Row {
        let mut b = BytesMut::new();
        b.put_i16(0);
        let mut n = 0i16;
        for v in values {
            n += 1;
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
        b[..2].copy_from_slice(&n.to_be_bytes());
        Row::parse(b.freeze()).expect("a row we wrote ourselves")
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Column `i` (None: NULL).
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let (at, len) = self.spans[i];
        (len >= 0).then(|| &self.body[at as usize..at as usize + len as usize])
    }

    /// Bytes this row holds, for memory accounting.
    pub fn footprint(&self) -> usize {
        self.body.len() + self.spans.len() * 8 + 64
    }

    /// Appends the first `n` columns as a DataRow frame ('D', length, count, columns).
    pub fn write_data_row(&self, n: usize, out: &mut BytesMut) {
        let cols = &self.spans[..n];
        let len: usize = 4
            + 2
            + cols
                .iter()
                .map(|(_, l)| 4 + (*l).max(0) as usize)
                .sum::<usize>();
        out.reserve(len + 1);
        out.put_u8(b'D');
        out.put_i32(len as i32);
        out.put_i16(n as i16);
        for i in 0..n {
            match self.get(i) {
                Some(v) => {
                    out.put_i32(v.len() as i32);
                    out.put_slice(v);
                }
                None => out.put_i32(-1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_and_write_back() {
        let r = Row::from_values([Some(&b"12"[..]), None, Some(&b""[..])]);
        assert_eq!(r.len(), 3);
        assert_eq!(r.get(0), Some(&b"12"[..]));
        assert_eq!(r.get(1), None);
        assert_eq!(r.get(2), Some(&b""[..]));
        let mut out = BytesMut::new();
        r.write_data_row(2, &mut out);
        assert_eq!(
            &out[..],
            b"D\x00\x00\x00\x10\x00\x02\x00\x00\x00\x0212\xff\xff\xff\xff"
        );
        assert!(Row::parse(Bytes::from_static(b"\x00\x01\x00\x00\x00\x05ab")).is_err());
        assert!(Row::parse(Bytes::from_static(b"\x00\x00x")).is_err());
        assert!(Row::parse(Bytes::from_static(b"\x00")).is_err());
    }
}
