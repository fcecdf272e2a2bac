//! `validate FILE`: receives a pipeline file and its `--set` overrides; prints that it is
//! valid, or every problem on its own line and exits 2. With `--offline`, no environment
//! variable is read: each `${VAR}` the file uses is reported as set at run time, for CI that
//! checks pipeline files without the secrets.
//!
//! Also the destination check `run` and `contacts` make before fetching anything
//! (`check_destination`): a marker object created and deleted at the destination.

use std::cell::RefCell;
use std::collections::BTreeSet;

use super::settings::{load_pipeline, read_pipeline};
use crate::cli::ValidateArgs;
use crate::config::{self, ConfigErrors, ConfigProblem};
use crate::error::Error;
use crate::store::Destination;

/// Test hook, for the tests only: set, `run` and `contacts` skip the destination's write check,
/// so a test can reach a failure of the publish after the export (a destination that went away
/// during the run). Unset (always, outside the tests): the check is made.
pub const SKIP_WRITE_CHECK_ENV: &str = "CHATWOOT_EXPORT_TEST_SKIP_WRITE_CHECK";

/// Every problem on its own line, exit 2 if any.
pub fn validate(args: ValidateArgs) -> Result<(), Error> {
    if args.offline {
        return validate_offline(&args);
    }
    match load_pipeline(&args.file, &args.sets) {
        Ok(pipeline) => {
            let schedule = match pipeline.snapshot {
                crate::pipeline::SnapshotMode::Plain => String::new(),
                crate::pipeline::SnapshotMode::Full => ", full reads kept as snapshots".into(),
                crate::pipeline::SnapshotMode::Incremental => match pipeline.full_refresh_every {
                    Some(every) => format!(
                        ", incremental (a full read every {})",
                        super::report::spoken_duration(every)
                    ),
                    None => ", incremental (never a full read by itself)".into(),
                },
            };
            eprintln!(
                "chatwoot-export: {} is valid: {} account(s), {} to {}{schedule}",
                args.file.display(),
                pipeline.accounts.len(),
                pipeline.sink.format.extension(),
                pipeline.sink.destination
            );
            Ok(())
        }
        Err(Error::Config(errors)) => Err(problems(&errors)),
        Err(other) => Err(other),
    }
}

/// The file checked with no environment: a problem that only an unset variable causes is not
/// one offline (its key's value is known at run time only, so its other problems are not
/// either); every other problem is.
fn validate_offline(args: &ValidateArgs) -> Result<(), Error> {
    let text = read_pipeline(&args.file)?;
    let asked = RefCell::new(BTreeSet::new());
    let parsed = config::parse(&args.file, &text, &args.sets, &|name| {
        asked.borrow_mut().insert(name.to_owned());
        None
    });
    let unset = asked.into_inner();
    let remaining = match parsed {
        Ok(_) => Vec::new(),
        Err(errors) => {
            let run_time_keys: BTreeSet<String> = errors
                .problems
                .iter()
                .filter(|problem| unset.iter().any(|var| is_unset_problem(problem, var)))
                .map(|problem| problem.key.clone())
                .collect();
            errors
                .problems
                .into_iter()
                .filter(|problem| !run_time_keys.contains(&problem.key))
                .collect()
        }
    };
    if !remaining.is_empty() {
        return Err(problems(&ConfigErrors {
            file: args.file.clone(),
            problems: remaining,
        }));
    }
    let at_run_time = if unset.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = unset.iter().map(|var| format!("${{{var}}}")).collect();
        format!(" ({} set at run time)", names.join(", "))
    };
    eprintln!(
        "chatwoot-export: {} is valid offline{at_run_time}",
        args.file.display()
    );
    Ok(())
}

/// Whether `problem` says that the variable `var` is not set (the interpolation's and the
/// token's wording both name it so).
fn is_unset_problem(problem: &ConfigProblem, var: &str) -> bool {
    problem
        .message
        .contains(&format!("environment variable {var} is not set"))
}

/// Prints every problem on its own line; the error that ends the command (exit 2).
fn problems(errors: &ConfigErrors) -> Error {
    for problem in &errors.problems {
        eprintln!("{}: {problem}", errors.file.display());
    }
    Error::Usage(format!(
        "{} has {} problem(s), listed above",
        errors.file.display(),
        errors.problems.len()
    ))
}

/// Creates and deletes a marker object at `destination` (an object store or a lake folder),
/// before anything is fetched: an unreachable, missing or read-only destination fails here on
/// one line instead of after the whole export.
pub(super) async fn check_destination(destination: &str, run_id: &str) -> Result<(), Error> {
    if std::env::var_os(SKIP_WRITE_CHECK_ENV).is_some() {
        return Ok(());
    }
    let opened = Destination::open(destination)?;
    opened.check_writable(run_id).await?;
    Ok(())
}
