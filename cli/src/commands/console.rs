//! `tracehop console`: serves [`crate::console`] until Ctrl-C or SIGTERM.
//! On a loopback address it needs no token unless one is given; on any
//! other address (which must be asked for with `--addr`) it needs one, made
//! here and printed when none is given.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::console::{self, Config};
use crate::settings::Settings;

pub async fn run(settings: &Settings, addr: SocketAddr, token: Option<String>) -> anyhow::Result<ExitCode> {
    let token = token.filter(|t| !t.trim().is_empty()).or_else(|| settings.console_token.clone());
    let token = match token {
        Some(token) if token.len() < 16 => anyhow::bail!("a console token must be at least 16 characters"),
        Some(token) => Some(token),
        None if console::needs_token(&addr) => Some(console::new_token()),
        None => None,
    };
    let nats = super::connect_nats(settings).await?;
    let launcher = settings.launcher()?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("failed to listen on {addr}"))?;
    let addr = listener.local_addr()?;
    let url = match &token {
        Some(token) => format!("http://{addr}/?token={token}"),
        None => format!("http://{addr}/"),
    };
    println!("tracehop console on {url}");
    if console::needs_token(&addr) {
        println!(
            "  reachable beyond this machine: only with the token above; anyone who has it can place orders and flip faults"
        );
    }
    println!("  Ctrl-C stops it");
    let config = Config {
        addr,
        token,
        gateway_url: settings.gateway_url(),
        launcher,
        nats,
        changed_by: super::scenario::changed_by("tracehop console"),
    };
    console::serve(listener, config, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
