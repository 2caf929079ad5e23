//! Wiring only: settings, the HTTP application, and the admin commands. The logic lives in
//! `app` (console), `keystone-api` (JSON API) and `keystone-control` (goal state).

pub mod admin;
pub mod apply;
pub mod bench;
pub mod bench_cdc;
pub mod bench_nexmark;
pub mod csrf;
pub mod serve;
pub mod sessions;
pub mod settings;
pub mod startup;
