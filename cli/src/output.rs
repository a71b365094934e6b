//! `--output text|json` (and `--json`, its short form), shared by the commands that print.

use clap::{Args, ValueEnum};

/// How a command prints what it found.
#[derive(Args, Debug)]
pub struct OutputArgs {
    /// text, for people, or json: one object, for scripts.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = Format::Text)]
    output: Format,

    /// The same as --output json.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

impl OutputArgs {
    /// Whether to print JSON.
    pub fn is_json(&self) -> bool {
        self.json || self.output == Format::Json
    }
}
