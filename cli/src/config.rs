//! Every flag three ways: on the command line, as an `ONCELY_*` environment variable, or in a
//! TOML file (`--config FILE`, or `ONCELY_CONFIG`). A flag given wins over the environment,
//! which wins over the file.
//!
//! The variable of `--metrics-addr` is `ONCELY_METRICS_ADDR` (upper case, `-` as `_`) unless
//! the flag names another (`--deny-header`: `ONCELY_DENY_HEADERS`). In the file, a key is a
//! flag's long name (`metrics-addr` or `metrics_addr`); keys at the top level apply to every
//! command that has the flag, keys under `[serve]`, `[consume]`... to that command only:
//!
//! ```toml
//! store = "postgres://oncely@db.internal/oncely"
//! purge-every = "15m"
//!
//! [serve]
//! upstream = "http://127.0.0.1:3000"
//! metrics-addr = "127.0.0.1:9090"
//! deny-header = ["X-Request-Id", "X-Trace"]
//! ```
//!
//! The file's values become the flags' defaults, so clap's own precedence (command line, then
//! environment, then default) is the one documented; a key no command knows is an error.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, Command};

/// Flags that are not settings: never from the environment or a file.
const NOT_SETTINGS: [&str; 3] = ["help", "version", "config"];

/// Gives every flag that has none its `ONCELY_*` variable, in every subcommand.
pub fn with_env(command: Command) -> Command {
    command
        .mut_args(with_variable)
        .mut_subcommands(|sub| sub.mut_args(with_variable))
}

fn with_variable(arg: Arg) -> Arg {
    let Some(long) = arg.get_long().map(str::to_owned) else {
        return arg;
    };
    if arg.get_env().is_some() || NOT_SETTINGS.contains(&long.as_str()) {
        return arg;
    }
    // A value may be a password or a token: --help names the variable, never its value.
    arg.env(variable(&long)).hide_env_values(true)
}

/// `metrics-addr` -> `ONCELY_METRICS_ADDR`.
fn variable(long: &str) -> String {
    format!("ONCELY_{}", long.to_uppercase().replace('-', "_"))
}

/// The file named by `--config FILE` (`--config=FILE`) in `args`, else by `ONCELY_CONFIG`.
pub fn path(args: &[OsString]) -> Option<PathBuf> {
    let mut words = args.iter().skip(1);
    while let Some(word) = words.next() {
        let word = word.to_string_lossy();
        if word == "--" {
            break;
        }
        if word == "--config" {
            return words.next().map(PathBuf::from);
        }
        if let Some(path) = word.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("ONCELY_CONFIG").map(PathBuf::from)
}

/// `command` with the settings of the file at `path` as its flags' defaults. `args` tell which
/// subcommand runs: a `[name]` table applies to it alone.
pub fn with_file(command: Command, path: &Path, args: &[OsString]) -> Result<Command, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the config file {shown}: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map_or(1, |at| text[..at.start].matches('\n').count() + 1);
        format!(
            "the config file {shown} is not valid TOML: line {line}: {}",
            e.message()
        )
    })?;
    let names: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    let running = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy())
        .find(|a| names.iter().any(|n| n == a))
        .map(|a| a.into_owned());
    let mut command = command;
    for (key, value) in &table {
        if let toml::Value::Table(settings) = value {
            if !names.contains(key) {
                return Err(format!(
                    "the config file {shown} has a table [{key}], but oncely has no such command"
                ));
            }
            for (flag, value) in settings {
                let flag = flag.replace('_', "-");
                let sub = command.find_subcommand(key).expect("a listed name");
                if !has_setting(sub, &flag) {
                    return Err(format!(
                        "the config file {shown} sets `{flag}` under [{key}], which `oncely {key}` has no flag for"
                    ));
                }
                if running.as_deref() == Some(key.as_str()) {
                    let values = values(value, &flag, &shown)?;
                    command = command.mut_subcommand(key, |sub| set_default(sub, &flag, &values));
                }
            }
            continue;
        }
        let flag = key.replace('_', "-");
        let values = values(value, &flag, &shown)?;
        let known_here = has_setting(&command, &flag);
        let known_anywhere =
            known_here || command.get_subcommands().any(|sub| has_setting(sub, &flag));
        if !known_anywhere {
            return Err(format!(
                "the config file {shown} sets `{flag}`, which no oncely command has a flag for"
            ));
        }
        if known_here {
            command = set_default(command, &flag, &values);
        }
        if let Some(running) = &running {
            let sub = command.find_subcommand(running).expect("a listed name");
            if has_setting(sub, &flag) {
                command = command.mut_subcommand(running, |sub| set_default(sub, &flag, &values));
            }
        }
    }
    Ok(command)
}

fn has_setting(command: &Command, flag: &str) -> bool {
    !NOT_SETTINGS.contains(&flag) && command.get_arguments().any(|a| a.get_long() == Some(flag))
}

/// A TOML value as the flag's text(s): strings as they are, numbers and booleans written out,
/// an array as one value per element.
fn values(
    value: &toml::Value,
    flag: &str,
    shown: &impl std::fmt::Display,
) -> Result<Vec<String>, String> {
    let one = |value: &toml::Value| match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(x) => Ok(x.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "the config file {shown} sets `{flag}` to a {}: give a string, a number, a boolean or an array of them",
            other.type_str()
        )),
    };
    match value {
        toml::Value::Array(items) => items.iter().map(one).collect(),
        other => Ok(vec![one(other)?]),
    }
}

/// The file's value becomes the flag's default (so a flag or a variable still wins); a flag
/// the file sets is no longer required on the command line.
fn set_default(command: Command, flag: &str, values: &[String]) -> Command {
    let id = command
        .get_arguments()
        .find(|a| a.get_long() == Some(flag))
        .map(|a| a.get_id().clone())
        .expect("checked by has_setting");
    let values: Vec<clap::builder::OsStr> = values
        .iter()
        .map(|v| clap::builder::OsStr::from(v.clone()))
        .collect();
    command.mut_arg(id, |arg| arg.required(false).default_values(values))
}
