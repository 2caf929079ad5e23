//! Keystone's control plane.
//!
//! The pure part (always compiled, also into the browser bundle) is the goal-state model:
//! names, specs, roles, validation and revision diffs. With the `store` feature the crate also
//! holds the revisioned source-of-truth store, password and token handling, and the goal-state
//! service every entry point (console, JSON API, CLI) goes through, so they share one set of
//! rules.

pub mod alerts;
pub mod approvals;
pub mod backfill;
pub mod config;
pub mod deployments;
pub mod diff;
pub mod egress;
pub mod filter_fields;
pub mod lineage;
pub mod model;
pub mod name;
pub mod reconcile;
pub mod rewind;
pub mod telemetry;
#[cfg(feature = "store")]
pub mod users;
pub mod validation;
pub mod workers;

#[cfg(feature = "store")]
pub mod account_events;
#[cfg(feature = "store")]
pub mod alert_store;
#[cfg(feature = "store")]
pub mod approval_store;
#[cfg(feature = "store")]
pub mod auth;
#[cfg(feature = "store")]
pub mod config_store;
#[cfg(feature = "store")]
pub mod deployment_store;
#[cfg(feature = "store")]
pub mod filter_rules;
#[cfg(feature = "store")]
pub mod goal;
#[cfg(feature = "store")]
pub mod jobs;
#[cfg(feature = "store")]
pub mod lease_store;
#[cfg(feature = "store")]
pub mod operations;
#[cfg(feature = "store")]
pub mod producers;
#[cfg(feature = "store")]
pub mod samples;
#[cfg(feature = "store")]
pub mod secret_box;
#[cfg(feature = "store")]
pub mod store;

pub use model::*;
pub use name::{Name, NameError};
pub use telemetry::{Distribution, JobCounters, JobSample, SinkErrorKind, SinkErrors, StreamSample};
pub use validation::{FieldError, ValidationErrors};
