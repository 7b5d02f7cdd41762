//! `tracehop up`: everything the system needs, then every service.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tracehop_launcher::{Launcher, SERVICES};

use crate::settings::Settings;

/// The launcher for a system run from `settings` ([`Settings::launcher`]).
pub fn launcher(settings: &Settings) -> anyhow::Result<Launcher> {
    settings.launcher()
}

/// Brings the system up; prints where things are. Without `detach`, stays in
/// the foreground until Ctrl-C, then stops everything.
pub async fn run(settings: &Settings, detach: bool, instances: u16) -> anyhow::Result<ExitCode> {
    bring_up(settings, instances).await?;
    if detach {
        println!("\nRunning in the background; stop it with `tracehop down`.");
        return Ok(ExitCode::SUCCESS);
    }
    println!("\nPress Ctrl-C to stop.");
    let _ = tokio::signal::ctrl_c().await;
    super::down::run(settings).await
}

/// Migrations, streams and consumers, without starting any service: what a
/// deployment runs once before its services start (see `compose.yaml`). The
/// system's own NATS server is started when it is the one used.
pub async fn prepare_only(settings: &Settings) -> anyhow::Result<ExitCode> {
    if let Some(own) = &settings.own_nats {
        own.start().await?;
    }
    let nats = super::connect_nats(settings).await?;
    prepare(settings, &nats).await?;
    Ok(ExitCode::SUCCESS)
}

async fn prepare(settings: &Settings, nats: &async_nats::Client) -> anyhow::Result<()> {
    let passwords = settings.database_passwords_dir();
    tracehop_launcher::ensure_database_passwords(&passwords)?;
    let password = |service| tracehop_launcher::database_password(&passwords, service);
    tracehop_launcher::prepare(nats, &settings.database_url, &settings.limits, settings.stream_replicas, password)
        .await
        .with_context(
            || "failed to prepare the system (is PostgreSQL running? set DATABASE_URL if it is not on 127.0.0.1:5432)",
        )?;
    println!("migrations applied, streams and consumers ready");
    Ok(())
}

/// Prepares and starts every process that is not running yet (`instances`
/// copies of each service that may run several), and waits until every
/// service answers.
pub async fn bring_up(settings: &Settings, instances: u16) -> anyhow::Result<()> {
    let launcher = settings.launcher()?.with_instances(instances)?;
    launcher.check_binaries()?;
    launcher.remember_instances()?;
    if let Some(own) = &settings.own_nats {
        match own.start().await? {
            (pid, true) => println!("  {:<15} started (pid {pid}) on {}", "nats-server", own.url()),
            (pid, false) => println!("  {:<15} already running (pid {pid})", "nats-server"),
        }
    }
    let nats = super::connect_nats(settings).await?;
    prepare(settings, &nats).await?;
    for process in launcher.processes() {
        let name = process.name();
        match launcher.running_pid(&name) {
            Some(pid) => println!("  {name:<15} already running (pid {pid})"),
            None => {
                let child = launcher.start(&name)?;
                println!("  {name:<15} started (pid {})", child.id());
            }
        }
    }
    if let Err(error) =
        tracehop_launcher::wait_ready(&nats, &SERVICES, &settings.gateway_addr, Duration::from_secs(60)).await
    {
        anyhow::bail!("{error:#}; see the logs in {}", settings.run_dir().display());
    }
    match instances {
        1 => println!("\nall {} services are up", SERVICES.len()),
        n => println!("\nall {} services are up, {n} copies of each but the gateway", SERVICES.len()),
    }
    println!("  gateway   {}", settings.gateway_url());
    match &settings.own_nats {
        Some(own) => println!(
            "  NATS      {} (the system's own; keys in {}, log {})",
            settings.nats_url,
            own.keys_dir().display(),
            own.log_path().display()
        ),
        None => println!("  NATS      {}", settings.nats_url),
    }
    println!("  logs      {}", settings.run_dir().display());
    if settings.smtp {
        println!("  mail      over SMTP (SMTP_URL)");
    } else {
        println!("  mail      {}", settings.mail_dir().display());
    }
    println!("\ntry: tracehop order --json   then   tracehop trace <trace_id>");
    Ok(())
}
