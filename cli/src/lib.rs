//! The `tracehop` command: bring the system up and down, place orders
//! through the gateway, and read traces back from the span feed.
//!
//! - [`settings`]: where NATS, PostgreSQL, the gateway and the state folder
//!   are (environment variables with developer-machine defaults).
//! - [`commands`]: one module per subcommand (`up`, `down`, `prepare`,
//!   `nats-keys`, `order`, `trace`, `watch`, `status`, `kill`, `start`,
//!   `replay`, `discard-dead-letters`, `demo`, `load`, `bench`, `slowest`,
//!   `explain`, `scenario`, `console`).
//! - [`client`]: the gateway's HTTP API as the command uses it.
//! - [`render`]: waterfalls, watch lines and JSON for traces.
//! - [`load`]: the load engine behind `tracehop load` (an open model over
//!   HTTP), callable as a library.
//! - [`bench`]: the measurements behind `tracehop bench` (the parts'
//!   limits, the highest sustained rate with tracing on and off, drain, CPU
//!   per order), on a private system.
//! - [`analysis`]: critical path, self time, culprit and typical durations of
//!   traces, behind `tracehop slowest` and `explain`.
//! - [`term`]: the one ANSI palette and sanitizer of terminal output.
//! - [`console`]: `tracehop console`, the same views and actions in a
//!   browser, served by the command (live parts by server-sent events).

pub mod analysis;
pub mod bench;
pub mod client;
pub mod commands;
pub mod console;
pub mod load;
pub mod render;
pub mod settings;
pub mod term;
