//! `validate FILE`: receives a pipeline file and its `--set` overrides; prints that it is
//! valid, or every problem on its own line and exits 2.

use super::settings::load_pipeline;
use crate::cli::ValidateArgs;
use crate::error::Error;

/// Every problem on its own line, exit 2 if any.
pub fn validate(args: ValidateArgs) -> Result<(), Error> {
    match load_pipeline(&args.file, &args.sets) {
        Ok(pipeline) => {
            eprintln!(
                "chatwoot-export: {} is valid: {} account(s), {} to {}",
                args.file.display(),
                pipeline.accounts.len(),
                pipeline.sink.format.extension(),
                pipeline.sink.destination
            );
            Ok(())
        }
        Err(Error::Config(errors)) => {
            for problem in &errors.problems {
                eprintln!("{}: {problem}", errors.file.display());
            }
            Err(Error::Usage(format!(
                "{} has {} problem(s), listed above",
                errors.file.display(),
                errors.problems.len()
            )))
        }
        Err(other) => Err(other),
    }
}
