//! Keystone's data plane. It never imports the console or the store: it runs from the specs it
//! is handed, so `keystone worker` can run it alone.

pub mod ingest;
pub mod log;
pub mod transforms;
