//! One module per command: each takes the context every command shares and its own arguments, calls
//! the library and prints. `main.rs` only parses and dispatches. These modules belong to the binary,
//! not to the library: this is the only place `anyhow` is the error type.

pub mod doctor;
pub mod ingest;
pub mod query;
pub mod recover;
pub mod verify;
pub mod watch;

use std::path::PathBuf;

use anyhow::Result;
use safeguard::app::config::Config;
use safeguard::state::risk::RiskRules;

/// What every command starts from: the loaded config and the store it works on.
pub struct Ctx {
    pub cfg: Config,
    /// How the config was given, for messages (`doctor`).
    pub config_label: String,
    pub store_path: PathBuf,
    /// sled's page cache, bytes.
    pub cache: u64,
    pub rules: RiskRules,
    /// The wall clock when the command started (risk is judged at it).
    pub now: i64,
}

pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
