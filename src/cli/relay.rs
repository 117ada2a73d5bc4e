//! `mozpool relay`: a relay channel by hand, for techs at the rack, through a running
//! service's API (the service owns the board's port, so this never opens it itself).
//!
//! Exit codes (as every client subcommand): 0 success, 1 the service refused or the request
//! failed, 2 usage error, 3 the service could not be reached.

use clap::Args;
use hyper::Method;

use crate::cli::{Exit, UrlArg};

/// `mozpool relay BOARD BANK RELAY status|on|off|cycle`.
#[derive(Debug, Args)]
// clap ignores a doc comment on the flattened `url`; the other docs are --help text.
#[allow(missing_docs)]
pub struct RelayArgs {
    /// Board name.
    pub board: String,
    /// Bank (1-32; the board's `banks` setting decides which exist).
    pub bank: u8,
    /// Relay (1-8).
    pub relay: u8,
    /// What to do.
    #[arg(value_parser = ["status", "on", "off", "cycle"])]
    pub op: String,
    #[command(flatten)]
    pub url: UrlArg,
}

/// `mozpool relay BOARD BANK RELAY status|on|off|cycle`: prints `OK`, or the status as the
/// original's relay tool did (`bank B, relay R status: on|off`, on = device powered).
///
/// # Errors
/// [`Exit`] with the exit code.
pub async fn relay(a: RelayArgs) -> Result<(), Exit> {
    if !(1..=crate::domain::wiring::MAX_BANKS).contains(&a.bank) || !(1..=8).contains(&a.relay) {
        return Err(Exit {
            code: 2,
            message: "bank must be 1-32 and relay 1-8".into(),
        });
    }
    let client = a.url.client();
    let path = format!(
        "/api/relay/{}/bank{}:relay{}/{}/",
        crate::cli::encode(&a.board),
        a.bank,
        a.relay,
        a.op
    );
    if a.op == "status" {
        let (_, v) = client.call(Method::GET, &path, None).await?;
        let s = match v["powered"].as_bool() {
            Some(true) => "on",
            Some(false) => "off",
            None => "unknown (this board cannot read back)",
        };
        println!("bank {}, relay {} status: {s}", a.bank, a.relay);
    } else {
        client.call(Method::POST, &path, None).await?;
        println!("OK");
    }
    Ok(())
}
