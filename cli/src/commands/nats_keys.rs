//! `tracehop nats-keys`: the NATS users' keys, made once, for a server that
//! `up` does not start itself (compose, a deployment): a seed per user
//! (`<user>.nk`, 0600, in a 0700 folder) and `public-keys.env`, the
//! environment that the server's configuration (`deploy/nats-accounts.conf`)
//! reads the public keys from.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use tracehop_launcher::nats_server;

pub fn run(dir: &Path) -> anyhow::Result<ExitCode> {
    nats_server::ensure_keys(dir)?;
    let env: String =
        nats_server::public_key_env(dir)?.into_iter().map(|(name, key)| format!("{name}={key}\n")).collect();
    let path = dir.join("public-keys.env");
    std::fs::write(&path, env).with_context(|| format!("failed to write {}", path.display()))?;
    println!("keys in {} (one seed per user, readable by you only)", dir.display());
    println!("public keys for nats-server in {}", path.display());
    Ok(ExitCode::SUCCESS)
}
