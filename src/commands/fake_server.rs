//! `fake-server`: receives its flags; serves the fake Chatwoot API on 127.0.0.1 until Ctrl-C
//! (printing its URL on stdout), or writes the account's ground truth and exits.

use std::time::Duration;

use crate::cli::FakeServerArgs;
use crate::error::Error;
use crate::fake::{FakeAccount, FakeServer, FakeServerConfig, FaultConfig, write_truth};

pub async fn fake_server(args: FakeServerArgs) -> Result<(), Error> {
    if let Some(path) = &args.dump_truth {
        let io_error = |source| Error::Io {
            what: format!("cannot write {}", path.display()),
            source,
        };
        let file = std::fs::File::create(path).map_err(io_error)?;
        let mut out = std::io::BufWriter::new(file);
        let account = FakeAccount::new(args.seed, args.contacts)
            .with_legacy_inbox_secrets(args.legacy_inbox_secrets);
        write_truth(&account, &mut out).map_err(io_error)?;
        return Ok(());
    }
    let config = FakeServerConfig {
        contacts: args.contacts,
        seed: args.seed,
        account_id: args.account_id,
        accounts: args.accounts,
        token: args.token.clone(),
        latency: Duration::from_millis(args.latency_ms),
        grow_every: args.grow_every,
        drift_every: args.drift.then_some(args.drift_every),
        faults: FaultConfig {
            fail_rate: args.fail_rate,
            drop_rate: args.drop_rate,
            rate_limit: args.rate_limit,
            rate_window_secs: args.rate_window_secs,
            malformed_page: args.malformed_page,
        },
        legacy_inbox_secrets: args.legacy_inbox_secrets,
        ..FakeServerConfig::default()
    };
    let server = FakeServer::start(config, args.port)
        .await
        .map_err(|source| Error::Io {
            what: format!("cannot listen on 127.0.0.1:{}", args.port),
            source,
        })?;
    println!("{}", server.base_url());
    let accounts = match args.accounts {
        1 => format!("account {}", args.account_id),
        n => format!(
            "each of accounts {} to {}",
            args.account_id,
            args.account_id + n - 1
        ),
    };
    super::report::fake_serving(&format!(
        "fake Chatwoot serving {} contacts of {accounts} at {} (token {:?}); Ctrl-C stops it",
        args.contacts,
        server.base_url(),
        args.token
    ));
    let _ = tokio::signal::ctrl_c().await;
    server.shutdown().await;
    Ok(())
}
