//! `contacts`: receives its flags; exports one account to a local folder (or, for an object
//! store `--out`, checks that it is writable before fetching anything, then stages and
//! publishes it through the runner) and prints the summary. With `--plan`, prints what the
//! export will cost instead (`plan`) and writes nothing.

use super::report;
use super::settings;
use crate::cli::ContactsArgs;
use crate::error::Error;
use crate::pipeline::{ExportSettings, export};
use crate::runner::{self, KeptWork, Target, drift_verdict, kept_work_refusal};
use crate::store::{OutputDir, RunVars, is_url};

pub async fn contacts(args: ContactsArgs) -> Result<(), Error> {
    let kept = KeptWork::from_flags(args.safety.resume, args.safety.restart, false);
    let (plan, json) = (args.plan, args.json);
    let settings = settings::contacts(args)?;
    if plan {
        return super::plan::plan(&[settings], json).await;
    }
    if let Some(url) = object_store_url(&settings) {
        return export_to_object_store(settings, url, kept).await;
    }
    // A rerun must not silently throw away what an interrupted run fetched.
    if kept == KeptWork::Refuse && matches!(OutputDir::reopen(&settings.out), Ok(Some(_))) {
        return Err(kept_work_refusal(&[(
            settings.client.account_id,
            settings.out.clone(),
        )]));
    }
    let summary = export(&settings).await?;
    report::print_summary(&summary);
    drift_verdict(&summary, summary.out.clone())
}

/// `--out` when it names an object store (`s3://`, `gs://`, `az://`, `file://`) rather than
/// a local folder, or any `--out` of a Delta export (staged, then committed to the table).
pub(super) fn object_store_url(settings: &ExportSettings) -> Option<String> {
    let out = settings.out.to_str()?;
    (is_url(out) || settings.format == crate::sink::Format::Delta).then(|| out.to_owned())
}

/// Exports into the job's staging place, then uploads it to `url` with the manifest last
/// (and prints the summary); `kept` says what to do with work an earlier run kept there.
pub(super) async fn export_to_object_store(
    settings: ExportSettings,
    url: String,
    kept: KeptWork,
) -> Result<(), Error> {
    let target = Target {
        destination: url,
        path: None,
    };
    let nonce = crate::rng::Rng::from_entropy().next_u64();
    let vars = RunVars::now(settings.client.account_id, chrono::Utc::now(), nonce);
    super::validate::check_destination(&target.destination, &vars.run_id).await?;
    runner::export_to(settings, &target, &vars, kept, &report::print_summary_to)
        .await
        .map(|_| ())
        .map_err(|(error, _)| error)
}
