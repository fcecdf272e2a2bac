//! Starts the fake server on loopback and runs the binary against it.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use chatwoot_export::fake::{FakeServer, FakeServerConfig};
use serde_json::Value;

/// The token the tests' fake server accepts; every test checks it leaks nowhere.
pub const TOKEN: &str = "it-s3cret-token-7f3a9c2e";

/// A fake Chatwoot running on its own runtime for the length of a test.
pub struct Fake {
    server: Option<FakeServer>,
    runtime: tokio::runtime::Runtime,
}

impl Fake {
    pub fn start(config: FakeServerConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let config = FakeServerConfig {
            token: TOKEN.into(),
            ..config
        };
        let server = runtime
            .block_on(FakeServer::start(config, 0))
            .expect("fake server starts");
        Self {
            server: Some(server),
            runtime,
        }
    }

    pub fn with_contacts(contacts: u64) -> Self {
        Self::start(FakeServerConfig {
            contacts,
            ..FakeServerConfig::default()
        })
    }

    fn server(&self) -> &FakeServer {
        self.server.as_ref().expect("running")
    }

    pub fn base_url(&self) -> String {
        self.server().base_url()
    }

    /// Every contact the account holds now, in `created_at` order.
    pub fn truth(&self) -> Vec<Value> {
        self.server().live_truth()
    }

    /// The ids of the contacts deleted while the fake ran (drift): they existed at some point of
    /// the run and are listed no more.
    pub fn deleted_ids(&self) -> Vec<i64> {
        self.server().deleted_ids()
    }

    /// The ground truth of another account the fake serves (`FakeServerConfig::accounts`).
    pub fn truth_of(&self, account_id: u64) -> Vec<Value> {
        self.server()
            .live_truth_of(account_id)
            .expect("an account the fake serves")
    }

    /// The custom attribute definitions of the first account, as the API serves them.
    pub fn definitions(&self) -> Value {
        self.server().live_definitions()
    }

    /// The custom attribute definitions of account `account_id`.
    pub fn definitions_of(&self, account_id: u64) -> Value {
        self.server()
            .definitions_of(account_id)
            .expect("an account the fake serves")
    }

    /// The first account's labels, as `GET /labels` renders them in its `payload`.
    pub fn labels(&self) -> Value {
        self.server().live_labels()
    }

    /// The (contact id, label) pairs of the contacts listed now, by contact and label order.
    pub fn contact_labels(&self) -> Vec<(i64, String)> {
        self.server().live_contact_labels()
    }

    /// The most requests the fake's rate limit counted in one window.
    pub fn busiest_window(&self) -> u64 {
        self.server().busiest_window()
    }

    pub fn requests(&self) -> u64 {
        self.server().requests()
    }

    /// Simulates a day on the first account (see `fake::DayPlan`).
    pub fn simulate_day(
        &self,
        plan: chatwoot_export::fake::DayPlan,
    ) -> chatwoot_export::fake::DayReport {
        self.server().simulate_day(plan)
    }

    /// The ids of contacts edited since their last activity (the fake's ground truth).
    pub fn silently_edited(&self) -> Vec<i64> {
        self.server().silently_edited()
    }

    pub fn throttled(&self) -> u64 {
        self.server().throttled()
    }

    /// Refuses every request after the next `requests` with a 401 (`None`: accepts again).
    pub fn revoke_token_after(&self, requests: Option<u64>) {
        self.server().revoke_token_after(requests);
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime.block_on(server.shutdown());
        }
    }
}

/// What a run of the binary printed and returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `chatwoot-export ARGS` with the token in the environment.
pub fn run(args: &[&str]) -> Run {
    run_with_env(args, &[("CHATWOOT_API_TOKEN", TOKEN)])
}

pub fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chatwoot-export"));
    command
        .args(args)
        .env_remove("CHATWOOT_API_TOKEN")
        .env_remove("CHATWOOT_BASE_URL")
        .env_remove("CHATWOOT_ACCOUNT_ID")
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("the binary runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `contacts --base-url URL --account-id 1 --format F --out DIR --no-progress EXTRA...`
pub fn export(base_url: &str, format: &str, out: &Path, extra: &[&str]) -> Run {
    let out = out.to_str().expect("utf-8 path");
    let mut args = vec![
        "contacts",
        "--base-url",
        base_url,
        "--account-id",
        "1",
        "--format",
        format,
        "--out",
        out,
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// Every byte of every file under `dir`, for leak checks.
pub fn all_file_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files.push((path.display().to_string(), bytes));
            }
        }
    }
    files
}

/// Asserts that the token is in none of the run's output nor any file under `dir`, and that
/// the run did not panic (a panic message is where an unplanned value would show).
pub fn assert_no_token(run: &Run, dir: &Path) {
    assert!(!run.stderr.contains("panicked"), "a panic: {}", run.stderr);
    assert!(
        !run.stdout.contains(TOKEN),
        "token in stdout: {}",
        run.stdout
    );
    assert!(
        !run.stderr.contains(TOKEN),
        "token in stderr: {}",
        run.stderr
    );
    for (path, bytes) in all_file_bytes(dir) {
        let found = bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes());
        assert!(!found, "token in {path}");
    }
}

/// The manifest in `dir`, if any.
pub fn manifest(dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).ok()?;
    Some(serde_json::from_str(&text).expect("manifest is JSON"))
}

/// The contact ids of `DIR/contacts.ndjson`, in file order.
pub fn ndjson_ids(dir: &Path) -> Vec<i64> {
    let text = std::fs::read_to_string(dir.join("contacts.ndjson")).expect("contacts.ndjson");
    text.lines()
        .map(|line| {
            let contact: Value = serde_json::from_str(line).expect("a JSON object a line");
            contact["id"].as_i64().expect("an integer id")
        })
        .collect()
}

/// The Python with the test readers and servers (`$PYTHON`, which tests/run.sh sets to its
/// venv; `python3` otherwise).
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs `python -c script args...`, asserts success and returns its stdout.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let python = python();
    let output = Command::new(&python)
        .args(["-c", script])
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {python}: {err}; run tests/run.sh"));
    assert!(
        output.status.success(),
        "{python} -c {script:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Sends SIGINT (Ctrl-C) to `child` and returns what it printed and its exit code.
pub fn interrupt(child: Child) -> Run {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let output = child.wait_with_output().expect("the export ends");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
