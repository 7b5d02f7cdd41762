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
        /// Copies of each service (the gateway runs once): they share requests and
        /// deliveries, and elect a leader or split partitions where work must happen once.
        #[arg(long, default_value_t = 1)]
        instances: u16,
    },
    /// Stop every service that `up` started.
    Down,
    /// Migrations, streams and durable consumers only; no service is started.
    Prepare,
    /// Make the NATS users' keys (once) for a server started elsewhere, e.g. by compose.
    NatsKeys {
        /// Where the keys go; default: the keys folder `up` uses (TRACEHOP_NATS_KEYS, or
        /// TRACEHOP_HOME/nats/keys).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
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
        /// A service (every copy of it) or one copy (`order-2`), as `tracehop status` lists them.
        service: String,
        /// SIGTERM instead: the service drains before it exits.
        #[arg(long)]
        term: bool,
        #[arg(long)]
        json: bool,
    },
    /// Start one service again and wait until it answers.
    Start {
        /// A service (every copy `up` started) or one copy (`order-2`), as `tracehop status`
        /// lists them.
        service: String,
        #[arg(long)]
        json: bool,
    },
    /// Checkouts at a constant arrival rate (an open model), then answers, latency and drain.
    Load {
        /// Requests per second, started on schedule whether or not earlier ones answered.
        #[arg(long)]
        rate: f64,
        /// How long requests keep starting, e.g. 30s, 2m.
        #[arg(long, value_parser = commands::load::parse_duration)]
        duration: std::time::Duration,
        /// Most requests in flight; a request due beyond it is not sent but counted as limited.
        #[arg(long, value_name = "C")]
        concurrency_limit: Option<usize>,
        /// Share of orders (0 to 1) by premium customers, with several items.
        #[arg(long, value_name = "P", default_value_t = 0.0)]
        premium_ratio: f64,
        /// Share of orders (0 to 1) paid with the declined test card.
        #[arg(long, value_name = "Q", default_value_t = 0.0)]
        decline_ratio: f64,
        /// A request not answered within this counts as a timeout.
        #[arg(long, value_parser = commands::load::parse_duration, default_value = "30s")]
        timeout: std::time::Duration,
        #[arg(long)]
        json: bool,
    },
    /// Measure this machine's limits and the system's highest sustained checkout rate, with
    /// tracing on and off, on a private system of its own; writes BENCHMARKS.md (about 10 minutes).
    Bench {
        /// How long each step of the rate search sends.
        #[arg(long, value_parser = commands::load::parse_duration, default_value = "15s")]
        step: std::time::Duration,
        /// The search's first rate, orders per second.
        #[arg(long, value_name = "RATE", default_value_t = 100.0)]
        start_rate: f64,
        /// A rate whose gateway p99 is above this is not sustained.
        #[arg(long, value_parser = commands::load::parse_duration, default_value = "250ms")]
        p99_limit: std::time::Duration,
        /// Most steps per search.
        #[arg(long, value_name = "N", default_value_t = 9)]
        max_steps: usize,
        /// Where the report goes; - for none.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The slowest checkout traces in the span feed, each with its culprit.
    Slowest {
        /// Only checkouts that started within this long, e.g. 15m.
        #[arg(long, value_parser = commands::load::parse_duration)]
        since: Option<std::time::Duration>,
        #[arg(long, value_name = "N", default_value_t = 10)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Why one trace took its time: critical path, culprit, errors, and typical durations.
    Explain {
        trace_id: String,
        /// Wait up to this many seconds until the trace stops growing.
        #[arg(long, value_name = "SECS")]
        wait: Option<f64>,
        #[arg(long)]
        json: bool,
    },
    /// A console in the browser: place orders, flip scenarios, watch traces, checkouts and alerts live.
    Console {
        /// Where to listen; an address other than a loopback one needs a token.
        #[arg(long, default_value = tracehop::console::DEFAULT_ADDR)]
        addr: std::net::SocketAddr,
        /// The token every request must carry (made and printed when the address is not a
        /// loopback one and none is given); at least 16 characters. Also TRACEHOP_CONSOLE_TOKEN,
        /// which keeps it out of the process list.
        #[arg(long)]
        token: Option<String>,
    },
    /// The live scenarios: list them, switch a fault on or off, apply or remove its fix.
    Scenario {
        #[command(subcommand)]
        action: ScenarioCommand,
    },
}

#[derive(Subcommand)]
enum ScenarioCommand {
    /// Every scenario, its state, its fault and its fix.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Switch a scenario's fault on.
    On {
        /// slow-inventory, payment-down, loyalty-n-plus-one or analytics-down.
        name: String,
        /// slow-inventory: the share of reservations that hit the slow path (0 to 1; default 0.02).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long)]
        json: bool,
    },
    /// Switch a scenario's fault off.
    Off {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Apply a scenario's fix (it acts while the fault is on).
    Fix {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a scenario's fix.
    Unfix {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

impl ScenarioCommand {
    fn action(self) -> anyhow::Result<(commands::scenario::Action, bool)> {
        use commands::scenario::Action;
        use tracehop_scenarios::{Change, Scenario};
        Ok(match self {
            ScenarioCommand::List { json } => (Action::List, json),
            ScenarioCommand::On { name, rate, json } => {
                (Action::Flip(Scenario::parse(&name)?, Change::On { rate }), json)
            }
            ScenarioCommand::Off { name, json } => (Action::Flip(Scenario::parse(&name)?, Change::Off), json),
            ScenarioCommand::Fix { name, json } => (Action::Flip(Scenario::parse(&name)?, Change::Fix), json),
            ScenarioCommand::Unfix { name, json } => (Action::Flip(Scenario::parse(&name)?, Change::Unfix), json),
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Up { detach, instances } => commands::up::run(&settings, detach, instances).await,
        Command::Down => commands::down::run(&settings).await,
        Command::Prepare => commands::up::prepare_only(&settings).await,
        Command::NatsKeys { dir } => {
            let dir = dir.or_else(|| settings.nats_keys.clone()).unwrap_or_else(|| settings.home.join("nats/keys"));
            commands::nats_keys::run(&dir)
        }
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
        Command::Load { rate, duration, concurrency_limit, premium_ratio, decline_ratio, timeout, json } => {
            let args =
                commands::load::LoadArgs { rate, duration, concurrency_limit, premium_ratio, decline_ratio, timeout };
            commands::load::run(&settings, args, json).await
        }
        Command::Bench { step, start_rate, p99_limit, max_steps, out, json } => {
            let config =
                tracehop::bench::BenchConfig { step, start_rate, p99_limit, ..tracehop::bench::BenchConfig::default() };
            let out = (out.as_os_str() != "-").then_some(out);
            commands::bench::run(&settings, commands::bench::BenchArgs { config, out, max_steps }, json).await
        }
        Command::Slowest { since, limit, json } => commands::slowest::run(&settings, since, limit, json).await,
        Command::Explain { trace_id, wait, json } => commands::explain::run(&settings, &trace_id, wait, json).await,
        Command::Console { addr, token } => commands::console::run(&settings, addr, token).await,
        Command::Scenario { action } => match action.action() {
            Ok((action, json)) => commands::scenario::run(&settings, action, json).await,
            Err(error) => Err(error),
        },
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
