//! The CLI's errors and the one place they become exit codes.

use std::process::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(
        "cannot reach the fjord gateway at {url}: {reason}\n  start it with `fjord serve`, or point to another with -g URL (or FJORD_URL)"
    )]
    Unreachable { url: String, reason: String },
    #[error(
        "the TLS certificate of {url} is not trusted: {reason}\n  if it is signed by a private CA, pass that CA with --ca-cert FILE (or FJORD_CA_CERT); for a self-signed test gateway, --tls-no-verify (or FJORD_TLS_NO_VERIFY=1)"
    )]
    Certificate { url: String, reason: String },
    #[error("{what}: {status} — {message}{hint}")]
    Api {
        what: String,
        status: u16,
        message: String,
        hint: String,
    },
    #[error("{0}")]
    Stack(#[from] fjord_stack::StackError),
    #[error("building {function} failed at step `{step}`:\n{output}")]
    Build {
        function: String,
        step: String,
        output: String,
    },
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Other(String),
}

impl CliError {
    /// 2 usage, 3 gateway unreachable, 4 not authorised, 5 not found, 1 anything else.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Unreachable { .. } | CliError::Certificate { .. } => ExitCode::from(3),
            CliError::Api {
                status: 401 | 403, ..
            } => ExitCode::from(4),
            CliError::Api { status: 404, .. } => ExitCode::from(5),
            _ => ExitCode::FAILURE,
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Io(e.to_string())
    }
}

pub const EXIT_CODES_HELP: &str = "Exit codes: 0 success, 1 failure, 2 wrong usage, 3 gateway unreachable, 4 not authorised (run `fjord login`), 5 not found.";
