//! Running as a service: systemd notifications and watchdog, health.
//!
//! See docs/SERVICE.md for the unit file, reload and the HTTP endpoints.

pub mod health;
pub mod http;
pub mod install;
mod install_files;
pub mod metrics;
pub mod notify;

pub use health::{Liveness, Verdict, Watchdog};
pub use notify::{Notifier, NotifySocket};
