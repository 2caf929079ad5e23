//! The updating operator: a GROUP BY without a window. One group per key, updated as events
//! arrive; after each batch the groups it changed are emitted (an upsert by key: every update of
//! a key carries the same result id), and a group unseen for the state TTL is forgotten. The TTL
//! is measured in event time against the watermark, not by the wall clock, so a replay after a
//! crash forgets exactly what the first run forgot. Its snapshot is a row per group: the event
//! time it was last seen, its key, its accumulators' states.

use super::grouping::{int64, Accumulators, Grouping};
use datafusion_common::arrow::array::{ArrayRef, Int64Array, RecordBatch, TimestampMillisecondArray};
use datafusion_common::arrow::datatypes::{DataType, Field, Schema};
use datafusion_common::{plan_err, Result, ScalarValue};
use datafusion_expr::Aggregate;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

struct Group {
    accs: Accumulators,
    /// The latest event time of its events, ms since the epoch.
    last_seen: i64,
}

pub(crate) struct KeyedAggregate {
    grouping: Grouping,
    ttl_ms: i64,
    lateness_ms: i64,
    groups: HashMap<Vec<ScalarValue>, Group>,
    /// Keys updated since the last emit.
    changed: HashSet<Vec<ScalarValue>>,
    /// No group was last seen before this (`i64::MAX` when none): most calls expire nothing.
    oldest_seen: i64,
}

/// An emitted group's identity, for its result's id.
pub(crate) struct Updated {
    pub(crate) key: Vec<ScalarValue>,
    pub(crate) last_seen: i64,
}

impl KeyedAggregate {
    pub(crate) fn compile(a: &Aggregate, ttl_ms: i64, lateness_ms: i64) -> Result<KeyedAggregate> {
        Ok(KeyedAggregate {
            grouping: Grouping::compile(a, |_| false)?,
            ttl_ms,
            lateness_ms,
            groups: HashMap::new(),
            changed: HashSet::new(),
            oldest_seen: i64::MAX,
        })
    }

    /// Whether an event at `ts` is older than any group can still remember: its key's group may
    /// have been forgotten already, so counting it would restart the key from nothing.
    pub(crate) fn is_late(&self, ts: i64, watermark: Option<i64>) -> bool {
        watermark.is_some_and(|w| ts.saturating_add(self.ttl_ms).saturating_add(self.lateness_ms) <= w)
    }

    pub(crate) fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Adds a batch of the aggregate's input; `times` holds each row's event time.
    pub(crate) fn update(&mut self, batch: &RecordBatch, times: &TimestampMillisecondArray) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let evaluated = self.grouping.evaluate(batch)?;
        let mut by_key: HashMap<Vec<ScalarValue>, (i64, Vec<u32>)> = HashMap::new();
        for row in 0..batch.num_rows() {
            let entry = by_key.entry(evaluated.key(row)?).or_insert((i64::MIN, Vec::new()));
            entry.0 = entry.0.max(times.value(row));
            entry.1.push(row as u32);
        }
        for (key, (seen, rows)) in by_key {
            let group = match self.groups.entry(key.clone()) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => v.insert(Group { accs: self.grouping.accumulators()?, last_seen: seen }),
            };
            self.grouping.update(&mut group.accs, &evaluated, rows)?;
            group.last_seen = group.last_seen.max(seen);
            self.oldest_seen = self.oldest_seen.min(group.last_seen);
            self.changed.insert(key);
        }
        Ok(())
    }

    /// The groups changed since the last call, as the aggregate's output rows (ordered by key,
    /// so a run is reproducible), and which group each row is.
    pub(crate) fn emit(&mut self) -> Result<Option<(RecordBatch, Vec<Updated>)>> {
        if self.changed.is_empty() {
            return Ok(None);
        }
        let mut keys: Vec<Vec<ScalarValue>> = self.changed.drain().collect();
        keys.sort_by_cached_key(|k| format!("{k:?}"));
        let mut columns = self.grouping.key_columns(keys.iter().map(Vec::as_slice))?;
        let mut updated = Vec::with_capacity(keys.len());
        let mut groups: Vec<&mut Group> = Vec::with_capacity(keys.len());
        // Distinct keys borrow distinct groups; collected by one pass over the map.
        let wanted: HashMap<&Vec<ScalarValue>, usize> = keys.iter().enumerate().map(|(i, k)| (k, i)).collect();
        let mut slots: Vec<Option<&mut Group>> = (0..keys.len()).map(|_| None).collect();
        for (key, group) in self.groups.iter_mut() {
            if let Some(&i) = wanted.get(key) {
                slots[i] = Some(group);
            }
        }
        for (key, slot) in keys.iter().zip(slots) {
            let group = slot.expect("a changed key has a group");
            updated.push(Updated { key: key.clone(), last_seen: group.last_seen });
            groups.push(group);
        }
        columns.extend(self.grouping.values(groups.into_iter().map(|g| &mut g.accs))?);
        let batch = super::steps::batch_of(&self.grouping.names, columns, keys.len())?;
        Ok(Some((batch, updated)))
    }

    /// Forgets the groups the watermark has left behind by more than the TTL.
    pub(crate) fn expire(&mut self, watermark: Option<i64>) -> usize {
        let Some(w) = watermark else { return 0 };
        if self.oldest_seen.saturating_add(self.ttl_ms) > w {
            return 0;
        }
        let before = self.groups.len();
        let ttl = self.ttl_ms;
        self.groups.retain(|_, g| g.last_seen.saturating_add(ttl) > w);
        self.oldest_seen = self.groups.values().map(|g| g.last_seen).min().unwrap_or(i64::MAX);
        before - self.groups.len()
    }

    /// Every group as a row: `last_seen`, the key columns, then each accumulator's intermediate
    /// state.
    pub(crate) fn snapshot(&mut self) -> Result<RecordBatch> {
        let mut fields = vec![Field::new("last_seen", DataType::Int64, false)];
        for (i, ty) in self.grouping.key_types.iter().enumerate() {
            fields.push(Field::new(format!("key_{i}"), ty.clone(), true));
        }
        fields.extend(self.grouping.state_fields()?);
        let mut rows: Vec<(&Vec<ScalarValue>, &mut Group)> = self.groups.iter_mut().collect();
        let mut columns: Vec<ArrayRef> =
            vec![Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, g)| g.last_seen)))];
        columns.extend(self.grouping.key_columns(rows.iter().map(|(k, _)| k.as_slice()))?);
        columns.extend(self.grouping.state_columns(rows.iter_mut().map(|(_, g)| &mut g.accs))?);
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        let changed = std::mem::take(&mut self.changed);
        self.restore(&batch)?;
        self.changed = changed;
        Ok(batch)
    }

    /// Replaces the groups with those of a snapshot.
    pub(crate) fn restore(&mut self, batch: &RecordBatch) -> Result<()> {
        let expected = self.grouping.snapshot_width(1)?;
        if batch.num_columns() != expected {
            return plan_err!(
                "the snapshot has {} columns where this query's state has {expected}",
                batch.num_columns()
            );
        }
        self.groups.clear();
        self.changed.clear();
        let seen = int64(batch.column(0))?;
        let first_state = 1 + self.grouping.key_types.len();
        for row in 0..batch.num_rows() {
            let key = self.grouping.snapshot_key(batch, 1, row)?;
            let accs = self.grouping.restore(batch, first_state, row)?;
            self.groups.insert(key, Group { accs, last_seen: seen.value(row) });
        }
        self.oldest_seen = self.groups.values().map(|g| g.last_seen).min().unwrap_or(i64::MAX);
        Ok(())
    }
}
