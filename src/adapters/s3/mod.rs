//! S3 access (aws-sdk-s3): listing an instance prefix such as `s3://bucket/backups/<id>/wal/`.
//!
//! Every call is bounded: one attempt may take at most `timeout`, and a whole call at most
//! `timeout * max_attempts`, so an unreachable store produces an error instead of a hang.
//! Credentials never appear in `Debug`, serialized config or error text.

use std::fmt;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{timeout::TimeoutConfig, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod objects;

/// Object store settings (`[s3]` in the configuration file).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// `http://127.0.0.1:9000` for MinIO, moto or Ceph; None means AWS S3 itself. Shown redacted.
    #[serde(serialize_with = "crate::redact::serialize_opt_url")]
    pub endpoint: Option<String>,
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by moto and most MinIO setups.
    /// Also used automatically when the endpoint host is an IP address or `localhost`,
    /// where virtual-hosted addressing (`bucket.host`) cannot work.
    pub path_style: bool,
    /// With `secret_access_key`; when both are None the default AWS chain is used
    /// (environment, profile, web identity, instance metadata).
    pub access_key_id: Option<String>,
    /// Never serialized, never printed.
    #[serde(skip_serializing)]
    pub secret_access_key: Option<String>,
    /// Allowed for each attempt of each call, e.g. "20s".
    #[serde(deserialize_with = "crate::settings::duration", serialize_with = "crate::settings::serialize_duration")]
    pub timeout: Duration,
    /// Attempts per call, including the first.
    pub max_attempts: u32,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: "us-east-1".to_string(),
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            timeout: Duration::from_secs(20),
            max_attempts: 3,
        }
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint.as_deref().map(crate::redact::url))
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

impl S3Config {
    /// The per-attempt timeout, validated.
    pub fn timeout_duration(&self) -> Result<Duration, S3Error> {
        crate::settings::check_nonzero("s3.timeout", self.timeout, "every S3 call would time out at once").map_err(|reason| S3Error::Config { reason })?;
        Ok(self.timeout)
    }

    /// Where requests go, for messages: the endpoint (redacted, [`crate::redact::url`]), or "AWS S3 (<region>)".
    pub fn endpoint_label(&self) -> String {
        match &self.endpoint {
            Some(e) => crate::redact::url(e),
            None => format!("AWS S3 ({})", self.region),
        }
    }

    fn validate(&self) -> Result<Duration, S3Error> {
        let timeout = self.timeout_duration()?;
        if self.max_attempts == 0 {
            return Err(S3Error::Config { reason: "s3.max_attempts must be at least 1".into() });
        }
        if self.region.trim().is_empty() {
            return Err(S3Error::Config { reason: "s3.region must not be empty (use \"us-east-1\" for moto/MinIO)".into() });
        }
        if let Some(ep) = &self.endpoint {
            let rest = ep.strip_prefix("http://").or_else(|| ep.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                return Err(S3Error::Config {
                    reason: format!("s3.endpoint {:?} must be a URL like http://127.0.0.1:9000 or https://s3.example.com", crate::redact::url(ep)),
                });
            }
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) | (None, Some(_)) => Err(S3Error::Config {
                reason: "set both s3.access_key_id and s3.secret_access_key, or neither to use the AWS credentials chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile, instance role)".into(),
            }),
            _ => Ok(timeout),
        }
    }

    /// Path style when asked for, or when the endpoint host cannot carry a bucket subdomain.
    fn effective_path_style(&self) -> bool {
        if self.path_style {
            return true;
        }
        let Some(ep) = &self.endpoint else { return false };
        let rest = ep.split_once("://").map_or(ep.as_str(), |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or("");
        let host = if authority.starts_with('[') {
            return true; // IPv6 literal
        } else {
            authority.rsplit_once(':').map_or(authority, |(h, _)| h)
        };
        host == "localhost" || host.parse::<std::net::Ipv4Addr>().is_ok()
    }

    /// Removes any credential text from a message that came from the SDK or the server: the configured
    /// keys, and whatever [`crate::redact::text`] recognises (a presigned URL's signature, a token).
    pub(crate) fn scrub(&self, text: &str) -> String {
        let keys = [&self.secret_access_key, &self.access_key_id].into_iter().flatten().filter(|k| k.len() >= 4);
        crate::redact::with_secrets(text, keys.map(String::as_str))
    }
}

/// Errors of this module; each message says what failed, where, and what to check next.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("invalid S3 configuration: {reason}")]
    Config { reason: String },

    #[error("could not reach the object store at {endpoint} to list {url} ({attempts} attempt(s)): {detail}. Check that the endpoint is right and reachable from this host (DNS, firewall, proxy, TLS) and that the S3 service is up")]
    Unreachable { endpoint: String, url: String, attempts: u32, detail: String },

    #[error("the object store at {endpoint} did not answer in time while listing {url} (timeout {timeout} per attempt, {attempts} attempt(s)): {detail}. Check the network path to the endpoint and its load; raise s3.timeout if it is merely slow")]
    Timeout { endpoint: String, url: String, timeout: String, attempts: u32, detail: String },

    #[error("bucket {bucket:?} does not exist at {endpoint} (listing {url}). Check the bucket name against the platform's WAL-E configuration (WALE_S3_PREFIX) and the endpoint/region")]
    NoSuchBucket { endpoint: String, bucket: String, url: String },

    #[error("the object store at {endpoint} refused to list {url}: {code}: {detail}. Check the credentials (s3.access_key_id/s3.secret_access_key or the AWS_* environment), the clock of this host, and that the policy allows s3:ListBucket on bucket {bucket:?}")]
    AccessDenied { endpoint: String, bucket: String, url: String, code: String, detail: String },

    #[error("no S3 credentials could be loaded to list {url} at {endpoint}: {detail}. Set s3.access_key_id and s3.secret_access_key, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or a profile or instance role) for this process")]
    NoCredentials { endpoint: String, url: String, detail: String },

    #[error("could not prepare the request to list {url} at {endpoint}: {detail}. Check the s3 configuration (endpoint, region, bucket name)")]
    Request { endpoint: String, url: String, detail: String },

    #[error("the object store at {endpoint} answered the listing of {url} with {code} (HTTP {status}): {detail}. Check the endpoint is an S3 API and the service logs")]
    Service { endpoint: String, url: String, code: String, status: u16, detail: String },

    #[error("the object store at {endpoint} sent a response that is not a valid S3 listing for {url}: {detail}. Check that the endpoint URL points at the S3 API (not a web console or proxy page)")]
    BadResponse { endpoint: String, url: String, detail: String },

    #[error(
        "{op} {url} at {endpoint} failed: {code} (HTTP {status}): {detail}. Check the credentials allow this operation on the bucket, and the service's logs"
    )]
    Operation { op: &'static str, endpoint: String, url: String, code: String, status: u16, detail: String },

    #[error("refused: {reason}")]
    Guard { reason: String },

    #[error("{op} {url}: the local file {path} failed: {detail}. Check the disk holding it (space, permissions)")]
    Local { op: &'static str, url: String, path: String, detail: String },
}

/// An `s3://bucket/key` location. A prefix parsed with [`S3Url::parse`] always ends with `/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct S3Url {
    pub bucket: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3UrlError {
    #[error("{url:?} is not an S3 URL: it must start with s3:// (e.g. s3://bucket/backups/<instance-id>/wal/)")]
    Scheme { url: String },
    #[error("{url:?} has no bucket name (expected s3://bucket/backups/<instance-id>/wal/)")]
    NoBucket { url: String },
    #[error("{url:?} has an invalid bucket name {bucket:?} (letters, digits, '.', '-', '_' only)")]
    BadBucket { url: String, bucket: String },
    #[error("{url:?} has an invalid key: {reason}")]
    BadKey { url: String, reason: &'static str },
}

fn valid_bucket(b: &str) -> bool {
    !b.is_empty() && b.len() <= 255 && b.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
}

impl S3Url {
    /// Parses a prefix URL; the key is normalised to end with `/` (an empty key means the whole bucket).
    pub fn parse(url: &str) -> Result<S3Url, S3UrlError> {
        let mut u = Self::parse_object(url)?;
        if !u.key.is_empty() && !u.key.ends_with('/') {
            u.key.push('/');
        }
        Ok(u)
    }

    /// Parses a URL naming one object (no trailing-slash normalisation), e.g. a WAL-E log's `key=`.
    pub fn parse_object(url: &str) -> Result<S3Url, S3UrlError> {
        let trimmed = url.trim();
        let rest = trimmed.strip_prefix("s3://").ok_or_else(|| S3UrlError::Scheme { url: url.to_string() })?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(S3UrlError::NoBucket { url: url.to_string() });
        }
        if !valid_bucket(bucket) {
            return Err(S3UrlError::BadBucket { url: url.to_string(), bucket: bucket.to_string() });
        }
        if key.starts_with('/') || key.contains("//") {
            return Err(S3UrlError::BadKey { url: url.to_string(), reason: "empty path segment (\"//\")" });
        }
        if key.chars().any(|c| c.is_control()) {
            return Err(S3UrlError::BadKey { url: url.to_string(), reason: "control character" });
        }
        if key.len() > 1024 {
            return Err(S3UrlError::BadKey { url: url.to_string(), reason: "longer than 1024 bytes" });
        }
        Ok(S3Url { bucket: bucket.to_string(), key: key.to_string() })
    }

    /// The WAL-E prefix of one Dingo PostgreSQL instance: `s3://<bucket>/backups/<id>/wal/`.
    pub fn instance_prefix(bucket: &str, instance_id: &str) -> Result<S3Url, S3UrlError> {
        Self::parse(&format!("s3://{bucket}/backups/{instance_id}/wal/"))
    }

    /// The instance id when this is `.../backups/<id>/wal/...`.
    pub fn instance_id(&self) -> Option<&str> {
        let mut parts = self.key.split('/');
        while let Some(p) = parts.next() {
            if p == "backups" {
                let id = parts.next()?;
                return (!id.is_empty() && parts.next() == Some("wal")).then_some(id);
            }
        }
        None
    }

    /// True when the key is empty or ends with `/`.
    pub fn is_prefix(&self) -> bool {
        self.key.is_empty() || self.key.ends_with('/')
    }

    /// This prefix plus a relative key (`wal_005/0000...lzo`); a `/` is inserted when needed.
    pub fn join(&self, rel: &str) -> S3Url {
        let rel = rel.trim_start_matches('/');
        let key = if self.key.is_empty() || self.key.ends_with('/') { format!("{}{rel}", self.key) } else { format!("{}/{rel}", self.key) };
        S3Url { bucket: self.bucket.clone(), key }
    }

    /// Like [`join`](Self::join) but the result is a prefix (ends with `/`).
    pub fn join_prefix(&self, rel: &str) -> S3Url {
        let mut u = self.join(rel);
        if !u.key.is_empty() && !u.key.ends_with('/') {
            u.key.push('/');
        }
        u
    }

    /// A full key under this prefix with the prefix removed, or None when it is outside.
    pub fn relative<'a>(&self, full_key: &'a str) -> Option<&'a str> {
        if self.key.is_empty() {
            return Some(full_key);
        }
        let rel = full_key.strip_prefix(self.key.as_str())?;
        // `backups/a/wal` must not claim `backups/a/wal2/x`.
        if self.key.ends_with('/') || rel.is_empty() || rel.starts_with('/') {
            Some(rel.trim_start_matches('/'))
        } else {
            None
        }
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

impl std::str::FromStr for S3Url {
    type Err = S3UrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        S3Url::parse(s)
    }
}

impl Serialize for S3Url {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for S3Url {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        S3Url::parse_object(&s).map_err(serde::de::Error::custom)
    }
}

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// Full key within the bucket.
    pub key: String,
    pub size: u64,
    pub last_modified_ms: i64,
}

/// A configured S3 client. The SDK client is built on first use (loading the default
/// credentials chain is async), so `connect` only validates and never blocks.
pub struct ObjectStore {
    config: S3Config,
    timeout: Duration,
    client: tokio::sync::OnceCell<aws_sdk_s3::Client>,
}

impl fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStore").field("config", &self.config).finish_non_exhaustive()
    }
}

impl ObjectStore {
    /// Validates the configuration; no network traffic happens here.
    pub fn connect(config: &S3Config) -> Result<ObjectStore, S3Error> {
        let timeout = config.validate()?;
        Ok(ObjectStore { config: config.clone(), timeout, client: tokio::sync::OnceCell::new() })
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// The endpoint as shown in messages.
    pub fn endpoint_label(&self) -> String {
        self.config.endpoint_label()
    }

    /// The underlying SDK client, built with this store's timeouts, retries and credentials.
    pub async fn client(&self) -> &aws_sdk_s3::Client {
        self.client.get_or_init(|| self.build_client()).await
    }

    async fn build_client(&self) -> aws_sdk_s3::Client {
        let c = &self.config;
        let attempts = c.max_attempts.max(1);
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(self.timeout)
            .read_timeout(self.timeout)
            .operation_attempt_timeout(self.timeout)
            // The hard bound on one call, retries and backoff included.
            .operation_timeout(self.timeout.saturating_mul(attempts))
            .build();
        let retry = RetryConfig::standard().with_max_attempts(attempts).with_max_backoff(Duration::from_secs(2).min(self.timeout));
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).region(Region::new(c.region.clone())).timeout_config(timeouts).retry_config(retry);
        if let (Some(id), Some(secret)) = (&c.access_key_id, &c.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(id, secret, None, None, "safeguard-config"));
        }
        if let Some(ep) = &c.endpoint {
            loader = loader.endpoint_url(ep.trim_end_matches('/'));
        }
        let sdk = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(self.config.effective_path_style());
        if c.endpoint.is_some() {
            // Ceph, MinIO and moto versions differ in their support of the newer default checksums.
            b = b.request_checksum_calculation(RequestChecksumCalculation::WhenRequired).response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        aws_sdk_s3::Client::from_conf(b.build())
    }

    /// Lists every object under `prefix` (all ListObjectsV2 pages), in key order.
    pub async fn list(&self, prefix: &S3Url) -> Result<Vec<ObjectInfo>, S3Error> {
        let client = self.client().await;
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = client.list_objects_v2().bucket(&prefix.bucket);
            if !prefix.key.is_empty() {
                req = req.prefix(&prefix.key);
            }
            if let Some(t) = &token {
                req = req.continuation_token(t);
            }
            let page = req.send().await.map_err(|e| self.map_err(prefix, e))?;
            for o in page.contents() {
                let Some(key) = o.key() else { continue };
                let last_modified_ms = o.last_modified().and_then(|t| t.to_millis().ok()).unwrap_or(0);
                out.push(ObjectInfo { key: key.to_string(), size: o.size().map_or(0, |s| s.max(0) as u64), last_modified_ms });
            }
            let next = page.next_continuation_token().map(str::to_string);
            match (page.is_truncated().unwrap_or(false), next) {
                (false, _) => break,
                (true, None) => return Err(self.bad_response(prefix, "the listing is truncated but has no continuation token")),
                // A server repeating a token would make this loop forever.
                (true, Some(n)) if token.as_deref() == Some(n.as_str()) => {
                    return Err(self.bad_response(prefix, "the server repeated the same continuation token"))
                }
                (true, Some(n)) => token = Some(n),
            }
        }
        Ok(out)
    }

    fn bad_response(&self, prefix: &S3Url, detail: &str) -> S3Error {
        S3Error::BadResponse { endpoint: self.endpoint_label(), url: prefix.to_string(), detail: detail.to_string() }
    }

    fn map_err(&self, prefix: &S3Url, err: SdkError<ListObjectsV2Error, HttpResponse>) -> S3Error {
        let c = &self.config;
        let endpoint = c.endpoint_label();
        let url = prefix.to_string();
        let attempts = c.max_attempts;
        let detail = c.scrub(crate::error_chain(&err).trim_end_matches('.'));
        // The default chain reports a missing identity as a dispatch or construction failure.
        let credentials = detail.to_ascii_lowercase().contains("credentials");
        match &err {
            SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_) if credentials => S3Error::NoCredentials { endpoint, url, detail },
            SdkError::TimeoutError(_) => S3Error::Timeout { endpoint, url, timeout: humantime::format_duration(c.timeout).to_string(), attempts, detail },
            SdkError::DispatchFailure(d) if d.is_timeout() => {
                S3Error::Timeout { endpoint, url, timeout: humantime::format_duration(c.timeout).to_string(), attempts, detail }
            }
            SdkError::DispatchFailure(_) => S3Error::Unreachable { endpoint, url, attempts, detail },
            SdkError::ConstructionFailure(_) => S3Error::Request { endpoint, url, detail },
            SdkError::ResponseError(_) => S3Error::BadResponse { endpoint, url, detail },
            SdkError::ServiceError(s) => {
                let code = s.err().code().unwrap_or("").to_string();
                let message = c.scrub(s.err().message().unwrap_or(""));
                let status = s.raw().status().as_u16();
                let bucket = prefix.bucket.clone();
                match code.as_str() {
                    "NoSuchBucket" => S3Error::NoSuchBucket { endpoint, bucket, url },
                    "AccessDenied"
                    | "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "ExpiredToken"
                    | "InvalidToken"
                    | "RequestTimeTooSkewed"
                    | "AllAccessDisabled"
                    | "AccountProblem" => S3Error::AccessDenied { endpoint, bucket, url, code, detail: message },
                    _ if status == 403 => S3Error::AccessDenied {
                        endpoint,
                        bucket,
                        url,
                        code: if code.is_empty() { "HTTP 403".into() } else { code },
                        detail: if message.is_empty() { detail } else { message },
                    },
                    _ => S3Error::Service {
                        endpoint,
                        url,
                        code: if code.is_empty() { "an error".into() } else { code },
                        status,
                        detail: if message.is_empty() { detail } else { message },
                    },
                }
            }
            _ => S3Error::BadResponse { endpoint, url, detail },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises_prefixes() {
        let u = S3Url::parse("s3://b/backups/6e101b27/wal").unwrap();
        assert_eq!(u.key, "backups/6e101b27/wal/");
        assert_eq!(u.to_string(), "s3://b/backups/6e101b27/wal/");
        assert_eq!(u.instance_id(), Some("6e101b27"));
        assert_eq!(S3Url::parse("s3://b").unwrap().key, "");
        assert!(matches!(S3Url::parse("http://b/x"), Err(S3UrlError::Scheme { .. })));
        assert!(matches!(S3Url::parse("s3:///x"), Err(S3UrlError::NoBucket { .. })));
        assert!(matches!(S3Url::parse("s3://b c/x"), Err(S3UrlError::BadBucket { .. })));
        assert!(matches!(S3Url::parse("s3://b//x"), Err(S3UrlError::BadKey { .. })));
        let o = S3Url::parse_object("s3://b/backups/i/wal/wal_005/x.lzo").unwrap();
        assert_eq!(o.key, "backups/i/wal/wal_005/x.lzo");
    }

    #[test]
    fn joins_and_relativises() {
        let p = S3Url::instance_prefix("b", "id").unwrap();
        assert_eq!(p.join("wal_005/a.lzo").key, "backups/id/wal/wal_005/a.lzo");
        assert_eq!(p.join_prefix("wal_005").key, "backups/id/wal/wal_005/");
        assert_eq!(p.relative("backups/id/wal/sysids/sysid"), Some("sysids/sysid"));
        assert_eq!(p.relative("backups/id2/wal/sysids/sysid"), None);
        let no_slash = S3Url { bucket: "b".into(), key: "backups/a/wal".into() };
        assert_eq!(no_slash.relative("backups/a/wal2/x"), None);
        assert_eq!(no_slash.relative("backups/a/wal/x"), Some("x"));
    }

    #[test]
    fn secret_stays_out_of_debug_and_json() {
        let c = S3Config { access_key_id: Some("AKIDEXAMPLE".into()), secret_access_key: Some("s3cr3t-value".into()), ..S3Config::default() };
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
        assert!(!serde_json::to_string(&c).unwrap().contains("s3cr3t-value"));
        assert_eq!(c.scrub("x s3cr3t-value y"), "x *** y");
    }

    #[test]
    fn validates_config() {
        assert!(ObjectStore::connect(&S3Config::default()).is_ok());
        let bad = S3Config { timeout: Duration::ZERO, ..S3Config::default() };
        assert!(matches!(ObjectStore::connect(&bad), Err(S3Error::Config { .. })));
        let half = S3Config { access_key_id: Some("a".into()), ..S3Config::default() };
        assert!(ObjectStore::connect(&half).is_err());
        let ep = S3Config { endpoint: Some("127.0.0.1:9000".into()), ..S3Config::default() };
        assert!(ObjectStore::connect(&ep).is_err());
        let ip = S3Config { endpoint: Some("http://127.0.0.1:9000".into()), ..S3Config::default() };
        assert!(ip.effective_path_style());
        let host = S3Config { endpoint: Some("https://s3.example.com".into()), ..S3Config::default() };
        assert!(!host.effective_path_style());
    }
}

// ---------------------------------------------------------------------------------------------------
// Recovery: HEAD, server-side copy from a read-only source prefix, batched deletes in a target prefix.
//
// The source of a copy is a [`SourcePrefix`], which has no writing method; every write or delete takes a
// [`TargetPrefix`], which can only be built for a prefix that neither equals, contains nor lies inside
// its source, and which re-checks every key it writes or deletes. So the source is only ever read.

/// Largest object a single CopyObject may copy; above it, multipart UploadPartCopy is used.
pub const MAX_SINGLE_COPY: u64 = 5 << 30;

/// A prefix that is only listed and read: no function writes or deletes through it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourcePrefix(S3Url);

impl SourcePrefix {
    pub fn new(url: S3Url) -> SourcePrefix {
        SourcePrefix(url)
    }
    pub fn url(&self) -> &S3Url {
        &self.0
    }
}

/// A prefix that may be written and deleted, checked against its source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPrefix {
    url: S3Url,
    source: S3Url,
}

/// True when one prefix equals or contains the other (same bucket, one key a prefix of the other).
pub fn prefixes_overlap(a: &S3Url, b: &S3Url) -> bool {
    a.bucket == b.bucket && (a.key.starts_with(&b.key) || b.key.starts_with(&a.key))
}

impl TargetPrefix {
    /// Refuses a target that equals, contains or is contained in the source, or that is not a prefix
    /// of an instance-sized part of the bucket (the whole bucket is never a target).
    pub fn new(url: S3Url, source: &SourcePrefix) -> Result<TargetPrefix, S3Error> {
        if url.key.is_empty() || !url.is_prefix() {
            return Err(S3Error::Guard { reason: format!("the target {url} must be a prefix ending in '/' inside a bucket, never a whole bucket") });
        }
        if prefixes_overlap(&url, source.url()) {
            let how = if url == *source.url() {
                "is the source"
            } else if source.url().key.starts_with(&url.key) {
                "contains the source"
            } else {
                "is inside the source"
            };
            return Err(S3Error::Guard {
                reason: format!("the target {url} {how} {}; a recovery only ever reads the source, so the target must be a different prefix", source.url()),
            });
        }
        Ok(TargetPrefix { url, source: source.url().clone() })
    }

    pub fn url(&self) -> &S3Url {
        &self.url
    }

    /// The full key for `rel`, checked to lie inside the target and outside the source.
    fn key_for(&self, rel: &str) -> Result<S3Url, S3Error> {
        let u = self.url.join(rel);
        if self.url.relative(&u.key).is_none() || rel.split('/').any(|p| p == ".." || p == ".") {
            return Err(S3Error::Guard { reason: format!("the key {rel:?} is not inside the target {}", self.url) });
        }
        if u.bucket == self.source.bucket && u.key.starts_with(&self.source.key) {
            return Err(S3Error::Guard { reason: format!("refusing to write or delete {u}: it lies inside the source {}", self.source) });
        }
        Ok(u)
    }
}

/// One object to copy, relative to the prefixes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyItem {
    pub rel: String,
    pub size: u64,
}

#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Objects copied at the same time.
    pub concurrency: usize,
    /// Attempts per request, first included, on transient errors (throttling, 5xx, timeouts, resets).
    pub attempts: u32,
    /// Objects larger than this are copied with multipart UploadPartCopy (at most 5 GiB).
    pub multipart_threshold: u64,
    /// Part size for multipart copies (at least 5 MiB).
    pub part_size: u64,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions { concurrency: 32, attempts: 5, multipart_threshold: MAX_SINGLE_COPY, part_size: 512 << 20 }
    }
}

/// Shared counters a progress display reads while a copy or delete runs.
#[derive(Debug, Default)]
pub struct TransferProgress {
    pub objects: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
    pub retries: std::sync::atomic::AtomicU64,
}

impl TransferProgress {
    fn add(&self, objects: u64, bytes: u64) {
        self.objects.fetch_add(objects, std::sync::atomic::Ordering::Relaxed);
        self.bytes.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

fn transient(e: &S3Error) -> bool {
    match e {
        S3Error::Unreachable { .. } | S3Error::Timeout { .. } => true,
        S3Error::Operation { status, code, .. } => {
            matches!(*status, 429 | 500 | 502 | 503 | 504)
                || matches!(code.as_str(), "SlowDown" | "InternalError" | "RequestTimeout" | "ServiceUnavailable" | "dispatch")
        }
        _ => false,
    }
}

/// Exponential backoff with jitter: 100 ms, 200 ms, ... capped at 5 s.
fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(6)).min(5_000);
    let jitter = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u64) % (base / 2 + 1);
    Duration::from_millis(base / 2 + jitter)
}

impl ObjectStore {
    /// Runs `f` until it succeeds, fails permanently, or `attempts` are used.
    async fn retrying<T, F, Fut>(&self, attempts: u32, progress: Option<&TransferProgress>, mut f: F) -> Result<T, S3Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, S3Error>>,
    {
        let mut n = 0;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) && n + 1 < attempts.max(1) => {
                    if let Some(p) = progress {
                        p.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    tracing::debug!(error = %e, attempt = n + 1, "retrying after a transient S3 error");
                    tokio::time::sleep(backoff(n)).await;
                    n += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn op_err<E>(&self, op: &'static str, url: &S3Url, err: SdkError<E, HttpResponse>) -> S3Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let c = &self.config;
        let endpoint = c.endpoint_label();
        let detail = c.scrub(crate::error_chain(&err).trim_end_matches('.'));
        let url_s = url.to_string();
        match &err {
            SdkError::TimeoutError(_) => {
                S3Error::Timeout { endpoint, url: url_s, timeout: humantime::format_duration(c.timeout).to_string(), attempts: c.max_attempts, detail }
            }
            SdkError::DispatchFailure(d) if d.is_timeout() => {
                S3Error::Timeout { endpoint, url: url_s, timeout: humantime::format_duration(c.timeout).to_string(), attempts: c.max_attempts, detail }
            }
            SdkError::DispatchFailure(_) => S3Error::Unreachable { endpoint, url: url_s, attempts: c.max_attempts, detail },
            SdkError::ServiceError(s) => {
                let status = s.raw().status().as_u16();
                let code = s.err().code().unwrap_or(if status == 404 { "NotFound" } else { "" }).to_string();
                let message = c.scrub(s.err().message().unwrap_or(""));
                S3Error::Operation { op, endpoint, url: url_s, code, status, detail: if message.is_empty() { detail } else { message } }
            }
            SdkError::ResponseError(r) => {
                let status = r.raw().status().as_u16();
                S3Error::Operation { op, endpoint, url: url_s, code: String::new(), status, detail }
            }
            _ => S3Error::Operation { op, endpoint, url: url_s, code: String::new(), status: 0, detail },
        }
    }

    /// HEAD one object: None when it does not exist.
    pub async fn head(&self, url: &S3Url) -> Result<Option<ObjectInfo>, S3Error> {
        let client = self.client().await;
        match client.head_object().bucket(&url.bucket).key(&url.key).send().await {
            Ok(h) => Ok(Some(ObjectInfo {
                key: url.key.clone(),
                size: h.content_length().map_or(0, |s| s.max(0) as u64),
                last_modified_ms: h.last_modified().and_then(|t| t.to_millis().ok()).unwrap_or(0),
            })),
            Err(SdkError::ServiceError(s)) if s.raw().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(self.op_err("HEAD", url, e)),
        }
    }

    /// Lists a source prefix (read only).
    pub async fn list_source(&self, source: &SourcePrefix) -> Result<Vec<ObjectInfo>, S3Error> {
        self.list(source.url()).await
    }

    /// Lists a target prefix.
    pub async fn list_target(&self, target: &TargetPrefix) -> Result<Vec<ObjectInfo>, S3Error> {
        self.list(target.url()).await
    }

    /// Server-side copy of one object from `source` to the same relative key under `target`; multipart
    /// above `opts.multipart_threshold`. Returns the new object's LastModified (ms) when the store says.
    pub async fn copy_object(
        &self,
        source: &SourcePrefix,
        item: &CopyItem,
        target: &TargetPrefix,
        opts: &CopyOptions,
        progress: Option<&TransferProgress>,
    ) -> Result<Option<i64>, S3Error> {
        let from = source.url().join(&item.rel);
        let to = target.key_for(&item.rel)?;
        let copy_source = format!("{}/{}", from.bucket, encode_key(&from.key));
        if item.size > opts.multipart_threshold.min(MAX_SINGLE_COPY) {
            return self.retrying(opts.attempts, progress, || self.multipart_copy(&copy_source, &from, &to, item.size, opts)).await;
        }
        let client = self.client().await;
        self.retrying(opts.attempts, progress, || async {
            let out =
                client.copy_object().bucket(&to.bucket).key(&to.key).copy_source(&copy_source).send().await.map_err(|e| self.op_err("CopyObject", &to, e))?;
            Ok(out.copy_object_result().and_then(|r| r.last_modified()).and_then(|t| t.to_millis().ok()))
        })
        .await
    }

    async fn multipart_copy(&self, copy_source: &str, from: &S3Url, to: &S3Url, size: u64, opts: &CopyOptions) -> Result<Option<i64>, S3Error> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let client = self.client().await;
        let part = opts.part_size.max(5 << 20).max(size.div_ceil(10_000));
        let up = client.create_multipart_upload().bucket(&to.bucket).key(&to.key).send().await.map_err(|e| self.op_err("CreateMultipartUpload", to, e))?;
        let upload_id = up.upload_id().unwrap_or_default().to_string();
        let result: Result<Vec<CompletedPart>, S3Error> = async {
            let mut parts = Vec::new();
            let mut start = 0u64;
            let mut n = 1i32;
            while start < size {
                let end = (start + part).min(size) - 1;
                let r = client
                    .upload_part_copy()
                    .bucket(&to.bucket)
                    .key(&to.key)
                    .upload_id(&upload_id)
                    .part_number(n)
                    .copy_source(copy_source)
                    .copy_source_range(format!("bytes={start}-{end}"))
                    .send()
                    .await
                    .map_err(|e| self.op_err("UploadPartCopy", from, e))?;
                let etag = r.copy_part_result().and_then(|p| p.e_tag()).unwrap_or_default().to_string();
                parts.push(CompletedPart::builder().part_number(n).e_tag(etag).build());
                start = end + 1;
                n += 1;
            }
            Ok(parts)
        }
        .await;
        match result {
            Ok(parts) => {
                client
                    .complete_multipart_upload()
                    .bucket(&to.bucket)
                    .key(&to.key)
                    .upload_id(&upload_id)
                    .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                    .send()
                    .await
                    .map_err(|e| self.op_err("CompleteMultipartUpload", to, e))?;
                Ok(None)
            }
            Err(e) => {
                let _ = client.abort_multipart_upload().bucket(&to.bucket).key(&to.key).upload_id(&upload_id).send().await;
                Err(e)
            }
        }
    }

    /// Copies `items` from `source` to `target` with at most `opts.concurrency` copies in flight; stops
    /// at the first permanent error. `progress` counts finished objects and bytes.
    pub async fn copy_objects(
        &self,
        source: &SourcePrefix,
        items: &[CopyItem],
        target: &TargetPrefix,
        opts: &CopyOptions,
        progress: &TransferProgress,
    ) -> Result<(), S3Error> {
        use futures_util::stream::{self, TryStreamExt};
        // Resolve the client once, before the concurrent copies share it.
        self.client().await;
        stream::iter(items.iter().map(Ok::<_, S3Error>))
            .try_for_each_concurrent(opts.concurrency.max(1), |item| async move {
                self.copy_object(source, item, target, opts, Some(progress)).await?;
                progress.add(1, item.size);
                Ok(())
            })
            .await
    }

    /// Deletes keys (relative to `target`) with DeleteObjects in batches of 1000; keys already gone count
    /// as deleted. Returns how many were deleted.
    pub async fn delete_objects(&self, target: &TargetPrefix, rels: &[String], attempts: u32, progress: Option<&TransferProgress>) -> Result<u64, S3Error> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        let client = self.client().await;
        let mut deleted = 0u64;
        for chunk in rels.chunks(1000) {
            let mut ids = Vec::with_capacity(chunk.len());
            for rel in chunk {
                let u = target.key_for(rel)?;
                ids.push(ObjectIdentifier::builder().key(u.key).build().map_err(|e| S3Error::Guard { reason: e.to_string() })?);
            }
            let del = Delete::builder().set_objects(Some(ids)).quiet(true).build().map_err(|e| S3Error::Guard { reason: e.to_string() })?;
            let out = self
                .retrying(attempts, progress, || async {
                    client
                        .delete_objects()
                        .bucket(&target.url().bucket)
                        .delete(del.clone())
                        .send()
                        .await
                        .map_err(|e| self.op_err("DeleteObjects", target.url(), e))
                })
                .await?;
            if let Some(e) = out.errors().first() {
                return Err(S3Error::Operation {
                    op: "DeleteObjects",
                    endpoint: self.endpoint_label(),
                    url: format!("s3://{}/{}", target.url().bucket, e.key().unwrap_or("?")),
                    code: e.code().unwrap_or("").to_string(),
                    status: 0,
                    detail: format!("{} of {} keys in the batch were not deleted: {}", out.errors().len(), chunk.len(), e.message().unwrap_or("")),
                });
            }
            deleted += chunk.len() as u64;
            if let Some(p) = progress {
                p.add(chunk.len() as u64, 0);
            }
        }
        Ok(deleted)
    }
}

/// Percent-encodes a key for `x-amz-copy-source`, keeping `/`.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod recovery_tests {
    use super::*;

    fn err(status: u16, code: &str) -> S3Error {
        S3Error::Operation { op: "CopyObject", endpoint: "e".into(), url: "s3://b/k".into(), code: code.into(), status, detail: "d".into() }
    }

    fn store() -> ObjectStore {
        let cfg = S3Config { endpoint: Some("http://127.0.0.1:9".into()), ..S3Config::default() };
        ObjectStore::connect(&cfg).unwrap()
    }

    // The backoff and the retry bound, in-process; tests/recover.rs drives the same path end to end
    // through a fault-injecting proxy in front of moto.
    #[tokio::test]
    async fn transient_errors_are_retried_with_backoff_and_counted() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let progress = TransferProgress::default();
        let started = std::time::Instant::now();
        let r = store()
            .retrying(5, Some(&progress), || async {
                match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                    0 => Err(err(503, "ServiceUnavailable")),
                    1 => Err(err(200, "SlowDown")),
                    _ => Ok("copied"),
                }
            })
            .await;
        assert_eq!(r.unwrap(), "copied");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(progress.retries.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert!(started.elapsed() >= Duration::from_millis(50 + 100), "backed off between attempts");
    }

    #[tokio::test]
    async fn permanent_errors_and_exhausted_attempts_stop() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let r: Result<(), _> = store()
            .retrying(5, None, || async {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(err(403, "AccessDenied"))
            })
            .await;
        assert!(matches!(r, Err(S3Error::Operation { status: 403, .. })));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "a permanent error is not retried");
        calls.store(0, std::sync::atomic::Ordering::SeqCst);
        let r: Result<(), _> = store()
            .retrying(3, None, || async {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(err(500, "InternalError"))
            })
            .await;
        assert!(matches!(r, Err(S3Error::Operation { status: 500, .. })));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3, "gives up after its attempts");
    }

    fn u(s: &str) -> S3Url {
        S3Url::parse(s).unwrap()
    }

    #[test]
    fn target_never_overlaps_source() {
        let src = SourcePrefix::new(u("s3://b/backups/a/wal/"));
        assert!(TargetPrefix::new(u("s3://b/backups/a/wal/"), &src).is_err());
        assert!(TargetPrefix::new(u("s3://b/backups/a/"), &src).is_err());
        assert!(TargetPrefix::new(u("s3://b/backups/"), &src).is_err());
        assert!(TargetPrefix::new(u("s3://b/backups/a/wal/x/"), &src).is_err());
        assert!(TargetPrefix::new(u("s3://b"), &src).is_err());
        let t = TargetPrefix::new(u("s3://b/backups/c/wal/"), &src).unwrap();
        assert!(t.key_for("wal_005/x.lzo").is_ok());
        assert!(t.key_for("../../a/wal/x").is_err());
        assert!(TargetPrefix::new(u("s3://other/backups/a/wal/"), &src).is_ok());
        // A sibling whose name starts with the source's is not inside it.
        assert!(TargetPrefix::new(u("s3://b/backups/a/wal2/"), &src).is_ok());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= Duration::from_millis(100));
        assert!(backoff(10) <= Duration::from_secs(5));
        assert_eq!(encode_key("a b/c+d"), "a%20b/c%2Bd");
    }
}
