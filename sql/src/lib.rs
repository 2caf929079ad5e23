//! Keystone's streaming SQL. A processor's query is parsed by `sqlparser` and planned, typed and
//! checked by Apache DataFusion against its input streams (their JSON Schemas as tables); this
//! crate adds what a batch engine lacks: group windows in event time and the refusal of queries
//! whose state would grow without bound. Keystone's own operators run the plan (see the engine).

mod catalog;
mod dedupe;
mod error;
mod plan;
pub mod run;
pub mod schema;
pub mod windows;

pub use error::SqlError;
pub use plan::{plan, read_streams, Column, Keep, Query, Shape, SQL_MAX_BYTES};
pub use windows::Window;

#[cfg(test)]
mod tests;
