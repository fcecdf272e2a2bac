//! The `chatwoot-export` binary: parse the command line, run it, report an error on one line,
//! return the exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;

use chatwoot_export::cli::{Cli, Command, LogFormat};
use chatwoot_export::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    chatwoot_export::commands::log::set_json(cli.log_format == LogFormat::Json);
    // One account's export runs on one thread: its work is a chain (fetch -> flatten -> spill)
    // that waits on the network, and one thread spares the cross-thread wake-ups of a thread
    // pool (a tenth of the exporter's CPU at zero latency, five times fewer context switches).
    // A pipeline run may export several accounts at once, and the fake server serves many
    // requests at once: they keep the pool.
    let mut builder = match cli.command {
        Command::Contacts(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("chatwoot-export: error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // With --log-format json, the error is a JSON event like every other line.
            chatwoot_export::commands::log::say("error", &format!("error: {}", err.one_line()));
            ExitCode::from(err.exit_code())
        }
    }
}

/// Log events go to stderr (stdout is for `--json` reports): this crate's at info level,
/// other crates' only from warn up (object_store, for one, logs each retry of an upload at
/// info, which would bury the one-line error under ten).
fn init_logs(format: LogFormat) {
    use tracing::Level;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = Targets::new()
        // The library and this binary (both `chatwoot_export`).
        .with_target("chatwoot_export", Level::INFO)
        .with_default(Level::WARN);
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(Level::INFO)
        .with_target(false);
    // A second subscriber cannot exist in this process; ignore the impossible error.
    let _ = match format {
        LogFormat::Text => builder.without_time().finish().with(filter).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(filter)
            .try_init(),
    };
}
