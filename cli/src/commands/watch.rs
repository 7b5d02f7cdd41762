//! `tracehop watch`: spans as they finish, until Ctrl-C.

use std::process::ExitCode;

use async_nats::jetstream;
use futures::StreamExt as _;

use crate::render;
use crate::settings::Settings;

pub async fn run(settings: &Settings, service: Option<&str>, as_json: bool) -> anyhow::Result<ExitCode> {
    let nats = super::connect_nats(settings).await?;
    let js = jetstream::new(nats);
    let spans = tracehop_spanfeed::watch(&js, service).await?;
    futures::pin_mut!(spans);
    let color = super::is_terminal();
    loop {
        let next = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            next = spans.next() => next,
        };
        match next {
            Some(Ok(span)) => {
                if as_json {
                    println!("{}", serde_json::to_string(&span)?);
                } else {
                    println!("{}", render::watch_line(&span, color));
                }
            }
            Some(Err(error)) => eprintln!("warning: {error}"),
            None => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}
