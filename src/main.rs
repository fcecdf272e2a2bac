//! The `chatwoot-export` binary: parse the command line, run it, report an error on one line,
//! return the exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;

use chatwoot_export::app;
use chatwoot_export::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
