//! Start-up scan of one segment file. Only a torn *tail* (the end of the last segment, written
//! but never acknowledged when the process died) may be cut. A bad record anywhere else is
//! damage: it is recorded, the valid records after it are kept and served, and readers that reach
//! it stop with an error naming it, so an acknowledged record is never dropped silently.

use super::codec::{decode, Decoded, HEADER, MAX_BODY};
use super::LogError;
use std::fs::OpenOptions;
use std::path::Path;

/// A sparse index entry every this many bytes of a segment.
pub(super) const INDEX_EVERY: u64 = 4096;

/// Whether the record at `pos` gets an index entry, given the last indexed position.
pub(super) fn needs_index(last_indexed: Option<u64>, pos: u64) -> bool {
    last_indexed.is_none_or(|p| pos >= p + INDEX_EVERY)
}

/// Records `first..=last` of a segment, stored in bytes `[pos, end)`, that do not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub first: u64,
    pub last: u64,
    pub pos: u64,
    pub end: u64,
}

/// What a segment holds after recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Scanned {
    /// The offset after the segment's last record.
    pub next: u64,
    /// Bytes kept.
    pub len: u64,
    pub index: Vec<(u64, u64)>,
    pub first_ts: i64,
    pub last_ts: i64,
    pub damage: Vec<Damage>,
}

/// Scans `data`, the bytes of the segment starting at offset `base`. `next_base` is the following
/// segment's base, if there is one: then every byte of this segment was acknowledged once and
/// nothing may be cut. Pure, so every case is unit-tested without files.
pub(super) fn scan(data: &[u8], base: u64, next_base: Option<u64>) -> Scanned {
    let mut s =
        Scanned { next: base, len: 0, index: Vec::new(), first_ts: i64::MAX, last_ts: i64::MIN, damage: Vec::new() };
    let mut pos = 0usize;
    let mut last_indexed: Option<u64> = None;
    while pos < data.len() {
        if let Decoded::Record(r, n) = decode(&data[pos..]) {
            if r.offset == s.next {
                if needs_index(last_indexed, pos as u64) {
                    s.index.push((r.offset, pos as u64));
                    last_indexed = Some(pos as u64);
                }
                s.first_ts = s.first_ts.min(r.timestamp_ms);
                s.last_ts = s.last_ts.max(r.timestamp_ms);
                s.next += 1;
                pos += n;
                continue;
            }
        }
        match resync(data, pos, s.next) {
            Some((at, offset)) => {
                s.damage.push(Damage { first: s.next, last: offset - 1, pos: pos as u64, end: at as u64 });
                // Readers seek by the index: an entry right after the damage lets them start
                // beyond it without passing through it.
                s.index.push((offset, at as u64));
                last_indexed = Some(at as u64);
                s.next = offset;
                pos = at;
            }
            None => match next_base {
                // A closed segment ends badly: its last records up to the next segment are lost
                // to damage, but the segment is not shortened and the next ones stay.
                Some(nb) if nb > s.next => {
                    s.damage.push(Damage { first: s.next, last: nb - 1, pos: pos as u64, end: data.len() as u64 });
                    s.next = nb;
                    pos = data.len();
                }
                _ => break,
            },
        }
    }
    s.len = pos as u64;
    s
}

/// The first position after `from` where a valid record with an offset above `expected` starts,
/// followed by another valid record or the end of the data (two in a row: random bytes passing
/// as a record are then out of the question). The record's length and offset are checked before
/// its checksum, so scanning a long torn tail stays cheap.
fn resync(data: &[u8], from: usize, expected: u64) -> Option<(usize, u64)> {
    // More records than bytes left cannot have been lost.
    let bound = expected.saturating_add(data.len() as u64);
    for at in from + 1..=data.len().saturating_sub(HEADER + 20) {
        let body = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        if body > MAX_BODY || at + HEADER + body > data.len() {
            continue;
        }
        let offset = u64::from_le_bytes(data[at + HEADER..at + HEADER + 8].try_into().expect("8 bytes"));
        if offset <= expected || offset >= bound {
            continue;
        }
        let Decoded::Record(_, n) = decode(&data[at..]) else { continue };
        let follows =
            at + n == data.len() || matches!(decode(&data[at + n..]), Decoded::Record(r, _) if r.offset == offset + 1);
        if follows {
            return Some((at, offset));
        }
    }
    None
}

/// Reads and scans a segment file, cutting a torn tail off the file (and syncing the cut).
pub(super) fn recover_file(path: &Path, base: u64, next_base: Option<u64>) -> Result<Scanned, LogError> {
    let data = std::fs::read(path)?;
    let scanned = scan(&data, base, next_base);
    for d in &scanned.damage {
        tracing::error!(
            segment = %path.display(), first = d.first, last = d.last,
            "Corrupt records in the middle of the log: kept the records after them; readers stop at them."
        );
    }
    if (scanned.len as usize) < data.len() {
        tracing::warn!(segment = %path.display(), kept = scanned.len, cut = data.len() as u64 - scanned.len, "Torn log tail cut off.");
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(scanned.len)?;
        f.sync_all()?;
    }
    Ok(scanned)
}

#[cfg(test)]
mod tests {
    use super::super::codec::encode;
    use super::*;

    fn segment(base: u64, n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        let mut starts = Vec::new();
        for o in base..base + n {
            starts.push(buf.len());
            encode(&mut buf, o, o as i64, Some(b"k"), format!("value-{o:04}").as_bytes());
        }
        (buf, starts)
    }

    #[test]
    fn a_clean_segment_is_kept_whole() {
        let (data, _) = segment(10, 50);
        let s = scan(&data, 10, None);
        assert_eq!((s.next, s.len as usize, s.damage.len()), (60, data.len(), 0));
    }

    #[test]
    fn a_torn_tail_of_the_last_segment_is_cut() {
        let (mut data, _) = segment(0, 20);
        let clean = data.len();
        data.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
        let s = scan(&data, 0, None);
        assert_eq!((s.next, s.len as usize), (20, clean));
        // A half-written last record is a torn tail too.
        let (data, starts) = segment(0, 20);
        let s = scan(&data[..starts[19] + 9], 0, None);
        assert_eq!((s.next, s.len as usize, s.damage.len()), (19, starts[19], 0));
    }

    #[test]
    fn a_flipped_bit_in_the_middle_keeps_every_record_after_it() {
        let (data, starts) = segment(0, 40);
        for (victim, flip_at) in [(7usize, 12usize), (7, 1), (0, 20), (38, 30)] {
            let mut bad = data.clone();
            bad[starts[victim] + flip_at] ^= 0x10;
            let s = scan(&bad, 0, None);
            assert_eq!(s.next, 40, "victim {victim} flip {flip_at}");
            assert_eq!(s.len as usize, data.len());
            assert_eq!(
                s.damage,
                [Damage {
                    first: victim as u64,
                    last: victim as u64,
                    pos: starts[victim] as u64,
                    end: starts[victim + 1] as u64
                }]
            );
            // The index lets a reader start right after the damage.
            assert!(s.index.contains(&(victim as u64 + 1, starts[victim + 1] as u64)));
        }
    }

    #[test]
    fn damage_at_the_end_of_a_closed_segment_is_kept_and_bounded_by_the_next_base() {
        let (data, starts) = segment(100, 10);
        let mut bad = data.clone();
        bad[starts[9] + 14] ^= 0x01;
        let s = scan(&bad, 100, Some(110));
        assert_eq!((s.next, s.len as usize), (110, data.len()));
        assert_eq!(s.damage, [Damage { first: 109, last: 109, pos: starts[9] as u64, end: data.len() as u64 }]);
    }

    #[test]
    fn several_damaged_records_in_a_row_are_one_stretch() {
        let (data, starts) = segment(0, 30);
        let mut bad = data.clone();
        for i in starts[10]..starts[13] {
            bad[i] = 0;
        }
        let s = scan(&bad, 0, None);
        assert_eq!(s.next, 30);
        assert_eq!(s.damage, [Damage { first: 10, last: 12, pos: starts[10] as u64, end: starts[13] as u64 }]);
    }
}
