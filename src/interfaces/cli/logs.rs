//! `lasctl logs KIND/NAME [-f] [--tail N]`: a Module's output, from the daemon.

use std::io::Write;

use futures_util::StreamExt;

use super::{CliError, LogsArgs};
use crate::home::LasHome;
use crate::interfaces::http::client::DaemonClient;

pub fn run(a: LogsArgs) -> Result<(), CliError> {
    let (kind, name) = super::objref::one(&a.object)?;
    let home = LasHome::from_env()?;
    let client = DaemonClient::from_env(&home)?;
    let mut path = format!("/api/v1/{}/{name}/logs?follow={}", kind.plural(), a.follow);
    if let Some(n) = a.tail {
        path.push_str(&format!("&tail={n}"));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut body = client.get_stream(&path, &[]).await?;
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = body.next().await {
            out.write_all(&chunk?)?;
            out.flush()?;
        }
        Ok(())
    })
}
