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
    /// Migrations, streams and durable consumers only; no service is started.
    Prepare,
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
    /// Process the stream's events again through one consumer's own handler, rebuild its
    /// projection, or redrive its dead letters after a fix.
    #[command(group(clap::ArgGroup::new("start").args(["from_seq", "since"]).multiple(false)))]
    Replay {
        /// The consumer whose handler runs: loyalty, notification or analytics.
        #[arg(long)]
        consumer: String,
        /// Start at this stream sequence (1 is the beginning).
        #[arg(long, value_name = "N")]
        from_seq: Option<u64>,
        /// Start at the events stored within this long, e.g. 15m, 2h, 1d.
        #[arg(long, value_name = "DURATION", value_parser = commands::replay::parse_duration)]
        since: Option<std::time::Duration>,
        /// Reset the consumer's projection, then rebuild it from the whole stream.
        #[arg(long, conflicts_with = "since")]
        rebuild: bool,
        /// Redrive the consumer's dead-lettered messages instead.
        #[arg(long, conflicts_with_all = ["rebuild", "from_seq", "since"])]
        dead_letters: bool,
        #[arg(long)]
        json: bool,
    },
    /// Drop a consumer's dead letters on purpose (they will not be processed), saying what is dropped.
    DiscardDeadLetters {
        /// The consumer whose dead letters go: loyalty, notification, analytics or payment.
        #[arg(long)]
        consumer: String,
        #[arg(long)]
        json: bool,
    },
    /// Every service (up or down), every expected consumer and the open alerts.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop one service that `up` started: SIGKILL (a crash) unless --term.
    Kill {
        /// The service's name, as `tracehop status` lists it.
        service: String,
        /// SIGTERM instead: the service drains before it exits.
        #[arg(long)]
        term: bool,
        #[arg(long)]
        json: bool,
    },
    /// Start one service again and wait until it answers.
    Start {
        /// The service's name, as `tracehop status` lists it.
        service: String,
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = Settings::from_env();
    let result = match cli.command {
        Command::Up { detach } => commands::up::run(&settings, detach).await,
        Command::Down => commands::down::run(&settings).await,
        Command::Prepare => commands::up::prepare_only(&settings).await,
        Command::Order { items, customer, card, email, traceparent, json } => {
            let input = tracehop::client::OrderInput { customer, items, card, email, traceparent };
            commands::order::run(&settings, input, json).await
        }
        Command::Trace { trace_id, wait, json } => commands::trace::run(&settings, &trace_id, wait, json).await,
        Command::Watch { service, json } => commands::watch::run(&settings, service.as_deref(), json).await,
        Command::Demo => commands::demo::run(&settings).await,
        Command::Replay { consumer, from_seq, since, rebuild, dead_letters, json } => {
            let args = commands::replay::ReplayArgs { consumer, from_seq, since, rebuild, dead_letters };
            commands::replay::run(&settings, args, json).await
        }
        Command::DiscardDeadLetters { consumer, json } => commands::discard::run(&settings, &consumer, json).await,
        Command::Status { json } => commands::status::run(&settings, json).await,
        Command::Kill { service, term, json } => commands::kill::run(&settings, &service, term, json).await,
        Command::Start { service, json } => commands::start::run(&settings, &service, json).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
