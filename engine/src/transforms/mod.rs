//! Transforms a route job applies to each event's payload, one file per component.

pub mod filter;
pub mod hygiene;
pub mod projection;

pub use filter::Filter;
pub use hygiene::Hygiene;
pub use projection::Projection;
