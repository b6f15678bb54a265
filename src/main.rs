//! The `mlprune` binary: parse, run, report. Exit codes: 0 success, 1 bad input or runtime
//! failure, 2 usage or configuration error.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match mlprune::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version also arrive here, with exit code 0.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match mlprune::cli::execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mlprune: error: {}", e.one_line());
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}
