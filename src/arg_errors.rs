//! Command-line parse errors as mlprune errors: one line with exit code 2, like every other
//! mlprune error, built from clap's error kind and context rather than its multi-line rendering.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::CommandFactory;

use crate::cli::Cli;
// A long value is quoted as config text is: a 100,000-digit `--global-sparsity` made a 200 KB
// error line (red team, session 22).
use crate::config::pyfmt::clip;
use crate::error::Error;

/// A command-line parse error as one line (exit 2), like every other mlprune error: built from the
/// error's kind and context rather than clap's multi-line rendering (usage block, tips), and ending
/// with where to look: `unexpected argument '--foo'; see 'mlprune prune --help'`.
pub fn one_line(e: &clap::Error) -> Error {
    let text = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) if !v.is_empty() => Some(v.join(", ")),
        Some(ContextValue::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let arg = text(ContextKind::InvalidArg).map(|a| clip(&a));
    let full_value = text(ContextKind::InvalidValue);
    let value = full_value.as_deref().map(clip);
    let mut message = match (e.kind(), arg.as_deref(), value.as_deref()) {
        (ErrorKind::UnknownArgument, Some(arg), _) => format!("unexpected argument '{arg}'"),
        (ErrorKind::InvalidSubcommand, _, _) => match text(ContextKind::InvalidSubcommand) {
            Some(command) => format!("unrecognized command '{}'", clip(&command)),
            None => "unrecognized command".into(),
        },
        (ErrorKind::InvalidValue, Some(arg), Some("")) => format!("a value is required for '{arg}'"),
        (ErrorKind::InvalidValue | ErrorKind::ValueValidation, Some(arg), Some(value)) => {
            // The parser's reason may quote the value too: quoted clipped as well.
            let why = std::error::Error::source(e)
                .map(|s| format!(": {s}"))
                .map(|why| match full_value.as_deref() {
                    Some(full) if !full.is_empty() => why.replace(full, value),
                    _ => why,
                })
                .unwrap_or_default();
            format!("invalid value '{value}' for '{arg}'{why}")
        }
        (ErrorKind::MissingRequiredArgument, Some(args), _) => match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::Strings(v)) if v.len() > 1 => format!("missing required arguments {args}"),
            _ => format!("missing required argument {args}"),
        },
        (ErrorKind::ArgumentConflict, Some(arg), _) => match text(ContextKind::PriorArg) {
            Some(prior) if prior == arg => format!("the argument '{arg}' cannot be used more than once"),
            Some(prior) => format!("the argument '{arg}' cannot be used with '{prior}'"),
            None => format!("the argument '{arg}' cannot be used with the other arguments given"),
        },
        (ErrorKind::TooManyValues, Some(arg), Some(value)) => {
            format!("unexpected value '{value}' for '{arg}'; no more were expected")
        }
        (ErrorKind::TooFewValues | ErrorKind::WrongNumberOfValues, Some(arg), _) => {
            let expected = text(ContextKind::MinValues).or_else(|| text(ContextKind::ExpectedNumValues));
            let actual = text(ContextKind::ActualNumValues).unwrap_or_else(|| "?".into());
            format!(
                "'{arg}' needs {} values, got {actual}",
                expected.unwrap_or_else(|| "more".into())
            )
        }
        (ErrorKind::NoEquals, Some(arg), _) => format!("'{arg}' needs its value after '='"),
        (ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand, _, _) => {
            let commands: Vec<String> = Cli::command()
                .get_subcommands()
                .map(|c| c.get_name().to_owned())
                .collect();
            format!("no command given (one of: {})", commands.join(", "))
        }
        (ErrorKind::InvalidUtf8, _, _) => "an argument is not valid UTF-8".into(),
        // Any other kind (clap may add some): its fixed description, still one line.
        (kind, _, _) => kind.as_str().unwrap_or("invalid arguments").to_owned(),
    };
    match e.kind() {
        ErrorKind::InvalidValue => {
            if let Some(valid) = text(ContextKind::ValidValue) {
                message.push_str(&format!(" (possible values: {valid})"));
            }
        }
        ErrorKind::UnknownArgument | ErrorKind::InvalidSubcommand => {
            let suggested =
                text(ContextKind::SuggestedArg).or_else(|| text(ContextKind::SuggestedSubcommand));
            if let Some(suggested) = suggested {
                message.push_str(&format!(" (did you mean '{}'?)", clip(&suggested)));
            }
        }
        _ => {}
    }
    message.push_str(&format!("; see '{} --help'", command_path()));
    Error::Usage(message)
}

/// `mlprune` or `mlprune <command>`, for the help pointer: the top level has no options that take a
/// value, so the command, when one was named, is the first argument.
fn command_path() -> String {
    let first = std::env::args_os().nth(1);
    let command = first
        .as_ref()
        .and_then(|a| a.to_str())
        .filter(|a| Cli::command().get_subcommands().any(|c| c.get_name() == *a));
    match command {
        Some(c) => format!("mlprune {c}"),
        None => "mlprune".into(),
    }
}
