//! The `mlprune` binary: the command line is run by `mlprune::cli::run`, which the Python package's
//! console script shares. Exit codes: 0 success, 1 bad input or runtime failure, 2 usage or
//! configuration error, 128 + the signal when interrupted.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(mlprune::cli::run(std::env::args_os()))
}
