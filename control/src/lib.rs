//! Keystone's control plane.
//!
//! The pure part (always compiled, also into the browser bundle) is the goal-state model:
//! names, specs, roles, validation and revision diffs. With the `store` feature the crate also
//! holds the revisioned source-of-truth store, password and token handling, and the goal-state
//! service every entry point (console, JSON API, CLI) goes through, so they share one set of
//! rules.

/// The wire names of a fieldless enum, written once (they match its serde names; a test checks):
/// `ALL`, `as_str`, `parse` and `Display`.
macro_rules! wire_names {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: [$ty; [$($name),+].len()] = [$($ty::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
            pub fn parse(s: &str) -> Option<$ty> {
                match s {
                    $($name => Some($ty::$variant),)+
                    _ => None,
                }
            }
        }
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

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
pub mod phase;
pub mod reconcile;
pub mod rewind;
pub mod telemetry;
pub mod time;
#[cfg(feature = "store")]
pub mod users;
pub mod validation;
pub mod workers;

#[cfg(feature = "store")]
pub mod auth;
#[cfg(feature = "store")]
pub mod filter_rules;
#[cfg(feature = "store")]
pub mod goal;
#[cfg(feature = "store")]
pub mod producers;
#[cfg(feature = "store")]
pub mod secret_box;
#[cfg(feature = "store")]
pub mod store;

pub use model::*;
pub use name::{Name, NameError};
pub use telemetry::{Distribution, JobCounters, JobSample, SinkErrorKind, SinkErrors, StreamSample};
pub use validation::{FieldError, ValidationErrors};
