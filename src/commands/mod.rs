//! The command layer: one file per subcommand, `settings` (flags, pipeline file and environment
//! -> resolved settings, for every command) and `report` (what people read on stderr).
//!
//! Receives the parsed command line; runs the library (`runner`, `pipeline`, `fake`) with the
//! resolved settings and prints what it returns. Only this layer and `main` print. Data flows
//! one way: `main` -> `commands` -> the library, never back up.

mod completions;
mod contacts;
mod demo;
mod fake_server;
pub mod log;
mod plan;
mod progress;
mod report;
mod run;
mod settings;
mod validate;

use crate::cli::{Cli, Command};
use crate::error::Error;

/// Runs one parsed command line.
pub async fn execute(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Contacts(args) => contacts::contacts(args).await,
        Command::Demo(args) => demo::demo(args).await,
        Command::FakeServer(args) => fake_server::fake_server(args).await,
        Command::Run(args) => run::run(args).await,
        Command::Validate(args) => validate::validate(args),
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => completions::man(args),
    }
}
