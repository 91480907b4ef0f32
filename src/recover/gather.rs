//! The effects before a plan: [`gather`] reads what [`super::plan::plan`] needs (the source's record
//! from the store, the listings of the source and target prefixes, the target's record, the
//! configuration and the time) into [`PlanInputs`]. Errors only when planning itself is impossible
//! (store or S3 unreadable, unknown source); what the guards think of the inputs is the plan's job.

use super::plan::{plan, target_prefix, Plan, PlanInputs, PlanRequest, PlanSettings, PlatformOps, SourceFacts, TargetSpec};
use super::RecoverConfig;
use crate::adapters::etcd::Etcd;
use crate::adapters::platform::Platform;
use crate::adapters::s3::{ObjectInfo, ObjectStore, S3Error, S3Url, S3UrlError, SourcePrefix, TargetPrefix};
use crate::query::{Access, QueryError};
use crate::state::InstanceRecord;

/// Where [`gather`] reads from.
pub struct PlanEnv<'a> {
    pub access: &'a Access,
    pub s3: &'a ObjectStore,
    pub platform: &'a dyn Platform,
    pub etcd: Option<&'a Etcd>,
    pub cfg: &'a RecoverConfig,
    /// The time the plan is made at.
    pub now: i64,
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Store(#[from] QueryError),
    #[error("no instance {id} in the store; list known ids with `safeguard instances --deleted`, or ingest older logs with `safeguard ingest`")]
    UnknownSource { id: String },
    #[error("no backup prefix is recorded for {id} (no WAL-E line of it was seen), so its backups cannot be located; check `safeguard verify {id} --prefix s3://<bucket>/backups/{id}/wal/` and recover with --to-prefix from a known prefix")]
    NoBackupPrefix { id: String },
    #[error("the recorded backup prefix {prefix:?} of {id} is not an S3 URL: {cause}; check it with `safeguard show {id}`")]
    BadSourcePrefix { id: String, prefix: String, cause: S3UrlError },
    #[error("listing the source backups {url}: {cause}")]
    ListSource { url: S3Url, cause: S3Error },
    #[error("listing the target prefix {url}: {cause}")]
    ListTarget { url: S3Url, cause: S3Error },
}

/// Reads everything the plan needs.
pub async fn gather<'a>(req: &PlanRequest, env: &PlanEnv<'a>) -> Result<PlanInputs<'a>, PlanError> {
    let source = source_facts(&req.source_id.to_ascii_lowercase(), env).await?;
    let target_record = match &req.target {
        TargetSpec::Into { instance_id } => env.access.record(&instance_id.to_ascii_lowercase())?,
        TargetSpec::Create { .. } | TargetSpec::Prefix { .. } => None,
    };
    // Ids may be typed as unique prefixes (as `show` takes them); the plan, its prefixes and its locks
    // use the full ids the store resolved them to.
    let mut request = req.clone();
    request.source_id = source.id.clone();
    if let (TargetSpec::Into { instance_id }, Some(r)) = (&mut request.target, &target_record) {
        *instance_id = r.instance_id.clone();
    }
    let target_listing = target_listing(&request.target, &source, target_record.as_ref(), env.s3).await?;
    Ok(PlanInputs {
        request,
        now: env.now,
        source,
        target_record,
        target_listing,
        etcd_url: env.etcd.map(|e| e.url().to_string()),
        watcher_running: matches!(env.access, Access::Watcher { .. }),
        settings: PlanSettings {
            target_wait: env.cfg.target_wait,
            confirm_timeout: env.cfg.confirm_timeout,
            multipart_threshold_mb: env.cfg.multipart_threshold_mb,
        },
        platform: Box::new(PlatformOps(env.platform)),
    })
}

/// Gathers and plans: what `safeguard recover` shows and, once approved, runs.
pub async fn build(req: &PlanRequest, env: &PlanEnv<'_>) -> Result<Plan, PlanError> {
    Ok(plan(&gather(req, env).await?))
}

/// The source's record, its backup prefix and that prefix's listing.
async fn source_facts(id: &str, env: &PlanEnv<'_>) -> Result<SourceFacts, PlanError> {
    let record = env.access.record(id)?.ok_or_else(|| PlanError::UnknownSource { id: id.to_string() })?;
    let recorded = record.backup_prefix.clone().ok_or_else(|| PlanError::NoBackupPrefix { id: id.to_string() })?;
    let prefix = S3Url::parse(&recorded).map_err(|cause| PlanError::BadSourcePrefix { id: id.to_string(), prefix: recorded.clone(), cause })?;
    let listing = env.s3.list_source(&SourcePrefix::new(prefix.clone())).await.map_err(|cause| PlanError::ListSource { url: prefix.clone(), cause })?;
    Ok(SourceFacts { id: record.instance_id.clone(), record, prefix, listing })
}

/// The listing of the target prefix, when there is one and it is a valid target (the plan refuses the
/// others without a listing).
async fn target_listing(
    spec: &TargetSpec,
    source: &SourceFacts,
    target: Option<&InstanceRecord>,
    s3: &ObjectStore,
) -> Result<Option<Vec<ObjectInfo>>, PlanError> {
    let Some(Ok(url)) = target_prefix(spec, source, target) else { return Ok(None) };
    let Ok(tp) = TargetPrefix::new(url.clone(), &SourcePrefix::new(source.prefix.clone())) else { return Ok(None) };
    s3.list_target(&tp).await.map(Some).map_err(|cause| PlanError::ListTarget { url, cause })
}
