//! Platform operations recovery needs: create the new service instance, stop / flush / start its
//! container, bind apps. One trait, [`Platform`], with two implementations chosen by `[platform] type`:
//!
//! - `commands` (default, [`command::CommandPlatform`]): operator-supplied shell commands with
//!   `{container}`, `{host}`, `{deployment}`, `{instance_id}` (and `{name}`, `{space_guid}`, `{app}` for
//!   create/bind) placeholders, defaulting to the runbook's `bosh ssh ... docker stop` forms, because most
//!   cells expose their Docker socket only inside the VM. Create and bind use templates when set, else
//!   the Cloud Controller when `[cloud_controller]` is configured.
//! - `api` ([`ApiPlatform`]): the Cloud Controller v2 API ([`cloud_controller`]) for create and bind, the
//!   Docker Engine API ([`docker`]) over TCP or a unix socket for stop, flush and start.
//!
//! Every substituted placeholder is shell-quoted, and values are also restricted to a safe character
//! set, so a value can never become shell syntax even inside a nested `bosh ssh -c "..."` command.
//! Secrets (UAA client secret, user password) never appear in `Debug`, serialized config, plans or errors.

pub mod cloud_controller;
pub mod command;
pub mod docker;

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use cloud_controller::{CloudController, CloudControllerConfig};

/// `[platform]` in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformConfig {
    /// `commands` (shell command templates) or `api` (Cloud Controller + Docker Engine API).
    #[serde(rename = "type")]
    pub kind: PlatformKind,
    /// The BOSH deployment holding the cells, for `{deployment}`.
    pub deployment: String,
    pub commands: command::CommandsConfig,
    pub docker: docker::DockerConfig,
}

impl PlatformConfig {
    /// Checks what serde cannot; errors name the key and its value.
    pub fn validate(&self) -> Result<(), String> {
        crate::settings::check_nonzero("platform.commands.timeout", self.commands.timeout, "every platform command would be killed at once")?;
        crate::settings::check_nonzero("platform.docker.timeout", self.docker.timeout, "every Docker API call would time out at once")
    }
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            kind: PlatformKind::Commands,
            deployment: "dingo-postgresql".into(),
            commands: command::CommandsConfig::default(),
            docker: docker::DockerConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PlatformKind {
    #[default]
    Commands,
    Api,
}

/// The container a step acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    pub instance_id: String,
    /// `cf-<node-uuid>`.
    pub container: String,
    /// The cell (Docker host VM) running it.
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    pub name: String,
    pub space_guid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub instance_id: String,
    /// What was done, for the journal.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Create,
    Stop,
    Flush,
    Start,
    Bind,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Stop => "stop",
            Op::Flush => "flush",
            Op::Start => "start",
            Op::Bind => "bind",
        }
    }
}

/// Values an operation may refer to; what the plan shows and templates substitute.
#[derive(Debug, Clone, Default)]
pub struct OpContext<'a> {
    pub instance_id: Option<&'a str>,
    pub container: Option<&'a str>,
    pub host: Option<&'a str>,
    pub name: Option<&'a str>,
    pub space_guid: Option<&'a str>,
    pub app: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("invalid platform configuration: {0}")]
    Config(String),
    #[error("{op} is not possible with this configuration: {hint}")]
    NotConfigured { op: &'static str, hint: String },
    #[error("{op} {what}: the command `{command}` {outcome}; its output ended with: {tail}. Fix the cause (or the [platform.commands] {op} template) and run `safeguard recover --resume` again")]
    Command { op: &'static str, what: String, command: String, outcome: String, tail: String },
    #[error("{op} {what}: {service} at {url} could not be reached: {detail}. Check the URL in the config and that this host can reach it")]
    Unreachable { op: &'static str, what: String, service: &'static str, url: String, detail: String },
    #[error(transparent)]
    Api(Box<ApiFailure>),
    #[error("{op} {what}: {detail}")]
    Failed { op: &'static str, what: String, detail: String },
    /// Creating the instance failed because the name is taken in the space (Cloud Controller 60002).
    #[error("create {name}: the name is already taken in space {space_guid}. Choose another with --name, or recover into the existing instance with --into <its id>")]
    NameTaken { name: String, space_guid: String },
}

/// An error answer from a platform API.
#[derive(Debug, thiserror::Error)]
#[error("{op} {what}: {service} answered {method} {url} with HTTP {status}{code}: {detail}. {hint}")]
pub struct ApiFailure {
    pub op: &'static str,
    pub what: String,
    pub service: &'static str,
    pub method: &'static str,
    pub url: String,
    pub status: u16,
    /// ` (CF-ErrorCode)` or empty.
    pub code: String,
    pub detail: String,
    pub hint: String,
}

impl From<ApiFailure> for PlatformError {
    fn from(f: ApiFailure) -> Self {
        PlatformError::Api(Box::new(f))
    }
}

pub type OpFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, PlatformError>> + Send + 'a>>;

/// The platform operations of a recovery. Every operation is idempotent: stopping a stopped container,
/// flushing an empty data directory, starting a running one and binding a bound app succeed.
pub trait Platform: Send + Sync {
    /// `commands` or `api`.
    fn kind(&self) -> &'static str;
    /// What `op` will do, for the plan: the exact command line or API call. Never includes secrets.
    fn describe(&self, op: Op, ctx: &OpContext<'_>) -> String;
    fn create<'a>(&'a self, req: &'a CreateRequest) -> OpFuture<'a, Created>;
    /// An existing instance with this name in the space (to adopt one created by an interrupted run).
    fn find_instance<'a>(&'a self, name: &'a str, space_guid: &'a str) -> OpFuture<'a, Option<String>>;
    fn stop<'a>(&'a self, c: &'a ContainerRef) -> OpFuture<'a, String>;
    fn flush<'a>(&'a self, c: &'a ContainerRef) -> OpFuture<'a, String>;
    fn start<'a>(&'a self, c: &'a ContainerRef) -> OpFuture<'a, String>;
    fn bind<'a>(&'a self, instance_id: &'a str, space_guid: Option<&'a str>, app: &'a str) -> OpFuture<'a, String>;
}

/// Builds the configured platform.
pub fn from_config(cfg: &PlatformConfig, cc: Option<&CloudControllerConfig>) -> Result<Box<dyn Platform>, PlatformError> {
    let cc = cc.map(CloudController::new).transpose()?;
    match cfg.kind {
        PlatformKind::Commands => Ok(Box::new(command::CommandPlatform::new(cfg, cc)?)),
        PlatformKind::Api => {
            let docker = docker::Docker::new(&cfg.docker)?;
            Ok(Box::new(ApiPlatform { cc, docker }))
        }
    }
}

/// Cloud Controller for create and bind, Docker Engine API for the container.
pub struct ApiPlatform {
    pub cc: Option<CloudController>,
    pub docker: docker::Docker,
}

fn need_cc<'a>(cc: &'a Option<CloudController>, op: &'static str) -> Result<&'a CloudController, PlatformError> {
    cc.as_ref().ok_or_else(|| PlatformError::NotConfigured {
        op,
        hint: "add a [cloud_controller] section (api_url and client or user credentials), or create the instance yourself and pass --into <id>".into(),
    })
}

impl Platform for ApiPlatform {
    fn kind(&self) -> &'static str {
        "api"
    }
    fn describe(&self, op: Op, ctx: &OpContext<'_>) -> String {
        match op {
            Op::Create | Op::Bind => match &self.cc {
                Some(cc) => cc.describe(op, ctx),
                None => format!("{}: not possible, no [cloud_controller] configured", op.as_str()),
            },
            _ => self.docker.describe(op, ctx),
        }
    }
    fn create<'a>(&'a self, req: &'a CreateRequest) -> OpFuture<'a, Created> {
        Box::pin(async move { need_cc(&self.cc, "create")?.create(req).await })
    }
    fn find_instance<'a>(&'a self, name: &'a str, space_guid: &'a str) -> OpFuture<'a, Option<String>> {
        Box::pin(async move { need_cc(&self.cc, "create")?.find_instance(name, space_guid).await })
    }
    fn stop<'a>(&'a self, c: &'a ContainerRef) -> OpFuture<'a, String> {
        Box::pin(self.docker.stop(c))
    }
    fn flush<'a>(&'a self, c: &'a ContainerRef) -> OpFuture<'a, String> {
        Box::pin(self.docker.flush(c))
    }
    fn start<'a>(&'a self, c: &'a ContainerRef) -> OpFuture<'a, String> {
        Box::pin(self.docker.start(c))
    }
    fn bind<'a>(&'a self, instance_id: &'a str, space_guid: Option<&'a str>, app: &'a str) -> OpFuture<'a, String> {
        Box::pin(async move { need_cc(&self.cc, "bind")?.bind(instance_id, space_guid, app).await })
    }
}

/// Quotes a value for a POSIX shell: always single quotes, `'` written as `'\''`.
pub fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// Characters allowed in a substituted value: enough for GUIDs, container names, BOSH instance names
/// (`cell_z1/0`), host names and addresses, app and instance names with spaces; nothing a shell or a
/// nested `bosh ssh -c "..."` would interpret.
pub fn safe_value(v: &str) -> bool {
    !v.is_empty() && v.len() <= 255 && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '@' | ' ' | '+' | ','))
}

/// Percent-encodes a query or path component.
pub(crate) fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Last `n` characters of a command's or server's output, on one line, redacted (`crate::redact::text`:
/// a `cf` CLI's token, an echoed Authorization header) before it is cut, so a cut cannot reveal part
/// of a secret.
pub(crate) fn tail(s: &str, n: usize) -> String {
    let s = crate::redact::text(s.trim());
    let s = s.as_str();
    let start = s.char_indices().rev().nth(n).map_or(0, |(i, _)| i);
    let t = s[start..].replace('\n', " | ");
    if t.is_empty() {
        "(nothing)".into()
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("cf-abc"), "'cf-abc'");
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        assert!(safe_value("cf-c8ce128e-7b4c-4fe7-a533-e9379356f906"));
        assert!(safe_value("cell_z1/14ddd22e-719e"));
        assert!(!safe_value("x; rm -rf /"));
        assert!(!safe_value("$(id)"));
        assert!(!safe_value("a\"b"));
        assert_eq!(urlencode("name:a b"), "name%3Aa%20b");
    }
}
