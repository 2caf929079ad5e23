//! The embedded log: plain segment files under the data directory, no server.
//!
//! Layout: `<dir>/<topic>/<partition>/<base offset, 20 digits>.log`. Each partition has one
//! writer task that owns the active segment. Appends queue to it; while one batch is being
//! written and fsynced, the next requests pile up and share the following fsync (group commit),
//! so throughput does not collapse to one fsync (~4 ms here) per request. Readers see only what
//! has been fsynced: the committed length of each segment is published after the sync.

use super::codec::{decode, encode, Decoded, StoredRecord};
use super::recovery::{needs_index, recover_file, Damage};
use super::storage::{is_out_of_space, Disk, Storage};
use super::{Log, LogError, NewRecord, Retention, StartAt};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch};

/// Tuning of the embedded log.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedConfig {
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Most bytes one group commit writes before syncing.
    pub max_batch_bytes: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig { segment_bytes: 64 << 20, max_batch_bytes: 4 << 20 }
    }
}

/// Bytes read per chunk when scanning a segment.
const READ_CHUNK: usize = 1 << 20;

pub struct EmbeddedLog {
    dir: PathBuf,
    config: EmbeddedConfig,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    fsyncs: Arc<AtomicU64>,
    storage: Arc<dyn Storage>,
}

struct Topic {
    partitions: RwLock<Vec<Arc<Partition>>>,
    retention: Mutex<Retention>,
}

struct Partition {
    state: Arc<Mutex<PartitionState>>,
    requests: mpsc::Sender<AppendRequest>,
    end: watch::Receiver<u64>,
}

/// What readers need to know of a partition: its segments and their committed lengths.
struct PartitionState {
    segments: Vec<Segment>,
    next_offset: u64,
}

#[derive(Clone)]
struct Segment {
    base: u64,
    path: PathBuf,
    /// Committed (fsynced) length.
    len: u64,
    /// (offset, byte position) of a record every INDEX_EVERY bytes, for seeking.
    index: Vec<(u64, u64)>,
    first_ts: i64,
    last_ts: i64,
    /// Stretches found corrupt at start-up; readers stop at them.
    damage: Vec<Damage>,
}

/// A record waiting for its partition's writer: timestamp, key, value.
type PendingRecord = (i64, Option<Vec<u8>>, Vec<u8>);

struct AppendRequest {
    records: Vec<PendingRecord>,
    done: oneshot::Sender<Result<Vec<u64>, LogError>>,
}

impl AppendRequest {
    /// What the request adds to the segment, at most (payload plus framing).
    fn encoded_size(&self) -> usize {
        self.records.iter().map(|(_, key, value)| value.len() + key.as_ref().map_or(0, Vec::len) + 32).sum()
    }
}

/// Why a group commit failed, told to each of its requests.
#[derive(Debug, Clone)]
enum Failure {
    /// No space: nothing was kept, and the partition goes on once space is back.
    Full,
    /// A write failed and was cut back cleanly.
    Io(std::io::ErrorKind, String),
    /// An fsync failed, or the cut after a failed write did: the partition stops taking writes.
    Poisoned(String),
}

impl Failure {
    fn error(&self) -> LogError {
        match self {
            Failure::Full => LogError::Full,
            Failure::Io(kind, msg) => LogError::Io(std::io::Error::new(*kind, msg.clone())),
            Failure::Poisoned(why) => LogError::Poisoned(why.clone()),
        }
    }
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// Makes a directory entry (a new segment or folder) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl EmbeddedLog {
    /// Opens (creating) the log under `dir`, recovering every topic found there. Must run inside a
    /// Tokio runtime: each partition gets a writer task.
    pub fn open(dir: impl Into<PathBuf>, config: EmbeddedConfig) -> Result<EmbeddedLog, LogError> {
        EmbeddedLog::open_on(dir, config, Arc::new(Disk))
    }

    /// Opens the log with its writes, syncs and reads going through `storage` (tests inject
    /// faults with it).
    pub fn open_on(
        dir: impl Into<PathBuf>,
        config: EmbeddedConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<EmbeddedLog, LogError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let log = EmbeddedLog {
            dir,
            config,
            topics: RwLock::new(HashMap::new()),
            fsyncs: Arc::new(AtomicU64::new(0)),
            storage,
        };
        for entry in std::fs::read_dir(&log.dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut count = 0u32;
            while entry.path().join(count.to_string()).is_dir() {
                count += 1;
            }
            // Retention is not stored with the data: the reconciler re-applies it from the goal.
            let keep_all = Retention { max_age_ms: i64::MAX, max_bytes_per_partition: None };
            log.open_topic(&name, count, keep_all)?;
        }
        Ok(log)
    }

    /// Every topic with its partition count and the retention it applies.
    pub fn topics(&self) -> Vec<(String, u32, Retention)> {
        let topics = self.topics.read().expect("topics lock");
        let mut out: Vec<(String, u32, Retention)> = topics
            .iter()
            .map(|(name, t)| {
                let parts = t.partitions.read().expect("partitions lock").len() as u32;
                (name.clone(), parts, *t.retention.lock().expect("retention lock"))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Bytes a topic holds on disk, over all its partitions (0 for an unknown topic).
    pub fn topic_bytes(&self, topic: &str) -> u64 {
        let Some(t) = self.topics.read().expect("topics lock").get(topic).cloned() else { return 0 };
        let parts = t.partitions.read().expect("partitions lock").clone();
        parts.iter().map(|p| p.state.lock().expect("partition lock").segments.iter().map(|s| s.len).sum::<u64>()).sum()
    }

    /// Number of fsyncs issued so far (group commit keeps this well below the number of appends).
    pub fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Opens a topic under the topics lock, so two callers can never both open it: two writers
    /// on one partition's files would interleave records with clashing offsets, and recovery
    /// would cut the log at the first clash.
    fn open_topic(&self, name: &str, partitions: u32, retention: Retention) -> Result<Arc<Topic>, LogError> {
        let mut topics = self.topics.write().expect("topics lock");
        if let Some(existing) = topics.get(name) {
            return Ok(existing.clone());
        }
        let topic = Arc::new(Topic { partitions: RwLock::new(Vec::new()), retention: Mutex::new(retention) });
        self.grow(name, &topic, partitions)?;
        topics.insert(name.to_owned(), topic.clone());
        Ok(topic)
    }

    fn grow(&self, name: &str, topic: &Topic, partitions: u32) -> Result<(), LogError> {
        let mut parts = topic.partitions.write().expect("partitions lock");
        while (parts.len() as u32) < partitions {
            let dir = self.dir.join(name).join(parts.len().to_string());
            parts.push(Arc::new(open_partition(dir, self.config, self.fsyncs.clone(), self.storage.clone())?));
        }
        Ok(())
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, LogError> {
        let topics = self.topics.read().expect("topics lock");
        let t = topics.get(topic).ok_or_else(|| LogError::UnknownTopic(topic.to_owned()))?;
        let parts = t.partitions.read().expect("partitions lock");
        parts
            .get(partition as usize)
            .cloned()
            .ok_or_else(|| LogError::UnknownPartition { topic: topic.to_owned(), partition })
    }

    /// Removes a topic and its files. Its writers stop; a reader still holding it gets errors.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), LogError> {
        let removed = self.topics.write().expect("topics lock").remove(topic);
        if removed.is_none() {
            return Err(LogError::UnknownTopic(topic.to_owned()));
        }
        let (dir, root) = (self.dir.join(topic), self.dir.clone());
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir).and_then(|_| sync_dir(&root)))
            .await
            .map_err(|e| LogError::Io(std::io::Error::other(e)))??;
        Ok(())
    }

    /// Drops whole segments that retention no longer keeps. The active segment always stays.
    /// Returns the number of segments removed.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<usize, LogError> {
        let topics: Vec<Arc<Topic>> = self.topics.read().expect("topics lock").values().cloned().collect();
        let mut removed = 0;
        for topic in topics {
            let retention = *topic.retention.lock().expect("retention lock");
            let parts: Vec<Arc<Partition>> = topic.partitions.read().expect("partitions lock").clone();
            for p in parts {
                let doomed = {
                    let mut st = p.state.lock().expect("partition lock");
                    let mut total: u64 = st.segments.iter().map(|s| s.len).sum();
                    let mut doomed = Vec::new();
                    while st.segments.len() > 1 {
                        let oldest = &st.segments[0];
                        let too_old = now_ms.saturating_sub(oldest.last_ts) > retention.max_age_ms;
                        let too_big = retention.max_bytes_per_partition.is_some_and(|max| total > max);
                        if !(too_old || too_big) {
                            break;
                        }
                        total -= oldest.len;
                        doomed.push(st.segments.remove(0).path);
                    }
                    doomed
                };
                for path in doomed {
                    std::fs::remove_file(&path)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// Recovers a partition's segments (cutting only a torn tail) and starts its writer.
fn open_partition(
    dir: PathBuf,
    config: EmbeddedConfig,
    fsyncs: Arc<AtomicU64>,
    storage: Arc<dyn Storage>,
) -> Result<Partition, LogError> {
    std::fs::create_dir_all(&dir)?;
    let mut bases: Vec<u64> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".log").and_then(|b| b.parse().ok()))
        .collect();
    bases.sort_unstable();
    let mut segments = Vec::new();
    let mut next_offset = bases.first().copied().unwrap_or(0);
    for (i, base) in bases.iter().enumerate() {
        if *base != next_offset && i > 0 {
            // A gap means a lost segment in the middle: serve what precedes it, and say so.
            tracing::error!(dir = %dir.display(), expected = next_offset, found = base, "Log segment missing; later segments ignored.");
            break;
        }
        let path = segment_path(&dir, *base);
        let s = recover_file(&path, *base, bases.get(i + 1).copied())?;
        next_offset = s.next;
        segments.push(Segment {
            base: *base,
            path,
            len: s.len,
            index: s.index,
            first_ts: s.first_ts,
            last_ts: s.last_ts,
            damage: s.damage,
        });
    }
    if segments.is_empty() {
        let path = segment_path(&dir, next_offset);
        File::create(&path)?.sync_all()?;
        sync_dir(&dir)?;
        segments.push(Segment {
            base: next_offset,
            path,
            len: 0,
            index: Vec::new(),
            first_ts: i64::MAX,
            last_ts: i64::MIN,
            damage: Vec::new(),
        });
    }
    let active = OpenOptions::new().append(true).open(&segments.last().expect("one segment").path)?;
    let state = Arc::new(Mutex::new(PartitionState { segments, next_offset }));
    let (end_tx, end_rx) = watch::channel(next_offset);
    let (tx, rx) = mpsc::channel(1024);
    let writer = Writer {
        dir: dir.clone(),
        config,
        state: state.clone(),
        active: Arc::new(active),
        end: end_tx,
        fsyncs,
        storage,
        poisoned: None,
    };
    tokio::spawn(writer.run(rx));
    Ok(Partition { state, requests: tx, end: end_rx })
}

/// What one scan of a segment found: records, and where it met a record that does not decode.
struct SegmentRead {
    records: Vec<StoredRecord>,
    corrupt_at: Option<u64>,
}

/// Up to `want` records of one segment with offsets from `from`, scanning committed bytes
/// `[start_pos, end_pos)` chunk by chunk; `start_offset` is the offset of the record at
/// `start_pos`. A record that fails its checksum ends the scan: the records before it are
/// returned and the reader meets the error on its next call.
fn read_segment(
    storage: &dyn Storage,
    path: &Path,
    (start_pos, start_offset): (u64, u64),
    end_pos: u64,
    from: u64,
    want: usize,
) -> std::io::Result<SegmentRead> {
    thread_local! {
        /// Each blocking thread's read buffer, kept between reads: a fresh zeroed megabyte per
        /// read was page faults and zeroing (profiled: ~15% of a pipeline benchmark's CPU).
        static CHUNK: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let file = File::open(path)?;
    // Up to a chunk's worth of ~256-byte records up front, not grown record by record.
    let mut out = SegmentRead { records: Vec::with_capacity(want.min(READ_CHUNK / 256)), corrupt_at: None };
    let mut pos = start_pos;
    let mut expected = start_offset;
    // Size reads to what is wanted (about 512 bytes a record), not to the segment.
    let chunk = want.saturating_mul(512).clamp(16 << 10, READ_CHUNK);
    CHUNK.with_borrow_mut(|kept| {
        while pos < end_pos && out.records.len() < want {
            let len = ((end_pos - pos) as usize).min(chunk);
            if kept.len() < len {
                kept.resize(len, 0);
            }
            let buf = &mut kept[..len];
            storage.read_at(&file, buf, pos)?;
            let mut at = 0;
            while out.records.len() < want {
                let (record, len) = match decode(&buf[at..]) {
                    Decoded::Record(r, len) => (r, len),
                    // The chunk ends inside a record: the next chunk starts at it.
                    Decoded::Incomplete if at > 0 => break,
                    // One record larger than a chunk: read exactly it.
                    Decoded::Incomplete if buf.len() >= super::codec::HEADER => {
                        let body = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
                        let mut big = vec![0u8; super::codec::HEADER + body];
                        storage.read_at(&file, &mut big, pos)?;
                        match decode(&big) {
                            Decoded::Record(r, len) => (r, len),
                            _ => {
                                out.corrupt_at = Some(expected);
                                return Ok(out);
                            }
                        }
                    }
                    _ => {
                        out.corrupt_at = Some(expected);
                        return Ok(out);
                    }
                };
                if record.offset != expected {
                    out.corrupt_at = Some(expected);
                    return Ok(out);
                }
                at += len;
                expected += 1;
                if record.offset >= from {
                    out.records.push(record);
                }
            }
            pos += at as u64;
        }
        Ok(out)
    })
}

/// The single writer of one partition.
struct Writer {
    dir: PathBuf,
    config: EmbeddedConfig,
    state: Arc<Mutex<PartitionState>>,
    active: Arc<File>,
    end: watch::Sender<u64>,
    fsyncs: Arc<AtomicU64>,
    storage: Arc<dyn Storage>,
    /// Set once an fsync failed: every later append is refused.
    poisoned: Option<String>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<AppendRequest>) {
        while let Some(first) = rx.recv().await {
            if let Some(why) = &self.poisoned {
                let _ = first.done.send(Err(LogError::Poisoned(why.clone())));
                continue;
            }
            let mut bytes = first.encoded_size();
            let mut batch = vec![first];
            while bytes < self.config.max_batch_bytes {
                let Ok(req) = rx.try_recv() else { break };
                bytes += req.encoded_size();
                batch.push(req);
            }
            self.commit(batch).await;
        }
    }

    async fn commit(&mut self, batch: Vec<AppendRequest>) {
        let (start, seg_len, last_index_pos) = {
            let st = self.state.lock().expect("partition lock");
            let seg = st.segments.last().expect("active segment");
            (st.next_offset, seg.len, seg.index.last().map(|(_, p)| *p))
        };
        // Sized for the whole batch: growing it by doubling copied megabytes per commit.
        let mut buf = Vec::with_capacity(batch.iter().map(AppendRequest::encoded_size).sum());
        let mut offsets: Vec<Vec<u64>> = Vec::with_capacity(batch.len());
        let mut new_index = Vec::new();
        let (mut first_ts, mut last_ts) = (i64::MAX, i64::MIN);
        let mut next = start;
        let mut last_indexed = last_index_pos;
        for req in &batch {
            let mut mine = Vec::with_capacity(req.records.len());
            for (ts, key, value) in &req.records {
                let pos = seg_len + buf.len() as u64;
                if needs_index(last_indexed, pos) {
                    new_index.push((next, pos));
                    last_indexed = Some(pos);
                }
                encode(&mut buf, next, *ts, key.as_deref(), value);
                first_ts = first_ts.min(*ts);
                last_ts = last_ts.max(*ts);
                mine.push(next);
                next += 1;
            }
            offsets.push(mine);
        }
        let file = self.active.clone();
        let storage = self.storage.clone();
        let written_len = buf.len() as u64;
        let dir = self.dir.display().to_string();
        let written = tokio::task::spawn_blocking(move || -> Result<(), Failure> {
            if let Err(e) = storage.append(&file, &buf) {
                // Nothing of a failed write was acknowledged: cut back to the committed length.
                // If even that fails, the file's tail is unknown and the partition stops.
                return match file.set_len(seg_len).and_then(|_| storage.sync(&file)) {
                    Ok(()) if is_out_of_space(&e) => Err(Failure::Full),
                    Ok(()) => Err(Failure::Io(e.kind(), e.to_string())),
                    Err(cut) => {
                        Err(Failure::Poisoned(format!("{dir}: write failed ({e}) and cutting it back failed ({cut})")))
                    }
                };
            }
            // A failed fsync may have dropped dirty pages while marking them clean (PostgreSQL's
            // "fsyncgate"): retrying it could report success for data that never reached the
            // disk. Cut what this batch added as best one can, and stop taking writes.
            storage.sync(&file).map_err(|e| {
                let _ = file.set_len(seg_len);
                Failure::Poisoned(format!("{dir}: fsync failed ({e})"))
            })
        })
        .await
        .unwrap_or_else(|e| Err(Failure::Io(std::io::ErrorKind::Other, e.to_string())));
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        match written {
            Ok(()) => {
                let len = {
                    let mut st = self.state.lock().expect("partition lock");
                    let seg = st.segments.last_mut().expect("active segment");
                    seg.len = seg_len + written_len;
                    seg.index.extend(new_index);
                    seg.first_ts = seg.first_ts.min(first_ts);
                    seg.last_ts = seg.last_ts.max(last_ts);
                    st.next_offset = next;
                    st.segments.last().expect("active segment").len
                };
                self.end.send_replace(next);
                for (req, offs) in batch.into_iter().zip(offsets) {
                    let _ = req.done.send(Ok(offs));
                }
                if len >= self.config.segment_bytes {
                    if let Err(e) = self.roll(next).await {
                        tracing::error!(dir = %self.dir.display(), error = %e, "Could not start a new log segment; the current one keeps growing.");
                    }
                }
            }
            Err(failure) => {
                match &failure {
                    Failure::Poisoned(why) => {
                        tracing::error!(dir = %self.dir.display(), why, "Log partition stops taking writes until the process restarts.");
                        self.poisoned = Some(why.clone());
                    }
                    Failure::Full => {
                        tracing::warn!(dir = %self.dir.display(), "Log append refused: out of disk space; nothing of it was kept.")
                    }
                    Failure::Io(_, e) => {
                        tracing::error!(dir = %self.dir.display(), error = %e, "Log append failed; nothing of it was kept.")
                    }
                }
                for req in batch {
                    let _ = req.done.send(Err(failure.error()));
                }
            }
        }
    }

    /// Starts a new segment at `base`. Its syncs run on a blocking thread: on the runtime's
    /// thread they held up every ingest request queued there, at each roll of each partition.
    async fn roll(&mut self, base: u64) -> std::io::Result<()> {
        let path = segment_path(&self.dir, base);
        let (dir, at) = (self.dir.clone(), path.clone());
        let file = tokio::task::spawn_blocking(move || -> std::io::Result<File> {
            let file = OpenOptions::new().create(true).append(true).open(&at)?;
            file.sync_all()?;
            sync_dir(&dir)?;
            Ok(file)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))?;
        self.active = Arc::new(file);
        self.state.lock().expect("partition lock").segments.push(Segment {
            base,
            path,
            len: 0,
            index: Vec::new(),
            first_ts: i64::MAX,
            last_ts: i64::MIN,
            damage: Vec::new(),
        });
        Ok(())
    }
}

impl Log for EmbeddedLog {
    async fn ensure_topic(&self, topic: &str, partitions: u32, retention: Retention) -> Result<(), LogError> {
        let existing = self.topics.read().expect("topics lock").get(topic).cloned();
        match existing {
            Some(t) => {
                *t.retention.lock().expect("retention lock") = retention;
                let have = t.partitions.read().expect("partitions lock").len() as u32;
                if partitions < have {
                    // Shrinking would orphan keyed data; partitions only grow.
                    tracing::warn!(topic, have, wanted = partitions, "Partition count cannot shrink; keeping it.");
                }
                self.grow(topic, &t, partitions)
            }
            None => {
                std::fs::create_dir_all(self.dir.join(topic))?;
                sync_dir(&self.dir)?;
                // Another caller may have opened it meanwhile: then this settles its size.
                let t = self.open_topic(topic, partitions, retention)?;
                self.grow(topic, &t, partitions)
            }
        }
    }

    async fn append(&self, topic: &str, records: Vec<NewRecord>) -> Result<Vec<(u32, u64)>, LogError> {
        // One request per partition, all sent before any is awaited so they commit in parallel.
        // Each partition keeps the input positions of its records, to answer in input order.
        let total = records.len();
        let mut by_partition: std::collections::BTreeMap<u32, (Vec<usize>, Vec<PendingRecord>)> = Default::default();
        for (i, r) in records.into_iter().enumerate() {
            let (positions, batch) = by_partition.entry(r.partition).or_default();
            positions.push(i);
            batch.push((r.timestamp_ms, r.key, r.value));
        }
        let mut waits = Vec::new();
        for (partition, (positions, batch)) in by_partition {
            let p = self.partition(topic, partition)?;
            let (done, rx) = oneshot::channel();
            p.requests.send(AppendRequest { records: batch, done }).await.map_err(|_| LogError::Closed)?;
            waits.push((partition, positions, rx));
        }
        let mut out = vec![(0, 0); total];
        for (partition, idx, rx) in waits {
            let offsets = rx.await.map_err(|_| LogError::Closed)??;
            for (i, off) in idx.into_iter().zip(offsets) {
                out[i] = (partition, off);
            }
        }
        Ok(out)
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
    ) -> Result<Vec<StoredRecord>, LogError> {
        let p = self.partition(topic, partition)?;
        let mut out = Vec::new();
        let mut from = from;
        while out.len() < max_records {
            // Pick the segment and position under the lock, read the file without it.
            let (path, start, end_pos, seg_end) = {
                let st = p.state.lock().expect("partition lock");
                let earliest = st.segments[0].base;
                if from < earliest {
                    return Err(LogError::OffsetOutOfRange { requested: from, earliest });
                }
                if from >= st.next_offset {
                    break;
                }
                let i = st.segments.partition_point(|s| s.base <= from) - 1;
                let seg = &st.segments[i];
                if seg.damage.iter().any(|d| (d.first..=d.last).contains(&from)) {
                    if !out.is_empty() {
                        break;
                    }
                    return Err(LogError::Corrupt { topic: topic.to_owned(), partition, offset: from });
                }
                let j = seg.index.partition_point(|(o, _)| *o <= from);
                let start = if j == 0 { (0, seg.base) } else { (seg.index[j - 1].1, seg.index[j - 1].0) };
                // Stop before the next damaged stretch: the reader meets it on its next call.
                let end_pos = seg.damage.iter().filter(|d| d.first > from).map(|d| d.pos).fold(seg.len, u64::min);
                let seg_end = st.segments.get(i + 1).map_or(st.next_offset, |n| n.base);
                (seg.path.clone(), start, end_pos, seg_end)
            };
            let want = max_records - out.len();
            let first = from;
            let storage = self.storage.clone();
            let chunk =
                tokio::task::spawn_blocking(move || read_segment(&*storage, &path, start, end_pos, first, want))
                    .await
                    .map_err(|e| LogError::Io(std::io::Error::other(e)))??;
            let got = chunk.records.len();
            out.extend(chunk.records);
            from = out.last().map_or(from, |r| r.offset + 1);
            if let Some(offset) = chunk.corrupt_at {
                tracing::error!(topic, partition, offset, "Corrupt record in the log; its readers stop at it.");
                if out.is_empty() {
                    return Err(LogError::Corrupt { topic: topic.to_owned(), partition, offset });
                }
                break;
            }
            if got == 0 {
                // Nothing more in this segment: continue in the next one.
                from = from.max(seg_end);
            }
        }
        Ok(out)
    }

    async fn resolve(&self, topic: &str, partition: u32, at: StartAt) -> Result<u64, LogError> {
        let p = self.partition(topic, partition)?;
        let (earliest, end, candidates) = {
            let st = p.state.lock().expect("partition lock");
            let candidates: Vec<(u64, i64)> = st.segments.iter().map(|s| (s.base, s.last_ts)).collect();
            (st.segments[0].base, st.next_offset, candidates)
        };
        match at {
            StartAt::Earliest => Ok(earliest),
            StartAt::Latest => Ok(end),
            StartAt::Offset(o) => Ok(o.clamp(earliest, end)),
            StartAt::Timestamp(ts) => {
                // The first segment holding a record at or after `ts`, then scan it.
                let Some((base, _)) = candidates.into_iter().find(|(_, last)| *last >= ts) else { return Ok(end) };
                let mut from = base;
                loop {
                    let batch = self.read(topic, partition, from, 1000).await?;
                    if batch.is_empty() {
                        return Ok(end);
                    }
                    if let Some(r) = batch.iter().find(|r| r.timestamp_ms >= ts) {
                        return Ok(r.offset);
                    }
                    from = batch.last().expect("non-empty").offset + 1;
                }
            }
        }
    }

    fn watch_end(&self, topic: &str, partition: u32) -> Result<watch::Receiver<u64>, LogError> {
        Ok(self.partition(topic, partition)?.end.clone())
    }
}
