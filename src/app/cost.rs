//! `safeguard report deleted`: what the backups of deleted instances still hold in the object store, and
//! what that costs a month. Read only: the store through `store::query`, S3 by listing.

use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use crate::adapters::s3::{ObjectStore, S3Url};
use crate::state::InstanceRecord;

/// `[report]` in the config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Storage price per GiB and month (S3 Standard in us-east-1 is about 0.023 USD).
    pub price_per_gib_month: f64,
    pub currency: String,
    /// Prefixes listed at the same time.
    pub concurrency: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig { price_per_gib_month: 0.023, currency: "USD".into(), concurrency: 8 }
    }
}

impl ReportConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.price_per_gib_month.is_finite() && self.price_per_gib_month >= 0.0) {
            return Err(format!("`report.price_per_gib_month` = {} must be a price of 0 or more", self.price_per_gib_month));
        }
        if !(1..=256).contains(&self.concurrency) {
            return Err(format!("`report.concurrency` = {} must be between 1 and 256", self.concurrency));
        }
        Ok(())
    }
}

/// One deleted instance and what its prefix holds.
#[derive(Debug, Clone, Serialize)]
pub struct DeletedRow {
    pub instance_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(with = "crate::timeutil::serde_opt_ms")]
    pub deleted_at: Option<i64>,
    pub backup_prefix: Option<String>,
    pub objects: u64,
    pub bytes: u64,
    pub latest_complete_backup: Option<String>,
    pub monthly_cost: f64,
    /// Why the prefix could not be listed (then objects and bytes are 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeletedReport {
    pub rows: Vec<DeletedRow>,
    pub instances: usize,
    pub objects: u64,
    pub bytes: u64,
    pub monthly_cost: f64,
    pub currency: String,
    pub price_per_gib_month: f64,
}

const GIB: f64 = (1u64 << 30) as f64;

/// Deleted instances of `records` deleted before `now - older_than`, oldest deletion first.
pub fn deleted_before(records: Vec<InstanceRecord>, now: i64, older_than: Option<Duration>) -> Vec<InstanceRecord> {
    let cutoff = older_than.map(|d| now.saturating_sub(crate::settings::millis(d)));
    let mut out: Vec<InstanceRecord> =
        records.into_iter().filter(|r| r.deleted_at.is_some()).filter(|r| cutoff.is_none_or(|c| r.deleted_at.is_some_and(|d| d <= c))).collect();
    out.sort_by_key(|r| (r.deleted_at, r.instance_id.clone()));
    out
}

/// Lists every instance's prefix (`cfg.concurrency` at a time) and adds up what it holds. `done` is
/// called after each listing, for progress.
pub async fn deleted(s3: &ObjectStore, records: Vec<InstanceRecord>, cfg: &ReportConfig, done: &(dyn Fn(usize) + Sync)) -> DeletedReport {
    let price = cfg.price_per_gib_month;
    let mut listed = 0;
    let mut rows: Vec<(usize, DeletedRow)> = stream::iter(records.into_iter().enumerate())
        .map(|(i, r)| async move {
            let mut row = DeletedRow {
                instance_id: r.instance_id.clone(),
                name: r.name.clone(),
                deleted_at: r.deleted_at,
                backup_prefix: r.backup_prefix.clone(),
                objects: 0,
                bytes: 0,
                latest_complete_backup: None,
                monthly_cost: 0.0,
                error: None,
            };
            match r.backup_prefix.as_deref().map(S3Url::parse) {
                None => row.error = Some("no backup prefix recorded (no WAL-E line of it was seen)".into()),
                Some(Err(e)) => row.error = Some(format!("the recorded prefix is not an S3 URL: {e}")),
                Some(Ok(url)) => {
                    let report = crate::verify::verify(s3, &url).await;
                    match &report.verdict {
                        crate::verify::Verdict::Unreachable { error } => row.error = Some(error.clone()),
                        _ => {
                            row.objects = report.objects;
                            row.bytes = report.bytes;
                            row.latest_complete_backup = report.latest_complete_backup.clone();
                            row.monthly_cost = report.bytes as f64 / GIB * price;
                        }
                    }
                }
            }
            (i, row)
        })
        .buffer_unordered(cfg.concurrency.max(1))
        .inspect(|_| {
            listed += 1;
            done(listed);
        })
        .collect::<Vec<_>>()
        .await;
    rows.sort_by_key(|(i, _)| *i);
    let rows: Vec<DeletedRow> = rows.into_iter().map(|(_, r)| r).collect();
    let (objects, bytes) = rows.iter().fold((0, 0), |(o, b), r| (o + r.objects, b + r.bytes));
    DeletedReport {
        instances: rows.len(),
        objects,
        bytes,
        monthly_cost: rows.iter().map(|r| r.monthly_cost).sum(),
        currency: cfg.currency.clone(),
        price_per_gib_month: price,
        rows,
    }
}

/// A table for people, totals last.
pub fn text(r: &DeletedReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ =
        writeln!(s, "{:<38} {:<24} {:>8} {:>12} {:>10}  {:<40} PREFIX", "INSTANCE", "DELETED AT", "OBJECTS", "BYTES", "PER MONTH", "LAST COMPLETE BASE BACKUP");
    for row in &r.rows {
        let deleted = row.deleted_at.map_or_else(|| "-".into(), crate::timeutil::rfc3339);
        let cost = format!("{:.2} {}", row.monthly_cost, r.currency);
        let _ = write!(
            s,
            "{:<38} {:<24} {:>8} {:>12} {:>10}  {:<40} {}",
            row.instance_id,
            deleted,
            row.objects,
            crate::verify::human_bytes(row.bytes),
            cost,
            row.latest_complete_backup.as_deref().unwrap_or("-"),
            row.backup_prefix.as_deref().unwrap_or("-")
        );
        if let Some(e) = &row.error {
            let _ = write!(s, "  (not listed: {e})");
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "{} deleted instance(s) hold {} object(s), {}: about {:.2} {} a month at {} {} per GiB-month",
        r.instances,
        r.objects,
        crate::verify::human_bytes(r.bytes),
        r.monthly_cost,
        r.currency,
        r.price_per_gib_month,
        r.currency
    );
    s
}

/// CSV with a header, one row per instance (RFC 4180 quoting).
pub fn csv(r: &DeletedReport) -> String {
    fn q(s: &str) -> String {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut s = String::from("instance_id,name,deleted_at,backup_prefix,objects,bytes,latest_complete_backup,monthly_cost,currency,error\n");
    for row in &r.rows {
        let fields = [
            q(&row.instance_id),
            q(row.name.as_deref().unwrap_or("")),
            row.deleted_at.map(crate::timeutil::rfc3339).unwrap_or_default(),
            q(row.backup_prefix.as_deref().unwrap_or("")),
            row.objects.to_string(),
            row.bytes.to_string(),
            q(row.latest_complete_backup.as_deref().unwrap_or("")),
            format!("{:.4}", row.monthly_cost),
            q(&r.currency),
            q(row.error.as_deref().unwrap_or("")),
        ];
        s.push_str(&fields.join(","));
        s.push('\n');
    }
    s
}
