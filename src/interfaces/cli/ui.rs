//! `lasctl ui`: prints a one-time link that signs this browser into the daemon's web console.
//!
//! The link is minted by the running daemon (over the unix socket, or TCP with the token), is valid
//! for 15 minutes and works once; opening it sets an HttpOnly, SameSite=Strict session cookie.

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::Method;

use super::CliError;
use crate::home::LasHome;
use crate::interfaces::http::client::{ClientError, DaemonClient};

pub fn run() -> Result<(), CliError> {
    let home = LasHome::from_env()?;
    let client = DaemonClient::from_env(&home)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body = rt.block_on(async {
        let (status, mut s) = client
            .send(
                Method::POST,
                "/api/v1/ui/logins",
                &[("content-type", "application/json")],
                Bytes::from_static(b"{}"),
            )
            .await?;
        let mut buf = Vec::new();
        while let Some(chunk) = s.next().await {
            buf.extend_from_slice(&chunk?);
        }
        if !status.is_success() {
            return Err(ClientError::Status {
                status,
                message: String::from_utf8_lossy(&buf).trim().to_string(),
            });
        }
        Ok::<_, ClientError>(buf)
    })?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| CliError::Usage(format!("the daemon answered something else: {e}")))?;
    let url = v["url"].as_str().unwrap_or_default();
    println!("{url}");
    eprintln!("open this link in a browser on this machine; it works once, within 15 minutes");
    Ok(())
}
