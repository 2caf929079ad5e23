//! The embedded log under injected storage faults: each failure path of a write, an fsync and a
//! read, and corruption found on disk at start-up. Faults come from a [`Storage`] that does the
//! real file operation, or part of it, and then fails exactly where the test says.

use super::*;
use keystone_engine::log::storage::Storage;
use std::fs::File;
use std::io;
use std::sync::Mutex;

#[derive(Default)]
struct Plan {
    /// Every write writes this many bytes, then fails with this OS error.
    write: Option<(usize, i32)>,
    /// The next fsync fails with this OS error.
    sync: Option<i32>,
    /// A read whose bytes contain this text gets one bit of it flipped.
    flip: Option<Vec<u8>>,
}

#[derive(Default)]
struct Faulty(Mutex<Plan>);

impl Faulty {
    fn plan(&self, change: impl FnOnce(&mut Plan)) {
        change(&mut self.0.lock().unwrap());
    }
}

impl Storage for Faulty {
    fn append(&self, file: &File, buf: &[u8]) -> io::Result<()> {
        use std::io::Write;
        match self.0.lock().unwrap().write {
            Some((part, errno)) => {
                (&*file).write_all(&buf[..part.min(buf.len())])?;
                Err(io::Error::from_raw_os_error(errno))
            }
            None => (&*file).write_all(buf),
        }
    }

    fn sync(&self, file: &File) -> io::Result<()> {
        match self.0.lock().unwrap().sync.take() {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => file.sync_data(),
        }
    }

    fn read_at(&self, file: &File, buf: &mut [u8], pos: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, pos)?;
        if let Some(pattern) = &self.0.lock().unwrap().flip {
            if let Some(at) = buf.windows(pattern.len()).position(|w| w == pattern.as_slice()) {
                buf[at] ^= 0x01;
            }
        }
        Ok(())
    }
}

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

fn values(records: &[keystone_engine::log::StoredRecord]) -> Vec<String> {
    records.iter().map(|r| String::from_utf8(r.value.clone()).unwrap()).collect()
}

fn segment_bytes(dir: &std::path::Path, topic: &str, partition: u32) -> u64 {
    let folder = dir.join(topic).join(partition.to_string());
    std::fs::read_dir(folder).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
}

async fn faulty_log(dir: &Dir) -> (EmbeddedLog, Arc<Faulty>) {
    let faults = Arc::new(Faulty::default());
    let log = EmbeddedLog::open_on(&dir.0, EmbeddedConfig::default(), faults.clone()).unwrap();
    log.ensure_topic("t", 2, KEEP).await.unwrap();
    for i in 0..5 {
        log.append("t", vec![rec(0, i, &format!("acked-{i}"))]).await.unwrap();
    }
    (log, faults)
}

#[tokio::test]
async fn a_full_disk_keeps_nothing_of_the_append_and_writes_resume_once_space_is_back() {
    let dir = scratch();
    let (log, faults) = faulty_log(&dir).await;
    let before = segment_bytes(&dir.0, "t", 0);
    // The disk fills up half-way through the write.
    faults.plan(|p| p.write = Some((40, ENOSPC)));
    let batch = vec![rec(0, 10, "lost-a"), rec(0, 11, "lost-b")];
    assert!(matches!(log.append("t", batch).await, Err(LogError::Full)));
    assert_eq!(segment_bytes(&dir.0, "t", 0), before, "the half-written batch is cut back");
    assert!(matches!(log.append("t", vec![rec(0, 12, "still-full")]).await, Err(LogError::Full)));
    // Space is back: the same process goes on, at the next offset, without a restart.
    faults.plan(|p| p.write = None);
    assert_eq!(log.append("t", vec![rec(0, 13, "after")]).await.unwrap(), [(0, 5)]);
    let all = log.read("t", 0, 0, 100).await.unwrap();
    assert_eq!(values(&all), ["acked-0", "acked-1", "acked-2", "acked-3", "acked-4", "after"]);
    drop(log);
    let reopened = EmbeddedLog::open(&dir.0, EmbeddedConfig::default()).unwrap();
    assert_eq!(values(&reopened.read("t", 0, 0, 100).await.unwrap()).len(), 6);
}

#[tokio::test]
async fn a_failed_write_is_cut_back_and_reported_with_its_cause() {
    let dir = scratch();
    let (log, faults) = faulty_log(&dir).await;
    faults.plan(|p| p.write = Some((3, EIO)));
    match log.append("t", vec![rec(0, 10, "lost")]).await {
        Err(LogError::Io(e)) => assert_eq!(e.kind(), io::Error::from_raw_os_error(EIO).kind()),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    faults.plan(|p| p.write = None);
    assert_eq!(log.append("t", vec![rec(0, 11, "next")]).await.unwrap(), [(0, 5)]);
    assert_eq!(values(&log.read("t", 0, 4, 100).await.unwrap()), ["acked-4", "next"]);
}

#[tokio::test]
async fn a_failed_fsync_stops_the_partition_until_it_is_reopened_and_verified() {
    let dir = scratch();
    let (log, faults) = faulty_log(&dir).await;
    faults.plan(|p| p.sync = Some(EIO));
    assert!(matches!(log.append("t", vec![rec(0, 10, "unsure")]).await, Err(LogError::Poisoned(_))));
    // The fault is gone, but what the disk holds is unknown: no retry is trusted.
    let again = log.append("t", vec![rec(0, 11, "refused")]).await;
    match again {
        Err(LogError::Poisoned(why)) => assert!(why.contains("fsync failed"), "{why}"),
        other => panic!("expected the partition to stay stopped, got {other:?}"),
    }
    // Other partitions and readers of what was acknowledged are unaffected.
    assert_eq!(log.append("t", vec![rec(1, 12, "other partition")]).await.unwrap(), [(1, 0)]);
    assert_eq!(values(&log.read("t", 0, 0, 100).await.unwrap()).len(), 5);
    drop(log);
    // A new process re-verifies the files and takes writes again.
    let reopened = EmbeddedLog::open(&dir.0, EmbeddedConfig::default()).unwrap();
    assert_eq!(reopened.append("t", vec![rec(0, 13, "after restart")]).await.unwrap(), [(0, 5)]);
    let all = values(&reopened.read("t", 0, 0, 100).await.unwrap());
    assert_eq!(all, ["acked-0", "acked-1", "acked-2", "acked-3", "acked-4", "after restart"]);
}

#[tokio::test]
async fn a_bit_flipped_on_read_stops_the_reader_at_that_record() {
    let dir = scratch();
    let (log, faults) = faulty_log(&dir).await;
    faults.plan(|p| p.flip = Some(b"acked-3".to_vec()));
    // The records before it are served; the reader then meets the error naming the record.
    assert_eq!(values(&log.read("t", 0, 0, 100).await.unwrap()), ["acked-0", "acked-1", "acked-2"]);
    match log.read("t", 0, 3, 100).await {
        Err(LogError::Corrupt { topic, partition, offset }) => {
            assert_eq!((topic.as_str(), partition, offset), ("t", 0, 3))
        }
        other => panic!("expected a corrupt-record error, got {other:?}"),
    }
    faults.plan(|p| p.flip = None);
    assert_eq!(values(&log.read("t", 0, 3, 100).await.unwrap()), ["acked-3", "acked-4"]);
}

/// A bad record in the middle of a segment (not a torn tail) keeps every record after it, and
/// readers stop at it with an error instead of skipping or cutting anything.
#[tokio::test]
async fn corruption_in_the_middle_keeps_every_acknowledged_record_after_it() {
    let dir = scratch();
    {
        let log = EmbeddedLog::open(&dir.0, EmbeddedConfig::default()).unwrap();
        log.ensure_topic("t", 1, KEEP).await.unwrap();
        for i in 0..10 {
            log.append("t", vec![rec(0, i, &format!("value-number-{i}"))]).await.unwrap();
        }
    }
    let seg = std::fs::read_dir(dir.0.join("t/0")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&seg).unwrap();
    let len = bytes.len();
    let pos = bytes.windows(14).position(|w| w == b"value-number-6").unwrap();
    bytes[pos] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();

    let log = EmbeddedLog::open(&dir.0, EmbeddedConfig::default()).unwrap();
    assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, len, "nothing is cut");
    assert_eq!(values(&log.read("t", 0, 0, 100).await.unwrap()).len(), 6);
    assert!(matches!(log.read("t", 0, 6, 100).await, Err(LogError::Corrupt { offset: 6, .. })));
    let after = values(&log.read("t", 0, 7, 100).await.unwrap());
    assert_eq!(after, ["value-number-7", "value-number-8", "value-number-9"]);
    assert_eq!(log.append("t", vec![rec(0, 99, "x")]).await.unwrap(), [(0, 10)]);
}

/// The last record of a closed segment going bad must not take the later segments with it.
#[tokio::test]
async fn corruption_at_the_end_of_a_closed_segment_keeps_the_segments_after_it() {
    let dir = scratch();
    {
        let log = EmbeddedLog::open(&dir.0, small_segments()).unwrap();
        log.ensure_topic("t", 1, KEEP).await.unwrap();
        for i in 0..150 {
            log.append("t", vec![rec(0, i, &format!("event-{i:03}"))]).await.unwrap();
        }
    }
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.0.join("t/0")).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort();
    assert!(segs.len() >= 3);
    let second_base: u64 = segs[1].file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let victim = format!("event-{:03}", second_base - 1);
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    let pos = bytes.windows(victim.len()).position(|w| w == victim.as_bytes()).unwrap();
    bytes[pos + 2] ^= 0x20;
    std::fs::write(&segs[0], &bytes).unwrap();

    let log = EmbeddedLog::open(&dir.0, small_segments()).unwrap();
    assert_eq!(log.resolve("t", 0, StartAt::Latest).await.unwrap(), 150);
    assert_eq!(log.read("t", 0, 0, 1000).await.unwrap().len() as u64, second_base - 1);
    assert!(matches!(log.read("t", 0, second_base - 1, 10).await, Err(LogError::Corrupt { .. })));
    let rest = log.read("t", 0, second_base, 1000).await.unwrap();
    assert_eq!(rest.len() as u64, 150 - second_base, "every later segment is still served");
}
