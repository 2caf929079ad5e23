//! The on-disk record format. Each record is self-checking, so a torn or corrupt tail is found
//! on start-up and cut off instead of being served:
//!
//! ```text
//! u32 body length | u32 CRC-32C of body | body: u64 offset, i64 timestamp ms, u32 key length,
//! key, value (the rest)
//! ```
//! Integers are little-endian.

/// Bytes before the body: length and checksum.
pub const HEADER: usize = 8;
/// Fixed part of the body: offset, timestamp, key length.
const FIXED: usize = 8 + 8 + 4;
/// Largest body accepted on read; anything larger is corruption, not a record.
pub const MAX_BODY: usize = 64 << 20;

/// A record as stored: its offset is assigned by the log when appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// Appends one encoded record to `out`.
pub fn encode(out: &mut Vec<u8>, offset: u64, timestamp_ms: i64, key: Option<&[u8]>, value: &[u8]) {
    let key_bytes = key.unwrap_or_default();
    // A missing key and an empty key differ: u32::MAX marks "no key".
    let key_len = key.map_or(u32::MAX, |k| k.len() as u32);
    let body_len = FIXED + key_bytes.len() + value.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(key_bytes);
    out.extend_from_slice(value);
    let crc = crc32c::crc32c(&out[start + HEADER..]);
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// What decoding the bytes at one position found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, valid record and its encoded length.
    Record(StoredRecord, usize),
    /// The bytes end before the record does (a torn write, or the end of the file).
    Incomplete,
    /// The bytes are not a valid record.
    Corrupt,
}

pub fn decode(buf: &[u8]) -> Decoded {
    if buf.len() < HEADER {
        return Decoded::Incomplete;
    }
    let body_len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    if !(FIXED..=MAX_BODY).contains(&body_len) {
        return Decoded::Corrupt;
    }
    if buf.len() < HEADER + body_len {
        return Decoded::Incomplete;
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    let body = &buf[HEADER..HEADER + body_len];
    if crc32c::crc32c(body) != crc {
        return Decoded::Corrupt;
    }
    let offset = u64::from_le_bytes(body[0..8].try_into().unwrap());
    let timestamp_ms = i64::from_le_bytes(body[8..16].try_into().unwrap());
    let key_len = u32::from_le_bytes(body[16..20].try_into().unwrap());
    let (key, value_start) = if key_len == u32::MAX {
        (None, FIXED)
    } else if FIXED + key_len as usize <= body_len {
        (Some(body[FIXED..FIXED + key_len as usize].to_vec()), FIXED + key_len as usize)
    } else {
        return Decoded::Corrupt;
    };
    Decoded::Record(StoredRecord { offset, timestamp_ms, key, value: body[value_start..].to_vec() }, HEADER + body_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_and_without_key() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, 1_700_000_000_000, Some(b"user-1"), b"{\"a\":1}");
        encode(&mut buf, 8, 1_700_000_000_001, None, b"");
        encode(&mut buf, 9, -5, Some(b""), b"x");
        let Decoded::Record(r1, n1) = decode(&buf) else { panic!() };
        assert_eq!((r1.offset, r1.key.as_deref(), r1.value.as_slice()), (7, Some(&b"user-1"[..]), &b"{\"a\":1}"[..]));
        let Decoded::Record(r2, n2) = decode(&buf[n1..]) else { panic!() };
        assert_eq!((r2.offset, r2.key, r2.value.len()), (8, None, 0));
        let Decoded::Record(r3, n3) = decode(&buf[n1 + n2..]) else { panic!() };
        assert_eq!((r3.timestamp_ms, r3.key, n1 + n2 + n3), (-5, Some(vec![]), buf.len()));
    }

    #[test]
    fn torn_and_flipped_bytes_are_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, 2, None, b"hello world");
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]), Decoded::Incomplete, "cut at {cut}");
        }
        for i in HEADER..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert_eq!(decode(&bad), Decoded::Corrupt, "flip at {i}");
        }
        let mut huge = buf.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge), Decoded::Corrupt);
    }
}
