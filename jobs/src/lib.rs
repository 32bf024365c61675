//! The campaign domain of Mailing: the store (SQLite or PostgreSQL through sqlx), the
//! delivery ledger, the job queue (apalis on SQLite or Redis), the pipeline stages that
//! plan and send a campaign, Liquid rendering, MIME building and the delivery providers.
//!
//! The HTTP layer lives in `mailing-api`; process wiring, configuration parsing and the
//! supervision tree live in `mailing-engine`. Nothing here reads environment variables:
//! every component takes its configuration as a typed struct.

pub mod backup;
pub mod buffers;
pub mod health;
pub mod message;
pub mod model;
pub mod pipeline;
pub mod provider;
pub mod queue;
pub mod ratelimit;
pub mod render;
pub mod store;
pub mod telemetry;
pub mod unsubscribe;

pub use model::*;
pub use store::{Store, StoreError};
