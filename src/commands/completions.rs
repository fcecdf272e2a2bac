//! `completions SHELL` and `man` (hidden): receive the shell or the man page's folder; emit a
//! completion script or the man page, generated from the clap definitions in `cli`, so they
//! never fall behind the flags.

use std::io::Write;

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::error::Error;

/// The name the scripts complete and the man page documents.
const BIN: &str = "chatwoot-export";

/// Prints the completion script for `args.shell` on stdout.
pub fn completions(args: CompletionsArgs) -> Result<(), Error> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), BIN, &mut script);
    write_stdout(&script)
}

/// Prints the main man page on stdout, or writes every command's page into `args.out_dir`.
pub fn man(args: ManArgs) -> Result<(), Error> {
    let command = Cli::command();
    match args.out_dir {
        Some(dir) => {
            let io = |source| Error::Io {
                what: format!("cannot write the man pages into {}", dir.display()),
                source,
            };
            std::fs::create_dir_all(&dir).map_err(io)?;
            clap_mangen::generate_to(command, &dir).map_err(io)
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .map_err(|source| Error::Io {
                    what: "cannot render the man page".into(),
                    source,
                })?;
            write_stdout(&page)
        }
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|source| Error::Io {
            what: "cannot write to stdout".into(),
            source,
        })
}
