//! `keystone bench ...`: throughput figures for the README, measured on the machine at hand.

use keystone_engine::log::embedded::EmbeddedConfig;
use keystone_engine::log::{EmbeddedLog, Log, NewRecord, Retention};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Appends `events` durable events of `size` bytes in several ways and prints events/s.
pub async fn log(dir: &Path, events: usize, size: usize) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let log = Arc::new(EmbeddedLog::open(dir, EmbeddedConfig::default())?);
    let keep = Retention { max_age_ms: i64::MAX, max_bytes_per_partition: None };
    let payload = vec![b'x'; size];
    println!("Embedded log, {events} events of {size} bytes per scenario, fsync before every acknowledgement:");
    println!("{:<44} {:>12} {:>10} {:>9}", "scenario", "events/s", "MB/s", "fsyncs");
    // (name, producers, events per append, partitions)
    let scenarios = [
        ("1 producer, 1 event per append", 1, 1, 1),
        ("64 producers, 1 event per append", 64, 1, 1),
        ("64 producers, 1 event per append, 8 parts", 64, 1, 8),
        ("4 producers, 100-event batches", 4, 100, 1),
        ("4 producers, 100-event batches, 8 parts", 4, 100, 8),
    ];
    for (i, (name, producers, batch, partitions)) in scenarios.into_iter().enumerate() {
        let topic = format!("bench-{i}");
        log.ensure_topic(&topic, partitions, keep).await?;
        // The sequential scenario is fsync-bound: fewer events keep it short.
        let total = if producers == 1 && batch == 1 { events.min(2_000) } else { events };
        let per_producer = total / producers / batch;
        let fsyncs_before = log.fsync_count();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for p in 0..producers {
            let (log, topic, payload) = (log.clone(), topic.clone(), payload.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0..per_producer {
                    let records = (0..batch)
                        .map(|k| NewRecord {
                            partition: ((p + n + k) % partitions as usize) as u32,
                            timestamp_ms: 0,
                            key: None,
                            value: payload.clone(),
                        })
                        .collect();
                    log.append(&topic, records).await?;
                }
                Ok::<_, keystone_engine::log::LogError>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let secs = started.elapsed().as_secs_f64();
        let done = (per_producer * producers * batch) as f64;
        println!(
            "{:<44} {:>12.0} {:>10.1} {:>9}",
            name,
            done / secs,
            done * size as f64 / secs / 1e6,
            log.fsync_count() - fsyncs_before
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
