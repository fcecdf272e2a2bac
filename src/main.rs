//! The `chatwoot-export` binary: parse the command line, run it, report an error on one line,
//! return the exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;

use chatwoot_export::app;
use chatwoot_export::cli::{Cli, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("chatwoot-export: error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("chatwoot-export: error: {}", err.one_line());
            ExitCode::from(err.exit_code())
        }
    }
}

/// Log events go to stderr (stdout is for `--json` reports), at info level.
fn init_logs(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_target(false);
    // A second subscriber cannot exist in this process; ignore the impossible error.
    let _ = match format {
        LogFormat::Text => builder.without_time().try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
