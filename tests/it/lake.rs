//! Object store destinations for real: moto's S3 server (also standing in for GCS's XML API)
//! and Azurite's Azure Blob server on loopback, the real binary writing to them with the
//! usual AWS_* / GOOGLE_* / AZURE_* variables, the
//! objects read back and compared with the fake Chatwoot's ground truth.

use std::net::{TcpListener, TcpStream};
use std::path::{Path as LocalPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::Value;

use crate::expected;
use crate::harness::{Fake, TOKEN, python, run_python, run_with_env};
use crate::readers::{assert_same, read, read_files};

const BUCKET: &str = "lake";

/// A port free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits up to 30 s for a server just started to accept connections on `port`.
fn wait_until_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not answer on port {port} in 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// moto's S3 server on 127.0.0.1, killed by its PID when dropped.
pub(crate) struct Moto {
    _child: Server,
    pub(crate) endpoint: String,
}

/// moto's server behind a WSGI wrapper that lets it answer GCS's XML API (S3's, with bearer
/// tokens): object_store's GCS client sends `Authorization: Bearer ...`, which moto would
/// parse as an AWS signature (and fail on), and without which it would treat the request as
/// anonymous (and refuse overwrites). The wrapper swaps it for an unchecked AWS one.
const MOTO_AS_GCS: &str = "
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
moto = DomainDispatcherApplication(create_backend_app)
AWS = 'AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0'
def app(environ, start_response):
    if environ.get('HTTP_AUTHORIZATION', '').startswith('Bearer'):
        environ['HTTP_AUTHORIZATION'] = AWS
    return moto(environ, start_response)
run_simple('127.0.0.1', int(sys.argv[1]), app, threaded=True)
";

impl Moto {
    pub(crate) fn start() -> Self {
        Self::launch(|port| {
            vec![
                "-m".into(),
                "moto.server".into(),
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ]
        })
    }

    /// moto answering object_store's GCS client too (see `MOTO_AS_GCS`).
    fn start_as_gcs() -> Self {
        Self::launch(|port| vec!["-c".into(), MOTO_AS_GCS.into(), port.to_string()])
    }

    fn launch(args: impl Fn(u16) -> Vec<String>) -> Self {
        let python = python();
        let port = free_port();
        let moto = Self {
            _child: Server::start(
                Command::new(&python).args(args(port)),
                port,
                "moto",
                "it installs moto[server]",
            ),
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        run_python(
            "import boto3,sys; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing').create_bucket(Bucket=sys.argv[2])",
            &[&moto.endpoint, BUCKET],
        );
        moto
    }

    pub(crate) fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("CHATWOOT_API_TOKEN", TOKEN),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", &self.endpoint),
            ("AWS_ALLOW_HTTP", "true"),
        ]
    }

    pub(crate) fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_bucket_name(BUCKET)
                .with_region("us-east-1")
                .with_access_key_id("testing")
                .with_secret_access_key("testing")
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .build()
                .expect("s3 client"),
        )
    }
}

/// Azurite's well-known development account and key (public, the emulator's only account).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's Blob server on 127.0.0.1 (the binary in `$AZURITE`, which tests/run.sh installs
/// with npm), killed by its PID when dropped, with its storage in a temporary folder.
struct Azurite {
    _child: Server,
    url: String,
    _storage: tempfile::TempDir,
}

impl Azurite {
    fn start() -> Self {
        let azurite = std::env::var("AZURITE").unwrap_or_else(|_| "azurite-blob".into());
        let storage = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = Server::start(
            Command::new(&azurite)
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .arg("--location")
                .arg(storage.path())
                // object_store may speak a newer API version than this Azurite knows.
                .args(["--silent", "--skipApiVersionCheck"]),
            port,
            "Azurite",
            "it installs Azurite with npm and sets AZURITE",
        );
        let azurite = Self {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
            _storage: storage,
        };
        // object_store cannot create containers; the Azure SDK for Python can.
        let connection = format!(
            "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={}/{AZURITE_ACCOUNT};",
            azurite.url
        );
        run_python(
            "import sys; from azure.storage.blob import BlobServiceClient; \
             BlobServiceClient.from_connection_string(sys.argv[1]).create_container(sys.argv[2])",
            &[&connection, BUCKET],
        );
        azurite
    }

    /// What a user of the emulator sets (object_store's own variables for it).
    fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("CHATWOOT_API_TOKEN", TOKEN),
            ("AZURE_STORAGE_USE_EMULATOR", "true"),
            ("AZURITE_BLOB_STORAGE_URL", &self.url),
        ]
    }

    fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            MicrosoftAzureBuilder::new()
                .with_account(AZURITE_ACCOUNT)
                .with_access_key(AZURITE_KEY)
                .with_endpoint(format!("{}/{AZURITE_ACCOUNT}", self.url))
                .with_allow_http(true)
                .with_container_name(BUCKET)
                .build()
                .expect("azure client"),
        )
    }
}

/// A server process this test started, killed by its PID when dropped.
struct Server(Child);

impl Server {
    /// Starts `command` with its output discarded and waits until it listens on `port`
    /// (killed again if it never does). `installs` says what tests/run.sh does about it.
    fn start(command: &mut Command, port: u16, what: &str, installs: &str) -> Self {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot run {what} ({command:?}): {err}; run tests/run.sh ({installs})")
            });
        let server = Self(child);
        wait_until_listening(port, what);
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every object under `prefix`, sorted, with its bytes.
pub(crate) fn objects(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listed: Vec<_> = store
            .list(Some(&Path::from(prefix)))
            .try_collect()
            .await
            .expect("list");
        let mut out = Vec::new();
        for meta in listed {
            let bytes = store
                .get(&meta.location)
                .await
                .expect("get")
                .bytes()
                .await
                .expect("body");
            out.push((meta.location.to_string(), bytes.to_vec()));
        }
        out.sort();
        out
    })
}

/// Where the manifest of the partition at object path `partition` may be: for each way of
/// splitting it into the destination's prefix and the partition under it,
/// `PREFIX/_chatwoot_export/PARTITION/manifest.json`.
fn manifest_candidates(partition: &str) -> Vec<String> {
    let parts: Vec<&str> = partition.split('/').filter(|p| !p.is_empty()).collect();
    (0..=parts.len())
        .map(|at| {
            let (root, rel) = parts.split_at(at);
            root.iter()
                .copied()
                .chain(["_chatwoot_export"])
                .chain(rel.iter().copied())
                .chain(["manifest.json"])
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect()
}

/// Writes a partition's data objects to `dir` under their names and returns its manifest,
/// which lives apart from the data, under the destination's `_chatwoot_export/`. A
/// partition holds data files only: anything else in it fails the test.
pub(crate) fn download(objects: &[(String, Vec<u8>)], partition: &str, dir: &LocalPath) -> Value {
    let candidates = manifest_candidates(partition);
    let mut manifest = None;
    for (name, bytes) in objects {
        if candidates.contains(name) {
            manifest = Some(serde_json::from_slice(bytes).expect("manifest is JSON"));
        } else if let Some(file) = name.strip_prefix(&format!("{partition}/")) {
            if file.contains('/') {
                continue; // a deeper partition, or the manifests' folder
            }
            assert!(
                [".parquet", ".csv", ".ndjson"]
                    .iter()
                    .any(|ext| file.ends_with(ext)),
                "only data files in the partition: {name}"
            );
            std::fs::write(dir.join(file), bytes).expect("write");
        }
    }
    manifest.expect("a manifest for the partition")
}

/// `contacts --base-url BASE --account-id 1 --out URL --no-progress EXTRA...`
pub(crate) fn contacts_to<'a>(base: &'a str, url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "contacts",
        "--base-url",
        base,
        "--account-id",
        "1",
        "--out",
        url,
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    args
}

pub(crate) fn assert_no_token_in(objects: &[(String, Vec<u8>)]) {
    for (name, bytes) in objects {
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "token in {name}"
        );
    }
}

#[test]
fn contacts_to_s3_match_the_ground_truth_and_a_rerun_replaces_them() {
    let moto = Moto::start();
    export_twice_to(&moto.store(), "s3://lake/one", &moto.env());
}

#[test]
fn contacts_to_gcs_match_the_ground_truth_and_a_rerun_replaces_them() {
    // object_store's GCS client speaks GCS's XML API, which is S3's: moto stands in for
    // storage.googleapis.com, named by the service account file's `gcs_base_url` (the hook
    // object_store reads for emulators), with OAuth off. What this checks is our side of
    // gs://: the URL, the credentials from GOOGLE_* variables, the uploads, listing and
    // deletes of a rerun; not Google's server.
    let moto = Moto::start_as_gcs();
    let dir = tempfile::tempdir().expect("temp dir");
    let account = dir.path().join("service-account.json");
    let key = serde_json::json!({
        "gcs_base_url": moto.endpoint,
        "disable_oauth": true,
        "client_email": "",
        "private_key": "",
        "private_key_id": "",
    });
    std::fs::write(&account, key.to_string()).expect("write the service account file");
    let account = account.to_str().expect("utf-8 path");
    let env = [
        ("CHATWOOT_API_TOKEN", TOKEN),
        ("GOOGLE_SERVICE_ACCOUNT", account),
    ];
    export_twice_to(&moto.store(), "gs://lake/one", &env);

    // `demo` publishes to the same URLs as `contacts`.
    let run = run_with_env(
        &[
            "demo",
            "--contacts",
            "40",
            "--out",
            "gs://lake/demo",
            "--no-progress",
        ],
        &env,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let listed = objects(&moto.store(), "demo");
    let names: Vec<&str> = listed.iter().map(|o| o.0.as_str()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let out = tempfile::tempdir().expect("temp dir");
    let manifest = download(&listed, "demo", out.path());
    assert_eq!(manifest["tables"]["contacts"]["rows"], 40, "{manifest}");
    assert!(
        run.stdout.contains("files: gs://lake/demo"),
        "{}",
        run.stdout
    );
}

#[test]
fn contacts_to_azure_blob_match_the_ground_truth_and_a_rerun_replaces_them() {
    let azurite = Azurite::start();
    export_twice_to(&azurite.store(), "az://lake/one", &azurite.env());
}

/// Exports to `url` (the prefix `one` of `store`) and checks the objects against the ground
/// truth; then exports again and checks that only the new run's objects remain.
fn export_twice_to(store: &Arc<dyn ObjectStore>, url: &str, env: &[(&str, &str)]) {
    let fake = Fake::with_contacts(200);
    let base = fake.base_url();
    let args = contacts_to(&base, url, &[]);
    let first = run_with_env(&args, env);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let listed = objects(store, "one");
    assert_eq!(
        listed.len(),
        3,
        "two tables and the manifest: {:?}",
        listed.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = download(&listed, "one", dir.path());
    assert_eq!(manifest["complete"], true);
    let run_id = manifest["run_id"].as_str().expect("run_id").to_owned();
    assert_eq!(
        manifest["tables"]["contacts"]["files"][0],
        "contacts.parquet"
    );
    let truth = fake.truth();
    let (contacts, inboxes) = expected::tables(&truth, &fake.definitions());
    for (name, table) in [("contacts", &contacts), ("contact_inboxes", &inboxes)] {
        assert_same(
            name,
            "parquet",
            table,
            &read(dir.path(), name, "parquet", table),
        );
    }
    assert_no_token_in(&listed);
    assert!(!first.stderr.contains(TOKEN));

    // The same job again: the new run's files replace the first run's under the same names.
    std::thread::sleep(Duration::from_millis(1100)); // run ids have second resolution
    let second = run_with_env(&args, env);
    assert_eq!(second.code, 0, "{}", second.stderr);
    let relisted = objects(store, "one");
    let names = |listed: &[(String, Vec<u8>)]| -> Vec<String> {
        listed.iter().map(|o| o.0.clone()).collect()
    };
    assert_eq!(names(&relisted), names(&listed));
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = download(&relisted, "one", dir.path());
    let new_id = manifest["run_id"].as_str().expect("run_id");
    assert_ne!(new_id, run_id);
    assert_same(
        "contacts",
        "parquet",
        &contacts,
        &read(dir.path(), "contacts", "parquet", &contacts),
    );
}

#[test]
fn the_nightly_pipeline_writes_hive_partitions_to_s3() {
    let moto = Moto::start();
    let fake = Fake::with_contacts(150);
    let file = LocalPath::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/nightly-s3.toml");
    let mut env = moto.env();
    let base = fake.base_url();
    env.push(("CHATWOOT_BASE_URL", &base));
    let run = run_with_env(
        &[
            "run",
            file.to_str().expect("utf-8"),
            "--set",
            "source.account_id=1",
            "--json",
        ],
        &env,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).expect("JSON report");
    assert_eq!(report["accounts"][0]["status"], "complete");
    let date = &report["started_at"].as_str().expect("started_at")[..10];
    let store = moto.store();
    let listed = objects(&store, "chatwoot");
    let truth = fake.truth();
    let (contacts, inboxes) = expected::tables(&truth, &fake.definitions());
    for (table, rows) in [
        ("contacts", contacts.rows.len()),
        ("contact_inboxes", inboxes.rows.len()),
    ] {
        let partition = format!("chatwoot/{table}/account_id=1/dt={date}");
        let dir = tempfile::tempdir().expect("temp dir");
        let manifest = download(&listed, &partition, dir.path());
        assert_eq!(
            manifest["tables"].as_object().expect("tables").len(),
            1,
            "one table per partition"
        );
        assert_eq!(manifest["tables"][table]["rows"], rows as u64);
        assert_eq!(report["accounts"][0]["rows"][table], rows as u64);
        let columns: Vec<&str> = manifest["tables"][table]["columns"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| c["name"].as_str().expect("name"))
            .collect();
        // The pipeline's column selection, applied to the files themselves.
        let parquet =
            std::fs::File::open(dir.path().join(format!("{table}.parquet"))).expect("file");
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(parquet)
                .expect("parquet");
        let in_file: Vec<String> = reader
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(in_file, columns);
        if table == "contacts" {
            assert!(
                !columns.contains(&"thumbnail") && columns.contains(&"email"),
                "{columns:?}"
            );
        } else {
            assert_eq!(
                columns,
                [
                    "contact_id",
                    "source_id",
                    "inbox__id",
                    "inbox__name",
                    "inbox__channel_type"
                ]
            );
        }
    }
    assert_no_token_in(&listed);
}

#[test]
fn split_files_are_replaced_by_name_and_a_rerun_with_fewer_removes_the_rest() {
    let moto = Moto::start();
    let fake = Fake::with_contacts(200);
    let store = moto.store();
    let base = fake.base_url();
    let truth = fake.truth();
    let (contacts, _) = expected::tables(&truth, &fake.definitions());
    let mut previous: Option<String> = None;
    for (rows_per_file, parts) in [("70", 3), ("150", 2)] {
        if previous.is_some() {
            std::thread::sleep(Duration::from_millis(1100)); // run ids have second resolution
        }
        let args = contacts_to(
            &base,
            "s3://lake/split",
            &["--rows-per-file", rows_per_file],
        );
        let run = run_with_env(&args, &moto.env());
        assert_eq!(run.code, 0, "{}", run.stderr);
        let listed = objects(&store, "split");
        let manifest: Value = serde_json::from_slice(
            &listed
                .iter()
                .find(|(name, _)| name == "split/_chatwoot_export/manifest.json")
                .expect("a manifest")
                .1,
        )
        .expect("JSON");
        let run_id = manifest["run_id"].as_str().expect("run_id");
        assert_ne!(previous.as_deref(), Some(run_id), "a new run");
        let files: Vec<String> = manifest["tables"]["contacts"]["files"]
            .as_array()
            .expect("files")
            .iter()
            .map(|f| f.as_str().expect("name").to_owned())
            .collect();
        let want: Vec<String> = (0..parts)
            .map(|i| format!("contacts-{i:05}.parquet"))
            .collect();
        assert_eq!(files, want);
        // Every object in the prefix is this run's: the listed files and the manifest (the
        // first run's third part is gone).
        let inboxes: Vec<String> = manifest["tables"]["contact_inboxes"]["files"]
            .as_array()
            .expect("files")
            .iter()
            .map(|f| format!("split/{}", f.as_str().expect("name")))
            .collect();
        let mut want_listed: Vec<String> = files
            .iter()
            .map(|f| format!("split/{f}"))
            .chain(inboxes)
            .chain(["split/_chatwoot_export/manifest.json".to_owned()])
            .collect();
        want_listed.sort();
        let names: Vec<&String> = listed.iter().map(|o| &o.0).collect();
        assert_eq!(names, want_listed.iter().collect::<Vec<_>>());
        let dir = tempfile::tempdir().expect("temp dir");
        download(&listed, "split", dir.path());
        let (got, counts) = read_files(dir.path(), &files, "parquet", &contacts);
        assert_eq!(counts.iter().sum::<usize>(), 200);
        assert_eq!(manifest["tables"]["contacts"]["rows"], 200);
        assert_same("contacts", "parquet", &contacts, &got);
        previous = Some(run_id.to_owned());
    }
}

#[test]
fn an_unreachable_object_store_fails_on_one_line() {
    // A port nobody listens on: the upload fails after object_store's own retries, which must
    // not be logged line by line around the error.
    let url = format!("http://127.0.0.1:{}", free_port());
    let fake = Fake::with_contacts(20);
    let base = fake.base_url();
    let cache = tempfile::tempdir().expect("temp dir");
    // The write check before the fetch would fail first (tests/it/plan.rs pins that): skipped,
    // to stand for a destination that goes away while the export runs.
    let run = run_with_env(
        &contacts_to(&base, "az://lake/one", &[]),
        &[
            ("CHATWOOT_API_TOKEN", TOKEN),
            ("AZURE_STORAGE_USE_EMULATOR", "true"),
            ("AZURITE_BLOB_STORAGE_URL", &url),
            ("XDG_CACHE_HOME", cache.path().to_str().expect("utf-8")),
            ("CHATWOOT_EXPORT_TEST_SKIP_WRITE_CHECK", "1"),
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", run.stderr);
    // The first change a publish makes is removing the partition's manifest: it fails, and
    // nothing at the destination changed.
    assert!(
        lines[0].starts_with(
            "chatwoot-export: error: cannot replace az://lake/one/_chatwoot_export/manifest.json in az://lake/one: "
        ),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("nothing there was changed, run again"),
        "{}",
        lines[0]
    );
    // The export itself finished: it is kept for --resume to publish, not fetched again.
    let kept = format!(
        "the finished export is kept in {}/chatwoot-export/staging/",
        cache.path().display()
    );
    assert!(
        lines[0].contains(&kept)
            && lines[0].ends_with(": run the same command with --resume to publish it"),
        "{}",
        lines[0]
    );
    assert!(!run.stderr.contains(TOKEN));
}

/// The rows pyarrow (`pyarrow.dataset` on the folder), DuckDB (`read_parquet('DIR/**')`, every
/// file under it) and Polars (`read_parquet(DIR)`, the folder as it is) read from each folder,
/// as `[pyarrow, duckdb, polars]`: none of them is told to skip anything.
fn engine_counts(folders: &[&LocalPath]) -> Vec<[u64; 3]> {
    const COUNT: &str = "
import sys, duckdb, polars, pyarrow.dataset as ds
for folder in sys.argv[1:]:
    arrow = ds.dataset(folder, format='parquet').count_rows()
    duck = duckdb.execute('SELECT count(*) FROM read_parquet(?)', [folder + '/**']).fetchone()[0]
    print(arrow, duck, polars.read_parquet(folder).height)
";
    let args: Vec<&str> = folders.iter().map(|f| f.to_str().expect("utf-8")).collect();
    run_python(COUNT, &args)
        .lines()
        .map(|line| {
            let counts: Vec<u64> = line
                .split(' ')
                .map(|n| n.parse().expect("a count"))
                .collect();
            [counts[0], counts[1], counts[2]]
        })
        .collect()
}

/// The entries of a partition folder whose names an engine would skip or that look like a
/// staging file (`.x`, `_x`, `x#1`).
fn hidden_or_staged(folder: &LocalPath) -> Vec<String> {
    std::fs::read_dir(folder)
        .expect("partition")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.') || name.starts_with('_') || name.contains('#'))
        .collect()
}

#[test]
fn kill_9_while_publishing_to_a_lake_folder_leaves_nothing_engines_read() {
    // Regression (issue 15, finding 5): a run killed while publishing left
    // `contact_inboxes-<run>.parquet#1` in the partition for good, and engines counted its
    // rows on top of the manifest's. The test hook holds the run once its data files are
    // complete under their temporary names, so the kill lands there every time.
    let fake = Fake::with_contacts(300);
    let dir = tempfile::tempdir().expect("temp dir");
    let lake = dir.path().join("lake");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).expect("mkdir");
    let file = dir.path().join("lake.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nbase_url = \"{}\"\naccount_id = 1\n[fetch]\nconcurrency = 2\n\
             [sink]\nformat = \"parquet\"\ndestination = \"{}\"\npath = \"{{table}}/account_id={{account_id}}\"\n",
            fake.base_url(),
            lake.display()
        ),
    )
    .expect("write");
    let partitions = [
        lake.join("contacts/account_id=1"),
        lake.join("contact_inboxes/account_id=1"),
    ];
    let folders: Vec<&LocalPath> = partitions.iter().map(|p| p.as_path()).collect();
    let manifest_rows = || -> Vec<u64> {
        ["contacts", "contact_inboxes"]
            .iter()
            .map(|table| {
                let at = lake.join(format!(
                    "_chatwoot_export/{table}/account_id=1/manifest.json"
                ));
                let text = std::fs::read_to_string(at).expect("manifest");
                let manifest: Value = serde_json::from_str(&text).expect("json");
                manifest["tables"][table]["rows"].as_u64().expect("rows")
            })
            .collect()
    };
    let tmpdir = tmp.to_str().expect("utf-8");
    // The staging places live in the test's own cache folder.
    let cache = dir.path().join("cache");
    let cache_dir = cache.to_str().expect("utf-8");
    let env = [
        ("CHATWOOT_API_TOKEN", TOKEN),
        ("TMPDIR", tmpdir),
        ("XDG_CACHE_HOME", cache_dir),
    ];
    let args = ["run", file.to_str().expect("utf-8"), "--no-progress"];

    let first = run_with_env(&args, &env);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let rows = manifest_rows();
    assert_eq!(rows[0], 300);

    let mut killed = Command::new(env!("CARGO_BIN_EXE_chatwoot-export"))
        .args(args)
        .env("CHATWOOT_API_TOKEN", TOKEN)
        .env("TMPDIR", &tmp)
        .env("XDG_CACHE_HOME", &cache)
        .env("CHATWOOT_EXPORT_TEST_PUBLISH_PAUSE_MS", "60000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let beside: Vec<PathBuf> = ["contacts", "contact_inboxes"]
        .iter()
        .map(|table| lake.join(format!("_chatwoot_export/{table}/account_id=1")))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while beside.iter().any(|p| hidden_or_staged(p).is_empty()) {
        assert!(
            Instant::now() < deadline,
            "no temporary file appeared within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Mid-publish, the engines still read exactly the first run.
    let counts = engine_counts(&folders);
    for (count, rows) in counts.iter().zip(&rows) {
        assert_eq!(count, &[*rows; 3], "the temporary file is read as data");
    }
    killed.kill().expect("SIGKILL");
    killed.wait().expect("reaped");
    for partition in &partitions {
        assert_eq!(
            hidden_or_staged(partition),
            Vec::<String>::new(),
            "the partition holds data files only"
        );
    }
    for folder in &beside {
        let left = hidden_or_staged(folder);
        assert!(
            !left.is_empty()
                && left
                    .iter()
                    .all(|name| name.starts_with('.') && name.ends_with(".tmp")),
            "{left:?}"
        );
    }

    // The killed run's export was finished and is kept in its staging folder (its lock, left
    // by the kill, is stale): a rerun refuses to discard it, and --resume publishes it without
    // a request to Chatwoot.
    let refused = run_with_env(&args, &env);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("--restart"), "{}", refused.stderr);
    let before = fake.requests();
    let resume_args = [args[0], args[1], args[2], "--resume"];
    let next = run_with_env(&resume_args, &env);
    assert_eq!(next.code, 0, "{}", next.stderr);
    assert_eq!(
        fake.requests(),
        before,
        "the kept export was published as it was"
    );
    for folder in partitions.iter().chain(&beside) {
        assert_eq!(
            hidden_or_staged(folder),
            Vec::<String>::new(),
            "the next run removed the leftovers"
        );
    }
    let rows = manifest_rows();
    assert_eq!(rows[0], fake.truth().len() as u64);
    for (count, rows) in engine_counts(&folders).iter().zip(&rows) {
        assert_eq!(count, &[*rows; 3], "every engine reads the manifest's rows");
    }
}
