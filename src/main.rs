//! The `mlprune` binary: parse, run, report. Exit codes: 0 success, 1 bad input or runtime
//! failure, 2 usage or configuration error.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

fn main() -> ExitCode {
    quiet_wayland_probe();
    let cli = match mlprune::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            // --help and --version: the full text on stdout, exit 0.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(0));
        }
        Err(e) => return report(&mlprune::arg_errors::one_line(&e)),
    };
    // From here on, an interrupted run removes its scratch paths (staging, temporary archives and
    // reports, extracted zips) and exits 128 + the signal number.
    if let Err(e) = mlprune::cleanup::install_signal_cleanup() {
        return report(&e);
    }
    match mlprune::cli::execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

/// Prints the one error line and returns its exit code.
fn report(e: &mlprune::Error) -> ExitCode {
    eprintln!("mlprune: error: {}", e.one_line());
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
}

/// Mesa's Vulkan drivers probe for a Wayland display while wgpu lists adapters, and libwayland
/// prints "error: XDG_RUNTIME_DIR is invalid or not set" to stderr when the variable is unset (CI
/// boxes, ssh sessions). mlprune never opens a window; giving the probe a directory to look in
/// keeps that noise out of our one-line error contract. Done first thing in `main`, while the
/// process has a single thread, and only when the variable is unset.
fn quiet_wayland_probe() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
}
