//! Incremental snapshots and the change feed (issue 19; docs/incremental.md).
//!
//! Receives the run's settings, the output folder and the base (the previous complete export
//! there, `base`); emits the same tables and manifest as a full export, plus the raw contacts
//! the next run builds on (`raw`) and, when there is a base, the `contact_changes` table
//! (`changes`).
//!
//! A full run keeps the raw contacts as the collector adds them and, given a base, compares
//! the two raw files for the change feed (`finish_full`). An incremental run (`run`) reads
//! what can have changed (`fetch`), then feeds the base's raw contacts (minus the deleted,
//! with what was read in place of the old versions, and the new ones last) through the same
//! collector and table writer as a full run: the snapshot follows the same schema rules and
//! contract, and a reader cannot tell how it was made except by `manifest.json`'s `mode`.
//! A failure before the tables are renamed into place leaves the previous snapshot whole. The
//! run checkpoints at the start and at the end of each fetch stage (`Saved`: the stage, and
//! the contacts read so far in the work folder), so it stops and resumes like a full run.

pub mod base;
pub mod changes;
pub mod fetch;
pub mod raw;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::checkpoint::{
    CHECKPOINT_FILE, Checkpoint, IncrementalMark, JobParams, Stage, WalkState,
};
use super::collector::Collector;
use super::{Done, ExportError, ExportSettings, Failure, rate_report, until_shutdown, write};
use crate::manifest::{Manifest, SnapshotReport, Source, Tool};
use crate::progress::Progress;
use crate::sink::{Format, SinkOptions};
use crate::source::Fetcher;
use crate::store::{OutputDir, StoreError, owner_only_dir};
use crate::transform::inbox_secrets::InboxSecrets;
use base::{Base, Index};
use changes::Feed;
use fetch::Fetched;
use raw::{Key, RAW_FILE, RAW_WORK, RawReader, RawWriter, SNAPSHOT_DIR};

pub use crate::options::SnapshotMode;

/// A writer for this run's raw contacts, in the work folder.
pub fn raw_writer(dir: &OutputDir) -> Result<RawWriter, ExportError> {
    let spill = |source| ExportError::Spill {
        path: dir.work_path(RAW_WORK),
        source,
    };
    let (file, path) = dir.create_work_file(RAW_WORK).map_err(spill)?;
    RawWriter::new(file, path).map_err(spill)
}

/// This run's id: its start time (UTC, to the second) and four random hex digits.
pub fn run_id(started_at: &str) -> String {
    let compact: String = started_at
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let nonce = crate::rng::Rng::from_entropy().below(0x1_0000);
    format!("{compact}-{nonce:04x}")
}

/// What finishing the snapshot adds to the run: the manifest's snapshot facts, the change
/// feed's table entry and its path.
pub struct Finished {
    pub snapshot: SnapshotReport,
    pub changes: Option<(crate::manifest::TableEntry, PathBuf)>,
}

/// The facts a raw file's contacts give: newest `created_at` and `last_activity_at`.
#[derive(Clone, Copy, Debug, Default)]
struct Newest {
    created: Option<i64>,
    activity: Option<i64>,
}

impl Newest {
    fn note(&mut self, key: &Key) {
        self.created = self.created.max(key.created_at);
        self.activity = self.activity.max(key.last_activity_at);
    }
}

/// After a full run's tables are written: ends the raw file, writes the change feed when
/// there is a base, and puts the raw file in place (the base raw is read before it is
/// replaced). `started_at`: the run's start, which a full run verifies through.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, each argument is distinct"
)]
pub fn finish_full(
    dir: &OutputDir,
    settings: &ExportSettings,
    options: SinkOptions,
    raw: RawWriter,
    base: Option<&Base>,
    run_id: &str,
    started_at: &str,
    run_time_secs: i64,
) -> Result<Finished, ExportError> {
    let path = raw.path().to_owned();
    let contacts = raw.finish().map_err(|source| ExportError::Spill {
        path: path.clone(),
        source,
    })?;
    let mut newest = Newest::default();
    let mut feed = base.map(|_| Feed::new(settings.keep_inbox_secrets));
    match (base, feed.as_mut()) {
        (Some(base), Some(feed)) => compare_files(&base.raw, &path, feed, &mut newest)?,
        _ => {
            for line in read_raw(&path)? {
                let line = line?;
                if let Some(key) = Key::of(&line) {
                    newest.note(&key);
                }
            }
        }
    }
    let changes = match feed {
        Some(feed) => Some((
            feed.counts(),
            changes::write(
                dir,
                settings.format,
                options,
                feed.changes,
                run_id,
                run_time_secs,
            )?,
        )),
        None => None,
    };
    commit_raw(dir, &path)?;
    Ok(Finished {
        snapshot: SnapshotReport {
            raw_file: raw::raw_path(),
            raw_contacts: contacts,
            newest_created_at: newest.created,
            newest_activity_at: newest.activity,
            verified_through: started_at.to_owned(),
            base_run: base.map(|b| b.run_id.clone()),
            changes: changes.as_ref().map(|(counts, _)| *counts),
            ..SnapshotReport::default()
        },
        changes: changes.map(|(_, entry)| entry),
    })
}

/// A raw file's contacts, one JSON text each; an error names the file.
fn read_raw(path: &Path) -> Result<impl Iterator<Item = Result<String, ExportError>>, ExportError> {
    let spill = |path: &Path| {
        let path = path.to_owned();
        move |source| ExportError::Spill { path, source }
    };
    let lines = RawReader::open(path).map_err(spill(path))?;
    let path = path.to_owned();
    Ok(lines.map(move |line| line.map_err(spill(&path))))
}

/// The change feed of two raw files: the base's ids and a hash of each contact's text, then
/// the new file against them, then the base again for the texts of the contacts whose hash
/// differs (compared by their flattened values).
fn compare_files(
    base: &Path,
    new: &Path,
    feed: &mut Feed,
    newest: &mut Newest,
) -> Result<(), ExportError> {
    let mut old: HashMap<i64, u64> = HashMap::new();
    for line in read_raw(base)? {
        let line = line?;
        if let Some(key) = Key::of(&line) {
            old.insert(key.id, hash(&line));
        }
    }
    let mut candidates: HashMap<i64, String> = HashMap::new();
    for line in read_raw(new)? {
        let line = line?;
        let Some(key) = Key::of(&line) else { continue };
        newest.note(&key);
        match old.remove(&key.id) {
            None => feed.added(key.id),
            Some(h) if h != hash(&line) => {
                candidates.insert(key.id, line);
            }
            Some(_) => {}
        }
    }
    for id in old.keys() {
        feed.removed(*id);
    }
    if !candidates.is_empty() {
        for line in read_raw(base)? {
            let line = line?;
            if let Some(key) = Key::of(&line)
                && let Some(now) = candidates.remove(&key.id)
            {
                feed.compare(key.id, &line, &now);
            }
        }
    }
    Ok(())
}

fn hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Moves the raw file into `DIR/_chatwoot_export/` under its final name.
fn commit_raw(dir: &OutputDir, work: &Path) -> Result<(), ExportError> {
    let folder = dir.root().join(SNAPSHOT_DIR);
    if !folder.is_dir() {
        owner_only_dir()
            .create(&folder)
            .map_err(|source| StoreError::Write {
                path: folder.clone(),
                source,
            })?;
    }
    let target = folder.join(RAW_FILE);
    std::fs::rename(work, &target).map_err(|source| StoreError::Write {
        path: target,
        source,
    })?;
    Ok(())
}

/// An incremental run: fetch what changed, merge with the base, write the tables, the change
/// feed and the raw contacts. The previous snapshot stays whole until the tables are renamed
/// into place; a failure before that leaves it as it was. A checkpoint is saved at the start
/// and at the end of each fetch stage (`Stage`), with the contacts read by then: Ctrl-C,
/// SIGTERM or a failure once a stage is done keeps the work for `--resume`, which goes on from
/// `resumed` without reading again what the stages done read.
pub(super) async fn run(
    settings: &ExportSettings,
    params: &JobParams,
    dir: &OutputDir,
    fetcher: &Arc<Fetcher>,
    progress: &Progress,
    base: &Base,
    resumed: Option<Checkpoint>,
) -> Result<Done, Failure> {
    let clock = std::time::Instant::now();
    let mut saved = match resumed {
        Some(checkpoint) => Saved::resumed(checkpoint),
        None => {
            let started_at = super::now();
            // A lake's run id when the runner gives one (its files and manifests carry it).
            let run_id = super::run_id_of(settings, &started_at);
            let saved = Saved::fresh(params, base, &started_at, run_id);
            saved.save(dir).map_err(|error| Failure {
                error,
                resumable: false,
            })?;
            saved
        }
    };
    // Every failure of a resumed run keeps its checkpoint; a fresh one keeps it once a stage
    // is done or when stopped by a signal.
    let was_resumed = saved.checkpoint.resumes > 0;
    let kept = |error: ExportError, saved: &Saved| Failure {
        error: ExportError::Resumable {
            source: Box::new(error),
            pages: saved.mark().requests,
            out: settings.out.clone(),
        },
        resumable: true,
    };
    let fatal = |error: ExportError, saved: &Saved| {
        if was_resumed {
            kept(error, saved)
        } else {
            Failure {
                error,
                resumable: false,
            }
        }
    };
    let index = match Index::read(&base.raw) {
        Ok(index) => Arc::new(index),
        Err(error) => return Err(fatal(error, &saved)),
    };
    let mut fetched = match saved.fetched(dir) {
        Ok(fetched) => fetched,
        Err(error) => return Err(fatal(error, &saved)),
    };
    // The definitions type the columns as a full run's walk does; the merge needs them first.
    let definitions = fetcher.attribute_definitions().await;
    let inbox_secrets = if settings.keep_inbox_secrets {
        InboxSecrets::keep_all()
    } else {
        InboxSecrets::default()
    };
    // What a failed attempt left in the work folder goes (its spills, its raw contacts): this
    // one merges and writes anew.
    saved
        .clear_work(dir)
        .map_err(|error| fatal(error, &saved))?;
    let mut collector =
        Collector::create(dir, inbox_secrets).map_err(|error| fatal(error, &saved))?;
    let attribute_definitions =
        super::walk::declare_definitions(&mut collector, definitions, &settings.notices);
    collector.raw = Some(raw_writer(dir).map_err(|error| fatal(error, &saved))?);
    // The merge runs on its own thread while the fetch waits for the rate limit, taking the
    // base's contacts as the deletion check settles their days (`fetch::Settled`).
    let (settled, merging) = std::sync::mpsc::channel();
    let merge = tokio::task::spawn_blocking({
        let (raw, index) = (base.raw.clone(), Arc::clone(&index));
        let feed = Feed::new(settings.keep_inbox_secrets);
        move || merge(&raw, &index, collector, merging, feed)
    });
    let concurrency = settings.fetch.concurrency;
    let mut merge_fed = false;
    for stage in [Stage::Listed, Stage::Fetched] {
        if saved.mark().stage >= stage {
            continue;
        }
        let attempt = match stage {
            Stage::Listed => {
                until_shutdown(
                    async {
                        fetch::listed(
                            fetcher,
                            base,
                            &index,
                            concurrency,
                            progress,
                            &settings.notices,
                        )
                        .await
                        .map_err(ExportError::from)
                    },
                    &settings.out,
                )
                .await
            }
            _ => {
                merge_fed = true;
                until_shutdown(
                    async {
                        fetch::deletions(
                            fetcher,
                            base,
                            &index,
                            concurrency,
                            progress,
                            std::mem::take(&mut fetched),
                            &settled,
                        )
                        .await
                        .map_err(ExportError::from)
                    },
                    &settings.out,
                )
                .await
            }
        };
        let sent = fetcher.status().governor.sent;
        match attempt {
            Ok(done) => {
                fetched = done;
                saved
                    .finish_stage(dir, stage, &fetched, sent, settings.keep_inbox_secrets)
                    .map_err(|error| fatal(error, &saved))?;
            }
            Err(error) => {
                // The merge stops when its feed ends; its work goes with the next attempt's.
                drop(settled);
                let _ = merge.await;
                return Err(saved.stop(dir, error, sent, was_resumed, &settings.out));
            }
        }
    }
    if !merge_fed {
        // Resumed after the fetch: everything it read is settled.
        let _ = settled.send(fetch::Settled::all_of(&fetched, i64::MAX));
    }
    drop(settled);
    // Past the fetch every contact read is in the checkpoint: a failure from here on (a full
    // disk, a folder that refuses a file) keeps it, and the message says how to go on.
    let fatal = |error: ExportError| kept(error, &saved);
    progress.phase("incremental: merging with the base");
    let (mut collector, feed, merged) = merge
        .await
        .map_err(|err| fatal(err.into()))?
        .map_err(fatal)?;
    let run_id = saved.mark().run_id.clone();
    let started_at = saved.checkpoint.started_at.clone();
    let sent_before = saved.sent_before;

    let status = fetcher.status();
    let unique = collector.unique();
    let raw = collector.raw.take();
    let (flattener, spills, _rows) = collector.finish().map_err(fatal)?;
    let options = SinkOptions {
        csv_safe: settings.csv_safe,
        csv_excel: settings.csv_excel,
        compression: settings.compression,
        column_names: settings.column_names,
    };
    // The contacts walk's tables; the side tables (labels and their walk) are a full run's.
    let filled = write::walk_filled(&flattener, spills, None);
    let (mut tables, mut written) = write::write_tables(
        settings.format,
        options,
        settings.rows_per_file,
        &settings.tables,
        dir,
        &filled,
        progress,
    )
    .map_err(fatal)?;
    let run_time = chrono::Utc::now().timestamp();
    let counts = feed.counts();
    let (entry, path) = changes::write(
        dir,
        settings.format,
        options,
        feed.changes,
        &run_id,
        run_time,
    )
    .map_err(fatal)?;
    tables.insert(changes::TABLE.to_owned(), entry);
    written.push(path);
    let raw = raw.ok_or(fatal(ExportError::Internal(
        "the raw contacts went missing",
    )))?;
    let raw_path = raw.path().to_owned();
    let raw_contacts = raw.finish().map_err(|source| {
        fatal(ExportError::Spill {
            path: raw_path.clone(),
            source,
        })
    })?;
    commit_raw(dir, &raw_path).map_err(fatal)?;

    // Every attempt's requests: what the run cost the account's budget.
    let sent = sent_before + status.governor.sent;
    let full = base
        .full_requests
        .unwrap_or_else(|| index.contacts.div_ceil(base.page_size) + 1);
    let manifest = Manifest {
        complete: fetched.unsettled == 0,
        format: settings.format,
        expected_count: Some(index.contacts),
        final_count: fetched.final_count,
        unique_contacts: unique,
        duplicates_dropped: 0,
        count_difference: fetched
            .final_count
            .map(|count| unique as i64 - count as i64),
        pages_fetched: fetched.requests,
        page_size: base.page_size,
        requests: sent,
        retries: status.retries,
        throttled: status.governor.throttled,
        rate: rate_report(&status.governor, settings.fetch.rate_share),
        custom_attribute_definitions: attribute_definitions,
        drift: crate::manifest::RepairReport {
            unresolved: fetched.unsettled,
            stopped: (fetched.unsettled > 0).then(|| {
                format!(
                    "{} ranges changed on every listing: run again, or with --full",
                    fetched.unsettled
                )
            }),
            ..Default::default()
        },
        resumes: saved.checkpoint.resumes,
        keep_inbox_secrets: settings.keep_inbox_secrets,
        inbox_fields_dropped: flattener.inbox_secrets.dropped().clone(),
        values_kept_as_text: flattener.values_kept_as_text(),
        csv_safe: settings.csv_safe,
        csv_excel: settings.csv_excel,
        compression: (settings.format == Format::Parquet).then_some(settings.compression),
        tables,
        source: Source {
            base_url: crate::source::public_base_url(&settings.client.base_url),
            account_id: settings.client.account_id,
            sort: settings.client.sort.clone(),
        },
        tool: Tool::current(),
        started_at,
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        // Rounded to the millisecond: a time, not a benchmark.
        duration_secs: (clock.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        label_walk: None,
        mode: "incremental".into(),
        run_id,
        snapshot: Some(SnapshotReport {
            raw_file: raw::raw_path(),
            raw_contacts,
            newest_created_at: merged.created,
            newest_activity_at: merged.activity,
            verified_through: base.snapshot.verified_through.clone(),
            base_run: Some(base.run_id.clone()),
            requests_predicted: Some(fetched.predicted),
            requests_saved: Some(full.saturating_sub(sent)),
            not_reread: merged_not_reread(&index, &fetched.deleted, merged.reread),
            fetched: merged.reread,
            changes: Some(counts),
        }),
    };
    Ok((manifest, written, status))
}

/// An incremental run's checkpoint as saved last, and how to save the next one.
struct Saved {
    /// The job and the run's start (no walk, no spills: an incremental run has neither).
    checkpoint: Checkpoint,
    mark: IncrementalMark,
    /// Requests the earlier attempts sent.
    sent_before: u64,
}

impl Saved {
    fn fresh(params: &JobParams, base: &Base, started_at: &str, run_id: String) -> Self {
        Self {
            checkpoint: Checkpoint {
                version: Checkpoint::new_version(),
                params: params.clone(),
                started_at: started_at.to_owned(),
                walk: WalkState::default(),
                pages_fetched: 0,
                duplicates: 0,
                resumes: 0,
                spills: Vec::new(),
                shapes: Vec::new(),
                inbox_fields_dropped: Default::default(),
                values_kept_as_text: 0,
                ledger: None,
                raw: None,
                incremental: None,
            },
            mark: IncrementalMark {
                run_id,
                base_run: base.run_id.clone(),
                ..IncrementalMark::default()
            },
            sent_before: 0,
        }
    }

    /// The interrupted run's checkpoint (with an `incremental` mark: `export` routes only
    /// those here), as this attempt's.
    fn resumed(mut checkpoint: Checkpoint) -> Self {
        let mark = checkpoint.incremental.take().unwrap_or_default();
        checkpoint.resumes += 1;
        Self {
            sent_before: mark.sent,
            checkpoint,
            mark,
        }
    }

    fn mark(&self) -> &IncrementalMark {
        &self.mark
    }

    /// Writes the checkpoint (replaced atomically).
    fn save(&self, dir: &OutputDir) -> Result<(), ExportError> {
        let checkpoint = Checkpoint {
            incremental: Some(self.mark.clone()),
            ..self.checkpoint.clone()
        };
        checkpoint
            .save(dir.work())
            .map_err(|source| ExportError::Spill {
                path: dir.work_path(CHECKPOINT_FILE),
                source,
            })
    }

    /// What the stages done found: their contacts back from the work folder.
    fn fetched(&self, dir: &OutputDir) -> Result<Fetched, ExportError> {
        let mark = &self.mark;
        let mut contacts = HashMap::new();
        if let Some(name) = &mark.read_file {
            let path = dir.work_path(name);
            for line in read_raw(&path)? {
                let line = line?;
                if let Some(key) = Key::of(&line) {
                    contacts.insert(key.id, Arc::from(line));
                }
            }
        }
        Ok(Fetched {
            contacts,
            deleted: mark.deleted.iter().copied().collect(),
            predicted: mark.predicted,
            requests: mark.requests,
            unsettled: mark.unsettled,
            final_count: mark.final_count,
            part_counts: mark.part_counts.clone(),
        })
    }

    /// Saves the checkpoint at the end of `stage`: the contacts read so far in a new file of
    /// the work folder (inbox credentials dropped as in the tables), then the mark that names
    /// it, then the previous file goes. `sent`: this attempt's requests so far.
    fn finish_stage(
        &mut self,
        dir: &OutputDir,
        stage: Stage,
        fetched: &Fetched,
        sent: u64,
        keep_inbox_secrets: bool,
    ) -> Result<(), ExportError> {
        let name = format!("read-{}.ndjson.zst", stage_name(stage));
        let path = dir.work_path(&name);
        let spill = |source| ExportError::Spill {
            path: path.clone(),
            source,
        };
        remove_if_present(&path).map_err(spill)?;
        let (file, _) = dir.create_work_file(&name).map_err(spill)?;
        let mut writer = RawWriter::new(file, path.clone()).map_err(spill)?;
        for text in fetched.contacts.values() {
            writer.write(text, !keep_inbox_secrets).map_err(spill)?;
        }
        writer.finish().map_err(spill)?;
        let mut deleted: Vec<i64> = fetched.deleted.iter().copied().collect();
        deleted.sort_unstable();
        let previous = self.mark.read_file.replace(name);
        self.mark = IncrementalMark {
            stage,
            part_counts: fetched.part_counts.clone(),
            deleted,
            predicted: fetched.predicted,
            requests: fetched.requests,
            unsettled: fetched.unsettled,
            final_count: fetched.final_count,
            sent: self.sent_before + sent,
            ..self.mark.clone()
        };
        self.save(dir)?;
        if let Some(previous) = previous.filter(|p| Some(p) != self.mark.read_file.as_ref()) {
            // Only space: the checkpoint no longer names it.
            let _ = remove_if_present(&dir.work_path(&previous));
        }
        Ok(())
    }

    /// The failure of a fetch stage: keeps the work when a stage is done, the run was resumed
    /// or a signal stopped it (then the checkpoint, saved again with the requests spent,
    /// says where `--resume` goes on); otherwise there is nothing worth keeping.
    fn stop(
        &mut self,
        dir: &OutputDir,
        error: ExportError,
        sent: u64,
        resumed: bool,
        out: &Path,
    ) -> Failure {
        let interrupted = matches!(error, ExportError::Interrupted { .. });
        if self.mark.stage == Stage::Started && !resumed && !interrupted {
            // A wrong token on the first request, say: nothing read.
            return Failure {
                error,
                resumable: false,
            };
        }
        self.mark.sent = self.sent_before + sent;
        // If this save fails (a full disk), the last checkpoint still stands.
        let _ = self.save(dir);
        super::kept(error, self.mark.requests, out)
    }

    /// Removes from the work folder everything but the checkpoint and the contacts it names:
    /// the spills and raw contacts of an attempt that failed while writing.
    fn clear_work(&self, dir: &OutputDir) -> Result<(), ExportError> {
        let entries = std::fs::read_dir(dir.work()).map_err(|source| ExportError::Spill {
            path: dir.work().to_owned(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == CHECKPOINT_FILE || Some(name.as_ref()) == self.mark.read_file.as_deref() {
                continue;
            }
            remove_if_present(&entry.path()).map_err(|source| ExportError::Spill {
                path: entry.path(),
                source,
            })?;
        }
        Ok(())
    }
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Started => "started",
        Stage::Listed => "listed",
        Stage::Fetched => "fetched",
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Contacts carried over without a new read: the base's, less the deleted and the re-read.
fn merged_not_reread(index: &Index, deleted: &HashSet<i64>, reread_of_base: u64) -> u64 {
    index
        .contacts
        .saturating_sub(deleted.len() as u64)
        .saturating_sub(reread_of_base)
}

/// What the merge saw.
#[derive(Debug, Default)]
pub(super) struct Merged {
    created: Option<i64>,
    activity: Option<i64>,
    /// Base contacts replaced by the version read now.
    reread: u64,
}

/// Feeds the base's contacts into `collector` in their order, dropping the deleted and
/// putting the version read now in place of the old one, then the new contacts in
/// `created_at` order; records the change feed on the way. A base contact is taken only once
/// the fetch has settled its day (`settled`); the fetch ends the stream with `through =
/// i64::MAX`, and a stream that ends before that (the fetch failed) stops the merge.
fn merge(
    base: &Path,
    index: &Index,
    mut collector: Collector,
    settled: std::sync::mpsc::Receiver<fetch::Settled>,
    mut feed: Feed,
) -> Result<(Collector, Feed, Merged), ExportError> {
    let mut fetched: HashMap<i64, Arc<str>> = HashMap::new();
    let mut deleted: HashSet<i64> = HashSet::new();
    let mut through = i64::MIN;
    let wait_until = |day: i64,
                      fetched: &mut HashMap<i64, Arc<str>>,
                      deleted: &mut HashSet<i64>,
                      through: &mut i64|
     -> Result<(), ExportError> {
        while day > *through {
            let news = settled.recv().map_err(|_| {
                ExportError::Internal("the incremental fetch stopped before it settled the base")
            })?;
            fetched.extend(news.contacts);
            deleted.extend(news.deleted);
            *through = news.through;
        }
        Ok(())
    };
    let mut merged = Merged::default();
    let mut newest = Newest::default();
    for line in read_raw(base)? {
        let line = line?;
        let Some(key) = Key::of(&line) else { continue };
        wait_until(
            key.day().unwrap_or(i64::MIN),
            &mut fetched,
            &mut deleted,
            &mut through,
        )?;
        if deleted.contains(&key.id) {
            feed.removed(key.id);
            fetched.remove(&key.id);
            continue;
        }
        let (text, key) = match fetched.remove(&key.id) {
            Some(now) => {
                merged.reread += 1;
                feed.compare(key.id, &line, &now);
                let read = Key::of(&now).unwrap_or(key);
                (now.to_string(), read)
            }
            // The base's text: its key is the one just read.
            None => (line, key),
        };
        newest.note(&key);
        collector.add(0, &text)?;
    }
    wait_until(i64::MAX, &mut fetched, &mut deleted, &mut through)?;
    // What is left and not of the base is new (a base contact read again after the merge
    // passed it keeps the version the merge took).
    let mut new: Vec<(Key, Arc<str>)> = fetched
        .into_values()
        .filter_map(|text| Key::of(&text).map(|key| (key, text)))
        .filter(|(key, _)| !index.holds(key))
        .collect();
    new.sort_by_key(|(key, _)| (key.created_at, key.id));
    for (key, text) in new {
        feed.added(key.id);
        newest.note(&key);
        collector.add(0, &text)?;
    }
    merged.created = newest.created;
    merged.activity = newest.activity;
    Ok((collector, feed, merged))
}
