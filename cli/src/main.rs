//! `tracehop`: run, drive and inspect the tracehop system.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracehop::client::ItemArg;
use tracehop::commands;
use tracehop::settings::Settings;

#[derive(Parser)]
#[command(name = "tracehop", version, about = "An event-driven checkout in which every hop is traced")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate, create streams and consumers, start every service, wait until healthy.
    Up {
        /// Return once the system is up, leaving it running (stop it with `tracehop down`).
        #[arg(long)]
        detach: bool,
    },
    /// Stop every service that `up` started.
    Down,
    /// Place an order through the gateway's HTTP API.
    Order {
        /// An item as SKU:QTY; repeat for more items.
        #[arg(long = "sku", value_name = "SKU:QTY", default_value = "KB-001:1")]
        items: Vec<ItemArg>,
        #[arg(long, default_value = "alice")]
        customer: String,
        /// Card number; 4000000000000002 is declined (see the README for all test cards).
        #[arg(long, default_value = "4242424242424242")]
        card: String,
        #[arg(long)]
        email: Option<String>,
        /// Send this W3C traceparent, to continue a trace of your own.
        #[arg(long)]
        traceparent: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show a trace as a waterfall, read from the span feed.
    Trace {
        trace_id: String,
        /// Wait up to this many seconds until the trace stops growing.
        #[arg(long, value_name = "SECS")]
        wait: Option<f64>,
        #[arg(long)]
        json: bool,
    },
    /// Print spans as they finish.
    Watch {
        /// Only this service's spans.
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A guided run: up, a few orders (one declined), each trace as a waterfall.
    Demo,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = Settings::from_env();
    let result = match cli.command {
        Command::Up { detach } => commands::up::run(&settings, detach).await,
        Command::Down => commands::down::run(&settings),
        Command::Order { items, customer, card, email, traceparent, json } => {
            let input = tracehop::client::OrderInput { customer, items, card, email, traceparent };
            commands::order::run(&settings, input, json).await
        }
        Command::Trace { trace_id, wait, json } => commands::trace::run(&settings, &trace_id, wait, json).await,
        Command::Watch { service, json } => commands::watch::run(&settings, service.as_deref(), json).await,
        Command::Demo => commands::demo::run(&settings).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
