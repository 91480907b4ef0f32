//! `safeguard recover <instance-id>`: the runbook for a deleted instance as one safe, resumable command.
//! See docs/recover.md for the operator's view.
//!
//! [`plan::build`] turns the stored record of the deleted (source) instance, a fresh S3 listing of its
//! backups and the options into a [`plan::Plan`]: every step with the exact URIs, ids, hosts and
//! commands, plus the guards' refusals. Nothing changes unless `--execute`; then [`exec`] runs the steps
//! in order, recording each step's start and result in the journal ([`journal`], a sled database of its
//! own at `<store>/recoveries/`, so recovery works while the watcher owns the main store) before and
//! after it runs. `--resume <id>` continues from the first unfinished step; each step is idempotent.
//!
//! Steps (instance mode): 1 source, 2 target, 3 stop, 4a clear target, 4b copy, 4c verify copy,
//! 5 etcd, 6 flush, 7 start, 8 confirm, 9 bind. `--to-prefix` runs 1, 4a, 4b, 4c only.
//!
//! The source prefix is only ever read: the copy goes through [`crate::adapters::s3::SourcePrefix`] (read-only)
//! and [`crate::adapters::s3::TargetPrefix`] (refuses to exist when it overlaps the source).
//!
//! Test-only crash injection: `SAFEGUARD_RECOVER_CRASH=after:<step>` makes the process exit with status
//! 86 right after `<step>`'s result is journaled; `copy:<n>` exits once `n` objects have been copied.

pub mod cli;
pub mod exec;
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
    #[serde(deserialize_with = "de_duration")]
    pub target_wait: String,
    /// How long step 8 waits for the restore to show in the stream.
    #[serde(deserialize_with = "de_duration")]
    pub confirm_timeout: String,
    /// How often steps 2 and 8 look at the store.
    #[serde(deserialize_with = "de_duration")]
    pub poll_interval: String,
    /// Progress line interval when stderr is not a terminal.
    #[serde(deserialize_with = "de_duration")]
    pub progress_interval: String,
}

impl Default for RecoverConfig {
    fn default() -> Self {
        RecoverConfig {
            max_target_objects: 50,
            concurrency: 32,
            copy_attempts: 5,
            multipart_threshold_mb: 5 * 1024,
            part_size_mb: 512,
            target_wait: "10m".into(),
            confirm_timeout: "15m".into(),
            poll_interval: "5s".into(),
            progress_interval: "10s".into(),
        }
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration like \"5s\" or \"15m\": {e}")))?;
    Ok(s)
}

pub(crate) fn dur(s: &str) -> Duration {
    humantime::parse_duration(s.trim()).unwrap_or(Duration::from_secs(5))
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
