//! The errors `main` reports, and the one function that maps them to exit codes.

use crate::pipeline::ExportError;
use crate::source::FetchError;

/// Exit code: the export failed (network, server, bad page, disk).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: bad usage or configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: authentication or access refused.
pub const EXIT_AUTH: u8 = 3;
/// Exit code: the account does not exist.
pub const EXIT_NOT_FOUND: u8 = 4;
/// Exit code: complete, but the account changed and some contacts could not be reconciled.
pub const EXIT_DRIFT: u8 = 5;
/// Exit code: interrupted by Ctrl-C or SIGTERM (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Anything that ends a run early.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigErrors),
    #[error(transparent)]
    Lake(#[from] crate::store::LakeError),
    #[error("{} of {total} accounts failed: {}", failed.len(), failed.join("; "))]
    Accounts {
        total: usize,
        /// `account N: why`, one per failed account.
        failed: Vec<String>,
        /// The exit code: the failures' own when they agree, else 1.
        code: u8,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(
        "the account changed during the export and {unresolved} contacts could not be reconciled: the files in {} are complete for every contact found (see \"drift\" in manifest.json); run again for an exact snapshot",
        out.display()
    )]
    Drift {
        unresolved: u64,
        out: std::path::PathBuf,
    },
    #[error(
        "the labels changed during the export: the walks of {labels} label(s) did not end with the counts they announced, so contact_labels in {} may miss pairs (see \"label_walk\" in manifest.json); run again for an exact snapshot",
        out.display()
    )]
    LabelsIncomplete {
        labels: u64,
        out: std::path::PathBuf,
    },
}

impl Error {
    /// Exit code 5, as for unresolved drift, when the `contact_labels` walk of the export
    /// written to `out` did not end with the counts its labels announced.
    pub fn check_label_walk(
        summary: &crate::pipeline::ExportSummary,
        out: &std::path::Path,
    ) -> Result<(), Error> {
        match &summary.manifest.label_walk {
            Some(walk) if !walk.complete => Err(Error::LabelsIncomplete {
                labels: walk.incomplete_labels.len() as u64,
                out: out.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Config(_) => EXIT_USAGE,
            Error::Lake(_) => EXIT_FAILURE,
            Error::Accounts { code, .. } => *code,
            Error::Drift { .. } | Error::LabelsIncomplete { .. } => EXIT_DRIFT,
            Error::Export(ExportError::Interrupted { .. }) => EXIT_INTERRUPTED,
            Error::Export(ExportError::Resume(_)) => EXIT_USAGE,
            Error::Export(ExportError::Store(crate::store::StoreError::NotAnExport { .. })) => {
                EXIT_USAGE
            }
            Error::Export(err) => match err.fetch().map(FetchError::last) {
                Some(fetch) if fetch.is_auth() => EXIT_AUTH,
                Some(FetchError::AccountNotFound { .. }) => EXIT_NOT_FOUND,
                _ => EXIT_FAILURE,
            },
            Error::Io { .. } => EXIT_FAILURE,
        }
    }

    /// The message on one line: causes joined, newlines folded.
    pub fn one_line(&self) -> String {
        self.to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_cause() {
        let fetch = |err: FetchError| Error::Export(ExportError::Fetch(err));
        let cases = [
            (Error::Usage("x".into()), EXIT_USAGE),
            (
                fetch(FetchError::Unauthorized {
                    page: 1,
                    server_says: "Invalid Access Token".into(),
                    hint: "h".into(),
                }),
                EXIT_AUTH,
            ),
            (
                fetch(FetchError::Forbidden {
                    page: 1,
                    server_says: "no".into(),
                }),
                EXIT_AUTH,
            ),
            (
                fetch(FetchError::AccountNotFound {
                    page: 1,
                    account_id: 9,
                }),
                EXIT_NOT_FOUND,
            ),
            (fetch(FetchError::RateLimited { page: 3 }), EXIT_FAILURE),
            (
                Error::Drift {
                    unresolved: 2,
                    out: "x".into(),
                },
                EXIT_DRIFT,
            ),
            (
                Error::LabelsIncomplete {
                    labels: 1,
                    out: "x".into(),
                },
                EXIT_DRIFT,
            ),
            (
                Error::Export(ExportError::Interrupted {
                    pages: 3,
                    out: "x".into(),
                }),
                EXIT_INTERRUPTED,
            ),
            (
                fetch(FetchError::InvalidPage {
                    page: 2,
                    detail: "eof".into(),
                }),
                EXIT_FAILURE,
            ),
        ];
        let cases = cases.into_iter().chain([
            (
                Error::Config(crate::config::ConfigErrors {
                    file: "p.toml".into(),
                    problems: Vec::new(),
                }),
                EXIT_USAGE,
            ),
            (
                Error::Lake(crate::store::LakeError::Unsupported("ftp://x".into())),
                EXIT_FAILURE,
            ),
            (
                Error::Accounts {
                    total: 3,
                    failed: vec!["account 2: refused".into()],
                    code: EXIT_AUTH,
                },
                EXIT_AUTH,
            ),
        ]);
        for (err, code) in cases {
            assert_eq!(err.exit_code(), code, "{err}");
        }
    }

    #[test]
    fn messages_are_one_line() {
        let err = Error::Usage("a\nb".into());
        assert_eq!(err.one_line(), "a b");
    }
}
