//! `safeguard recover <instance-id>`: the runbook for a deleted instance as one safe, resumable command.
//! See docs/recover.md for the operator's view. The command itself (arguments, prompts, output) is
//! `src/cmd/recover.rs`; this module is pure in the middle and has its effects at the edges:
//!
//! - [`gather::gather`] (effects) reads the stored record of the deleted (source) instance, fresh S3
//!   listings of the source and target prefixes, the target's record and the settings into a
//!   [`plan::PlanInputs`].
//! - [`plan::plan`] (pure: no I/O, no clock) turns those inputs into a [`plan::Plan`]: the
//!   [`plan::Mode`], every step with the exact URIs, ids, hosts and commands, and the guards' warnings
//!   and refusals. [`gather::build`] is the two in a row.
//! - [`exec`] (effects) runs an approved plan's steps in order, only with `--execute`, recording each
//!   step's start and result in the journal ([`journal`], a sled database of its own at
//!   `<store>/recoveries/`, so recovery works while the watcher owns the main store) before and after it
//!   runs. `--resume <id>` continues from the first unfinished step; each step is idempotent.
//!
//! Steps (instance mode): 1 source, 2 target, 3 stop, 4a clear target, 4b copy, 4c verify copy,
//! 5 etcd, 6 flush, 7 start, 8 confirm, 9 bind. `--to-prefix` runs 1, 4a, 4b, 4c only.
//!
//! The source prefix is only ever read: the copy goes through [`crate::adapters::s3::SourcePrefix`] (read-only)
//! and [`crate::adapters::s3::TargetPrefix`] (refuses to exist when it overlaps the source).
//!
//! Test-only crash injection: `SAFEGUARD_RECOVER_CRASH=after:<step>` makes the process exit with status
//! 86 right after `<step>`'s result is journaled; `copy:<n>` exits once `n` objects have been copied.

pub mod exec;
pub mod gather;
pub mod journal;
pub mod keys;
pub mod plan;
pub mod progress;

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// The one byte formatter lives in `verify`; this path stays for the callers that use it.
pub use crate::verify::human_bytes;

/// `[recover]` in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoverConfig {
    /// Refuse a target prefix holding more objects than this (a fresh instance holds about 6).
    pub max_target_objects: u64,
    /// Objects copied at the same time.
    pub concurrency: usize,
    /// Attempts per S3 request on transient errors, with exponential backoff.
    pub copy_attempts: u32,
    /// Objects above this many MiB are copied with multipart UploadPartCopy (S3's limit is 5 GiB).
    pub multipart_threshold_mb: u64,
    pub part_size_mb: u64,
    /// How long step 2 waits for the target's container and cell to appear in the store.
    #[serde(deserialize_with = "de_target_wait", serialize_with = "crate::settings::serialize_duration")]
    pub target_wait: Duration,
    /// How long step 8 waits for the restore to show in the stream.
    #[serde(deserialize_with = "de_confirm_timeout", serialize_with = "crate::settings::serialize_duration")]
    pub confirm_timeout: Duration,
    /// How often steps 2 and 8 look at the store.
    #[serde(deserialize_with = "de_poll_interval", serialize_with = "crate::settings::serialize_duration")]
    pub poll_interval: Duration,
    /// Progress line interval when stderr is not a terminal.
    #[serde(deserialize_with = "de_progress_interval", serialize_with = "crate::settings::serialize_duration")]
    pub progress_interval: Duration,
}

impl Default for RecoverConfig {
    fn default() -> Self {
        RecoverConfig {
            max_target_objects: 50,
            concurrency: 32,
            copy_attempts: 5,
            multipart_threshold_mb: 5 * 1024,
            part_size_mb: 512,
            target_wait: Duration::from_secs(10 * 60),
            confirm_timeout: Duration::from_secs(15 * 60),
            poll_interval: Duration::from_secs(5),
            progress_interval: Duration::from_secs(10),
        }
    }
}

/// The longest wait or interval accepted: the bound every configured duration has.
pub const MAX_WAIT: Duration = crate::settings::MAX_DURATION;

/// A `[recover]` duration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("recover.{key} = {value:?} is not a duration like \"5s\" or \"15m\": {reason}")]
    Unparsable { key: &'static str, value: String, reason: String },
    #[error("recover.{key} = {value:?} is zero, so {consequence}; give a positive duration like \"5s\" or \"15m\"")]
    Zero { key: &'static str, value: String, consequence: &'static str },
    #[error("recover.{key} = {value:?} is longer than 100 years, the longest accepted; give a duration like \"5s\" or \"15m\"")]
    TooLong { key: &'static str, value: String },
}

/// Parses the value of `recover.<key>`; `zero` says what a zero would do (every key refuses it).
fn parse_wait(key: &'static str, value: &str, zero: &'static str) -> Result<Duration, DurationError> {
    let d = humantime::parse_duration(value.trim()).map_err(|e| DurationError::Unparsable { key, value: value.to_string(), reason: e.to_string() })?;
    if d.is_zero() {
        return Err(DurationError::Zero { key, value: value.to_string(), consequence: zero });
    }
    if d > MAX_WAIT {
        return Err(DurationError::TooLong { key, value: value.to_string() });
    }
    Ok(d)
}

fn de_wait<'de, D: Deserializer<'de>>(d: D, key: &'static str, zero: &'static str) -> Result<Duration, D::Error> {
    parse_wait(key, &String::deserialize(d)?, zero).map_err(serde::de::Error::custom)
}

fn de_target_wait<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_wait(d, "target_wait", "step 2 would give up at once when the new instance's container is not known yet")
}

fn de_confirm_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_wait(d, "confirm_timeout", "step 8 would give up before the restore could show in the stream")
}

fn de_poll_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_wait(d, "poll_interval", "steps 2 and 8 would read the store in a busy loop")
}

fn de_progress_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_wait(d, "progress_interval", "a progress line would be written on every tick")
}

impl RecoverConfig {
    pub fn copy_options(&self, concurrency: Option<usize>) -> crate::adapters::s3::CopyOptions {
        crate::adapters::s3::CopyOptions {
            concurrency: concurrency.unwrap_or(self.concurrency).max(1),
            attempts: self.copy_attempts.max(1),
            multipart_threshold: self.multipart_threshold_mb.saturating_mul(1 << 20).min(crate::adapters::s3::MAX_SINGLE_COPY),
            part_size: self.part_size_mb.saturating_mul(1 << 20).max(5 << 20),
        }
    }
}

/// The steps, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum StepId {
    Source,
    Target,
    Stop,
    ClearTarget,
    Copy,
    VerifyCopy,
    Etcd,
    Flush,
    Start,
    Confirm,
    Bind,
}

impl StepId {
    pub fn as_str(self) -> &'static str {
        match self {
            StepId::Source => "source",
            StepId::Target => "target",
            StepId::Stop => "stop",
            StepId::ClearTarget => "clear_target",
            StepId::Copy => "copy",
            StepId::VerifyCopy => "verify_copy",
            StepId::Etcd => "etcd",
            StepId::Flush => "flush",
            StepId::Start => "start",
            StepId::Confirm => "confirm",
            StepId::Bind => "bind",
        }
    }

    /// The runbook's numbering.
    pub fn number(self) -> &'static str {
        match self {
            StepId::Source => "1",
            StepId::Target => "2",
            StepId::Stop => "3",
            StepId::ClearTarget => "4a",
            StepId::Copy => "4b",
            StepId::VerifyCopy => "4c",
            StepId::Etcd => "5",
            StepId::Flush => "6",
            StepId::Start => "7",
            StepId::Confirm => "8",
            StepId::Bind => "9",
        }
    }

    /// Changes something outside safeguard (the target's objects, keys, container, instance, bindings).
    pub fn destructive(self) -> bool {
        !matches!(self, StepId::Source | StepId::VerifyCopy | StepId::Confirm)
    }

    pub fn parse(s: &str) -> Option<StepId> {
        ALL_STEPS.iter().copied().find(|st| st.as_str() == s || st.number() == s)
    }
}

pub const ALL_STEPS: [StepId; 11] = [
    StepId::Source,
    StepId::Target,
    StepId::Stop,
    StepId::ClearTarget,
    StepId::Copy,
    StepId::VerifyCopy,
    StepId::Etcd,
    StepId::Flush,
    StepId::Start,
    StepId::Confirm,
    StepId::Bind,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RecoverConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn durations_load_from_the_strings_config_files_hold() {
        let c = parse("target_wait = \"3s\"\nconfirm_timeout = \"20s\"\npoll_interval = \"200ms\"\nprogress_interval = \" 1m 30s \"\n").unwrap();
        assert_eq!(c.target_wait, Duration::from_secs(3));
        assert_eq!(c.confirm_timeout, Duration::from_secs(20));
        assert_eq!(c.poll_interval, Duration::from_millis(200));
        assert_eq!(c.progress_interval, Duration::from_secs(90));
        assert_eq!(parse("").unwrap(), RecoverConfig::default());
        // Written back as read.
        let again: RecoverConfig = parse(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn a_bad_duration_names_its_key_and_value() {
        let e = parse("poll_interval = \"soon\"\n").unwrap_err();
        assert!(e.contains("recover.poll_interval = \"soon\" is not a duration"), "{e}");
        for key in ["target_wait", "confirm_timeout", "poll_interval", "progress_interval"] {
            let e = parse(&format!("{key} = \"0s\"\n")).unwrap_err();
            assert!(e.contains(&format!("recover.{key} = \"0s\" is zero, so ")), "{e}");
        }
        let e = parse("confirm_timeout = \"101years\"\n").unwrap_err();
        assert!(e.contains("recover.confirm_timeout = \"101years\" is longer than 100 years"), "{e}");
        let e = parse("target_wait = \"99999999999999999999s\"\n").unwrap_err();
        assert!(e.contains("recover.target_wait = \"99999999999999999999s\" is not a duration"), "{e}");
        assert!(parse("target_wait = \"100years\"\n").is_ok());
        assert!(parse("tagret_wait = \"1s\"\n").unwrap_err().contains("tagret_wait"));
    }
}
