//! `--config FILE`: settings in TOML, named as the flags are
//! (`max-connections = 50000`; `max_connections` too), below the flags and
//! the environment: flag > environment > file > default.
//!
//! The file's values become the flags' defaults before the command line
//! is parsed, so clap keeps the precedence and checks them as it checks
//! everything else. A key that is no flag is refused, naming the file and
//! its line. `wheel-server config` prints the effective settings in the
//! same form, each with where it came from, secrets redacted.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

/// Flags a file cannot set: the file itself, help, and the log verbosity
/// counters.
const NOT_SETTINGS: [&str; 5] = ["config_file", "help", "version", "verbose", "quiet"];

/// Settings printed as `<redacted>`.
const SECRETS: [&str; 3] = ["admin_token", "jwt_secret", "redis_password"];

/// The file `args` (or `WHEEL_SERVER_CONFIG`) names, if any.
pub fn path(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("WHEEL_SERVER_CONFIG").map(PathBuf::from)
}

/// `command` with the settings of the file at `path` as its defaults, and
/// the flags the file set (by id).
///
/// # Errors
///
/// The file cannot be read or is not TOML; a key is not a flag's name, or
/// its value is a table (one line, naming the file and the line).
pub fn apply(command: Command, path: &Path) -> Result<(Command, BTreeSet<String>), String> {
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read --config {shown}: {e}"))?;
    apply_text(command, &text, &shown.to_string())
}

fn apply_text(
    mut command: Command,
    text: &str,
    shown: &str,
) -> Result<(Command, BTreeSet<String>), String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start].lines().count().max(1))
            .unwrap_or(1);
        format!("{shown}:{line}: not TOML: {}", e.message())
    })?;
    let mut set = BTreeSet::new();
    for (key, value) in &table {
        let line = line_of(text, key);
        let long = key.replace('_', "-");
        let id = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .map(|a| a.get_id().to_string())
            .filter(|id| !NOT_SETTINGS.contains(&id.as_str()))
            .ok_or_else(|| {
                format!(
                    "{shown}:{line}: unknown setting `{key}` (a file's keys are the flags' names, e.g. max-connections; see wheel-server --help)"
                )
            })?;
        let values = strings(value).ok_or_else(|| {
            format!("{shown}:{line}: `{key}` must be a value or a list of values, not a table")
        })?;
        command = command.mut_arg(&id, |a| a.default_values(values));
        set.insert(id);
    }
    Ok((command, set))
}

/// A TOML value as the strings a flag takes: one, or one per element.
fn strings(value: &toml::Value) -> Option<Vec<String>> {
    let one = |v: &toml::Value| -> Option<String> {
        Some(match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
            toml::Value::Array(_) | toml::Value::Table(_) => return None,
        })
    };
    match value {
        toml::Value::Array(items) => items.iter().map(one).collect(),
        v => one(v).map(|s| vec![s]),
    }
}

/// The line of the file where `key` is set (1 if it cannot be found).
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start().trim_start_matches(['"', '\'']);
            l.strip_prefix(key).is_some_and(|rest| {
                rest.trim_start_matches(['"', '\''])
                    .trim_start()
                    .starts_with('=')
            })
        })
        .map_or(1, |i| i + 1)
}

/// The effective settings as a file `--config` reads, each with where it
/// came from; secrets redacted.
pub fn print(command: &Command, matches: &ArgMatches, from_file: &BTreeSet<String>) -> String {
    let mut out = String::from(
        "# wheel-server: the effective settings (flag > environment > file > default)\n",
    );
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if NOT_SETTINGS.contains(&id) {
            continue;
        }
        let Some(raw) = matches.get_raw(id) else {
            out.push_str(&format!("# {long}: not set\n"));
            continue;
        };
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            _ if from_file.contains(id) => "file",
            _ => "default",
        };
        let values: Vec<toml::Value> = raw
            .map(|v| {
                let v = v.to_string_lossy().into_owned();
                toml::Value::String(if SECRETS.contains(&id) {
                    "<redacted>".into()
                } else {
                    v
                })
            })
            .collect();
        let value = match <[toml::Value; 1]>::try_from(values) {
            Ok([one]) => one,
            Err(many) => toml::Value::Array(many),
        };
        out.push_str(&format!("{long} = {value}  # {source}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn apply(text: &str) -> Result<(Command, BTreeSet<String>), String> {
        apply_text(crate::cli::Args::command(), text, "wheel.toml")
    }

    #[test]
    fn an_unknown_key_is_refused_naming_the_file_and_the_line() {
        let e = apply("max-connections = 5\n\n# a comment\nmax_conections = 7\n").unwrap_err();
        assert!(
            e.starts_with("wheel.toml:4: unknown setting `max_conections`"),
            "{e}"
        );
        let e = apply("verbose = 3\n").unwrap_err();
        assert!(
            e.starts_with("wheel.toml:1: unknown setting `verbose`"),
            "{e}"
        );
        let e = apply("listen = { addr = 1 }\n").unwrap_err();
        assert!(e.contains("wheel.toml:1: `listen` must be a value"), "{e}");
        let e = apply("max-connections = \n").unwrap_err();
        assert!(e.starts_with("wheel.toml:1: not TOML"), "{e}");
    }

    #[test]
    fn file_values_lose_to_flags_and_win_over_defaults() {
        let (command, set) = apply(
            "max-connections = 50000\nidle_timeout = \"30s\"\nlisten = [\"127.0.0.1:7001\", \"line://127.0.0.1:7002\"]\nproxy-protocol = true\n",
        )
        .unwrap();
        assert_eq!(set.len(), 4);
        let matches = command
            .try_get_matches_from(["wheel-server", "--idle-timeout", "5s"])
            .unwrap();
        let raw = |id: &str| -> Vec<String> {
            matches
                .get_raw(id)
                .unwrap()
                .map(|v| v.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(raw("max_connections"), ["50000"]);
        assert_eq!(raw("idle_timeout"), ["5s"], "the flag wins");
        assert_eq!(raw("listen").len(), 2);
        assert_eq!(raw("proxy_protocol"), ["true"]);
    }
}
