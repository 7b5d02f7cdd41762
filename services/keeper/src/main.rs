//! The keeper process.

use tracehop_keeper::{Config, SERVICE, run};

/// The keeper decodes every span of the feed into owned protobuf messages
/// and drops most of them seconds later: under load, glibc's malloc and free
/// were 40% of its CPU (`perf`). With mimalloc its CPU per checkout fell
/// from 0.56-0.60 ms to 0.46 ms (BENCHMARKS.md); the other services, which
/// allocate far less, showed no difference, so they keep the system's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    // The keeper's own spans stay out of the feed it reads, and no span of
    // its own goes over OTLP, where only what it keeps belongs; its metrics
    // and logs go there like every service's.
    let mut base = config.base.clone();
    base.span_feed = false;
    base.tail_sampling = true;
    tracehop_service::run(SERVICE, env!("CARGO_PKG_VERSION"), &base, |runtime| run(config, runtime)).await
}
