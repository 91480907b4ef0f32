//! Platform operations as operator-supplied shell commands (`[platform.commands]`), run with `sh -c`.
//!
//! Placeholders: `{container}`, `{host}`, `{deployment}`, `{instance_id}`, and for create/bind `{name}`,
//! `{space_guid}`, `{app}`. Each is replaced by the shell-quoted value (`'cf-...'`); values outside a safe
//! character set are refused, so even inside a nested `bosh ssh -c "..."` a value stays one word. Any
//! other `{word}` is a configuration error (a typo must not run a half-substituted command); other
//! braces (`{{.Config.Image}}`) are left alone. A command succeeds when it exits 0 within `timeout`;
//! on timeout its whole process group is killed.
//!
//! `create` must print the new instance's GUID; the last GUID in its standard output is taken.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cloud_controller::CloudController;
use super::{safe_value, shell_quote, tail, ContainerRef, CreateRequest, Created, Op, OpContext, OpFuture, Platform, PlatformConfig, PlatformError};

const DOCKER: &str = "sudo /var/vcap/packages/docker/bin/docker --host unix:///var/vcap/sys/run/docker/docker.sock";

/// `[platform.commands]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandsConfig {
    pub stop: String,
    pub flush: String,
    pub start: String,
    /// Creates the instance and prints its GUID, e.g.
    /// `cf create-service dingo-postgresql solo {name} && cf service {name} --guid`. When unset, create
    /// uses `[cloud_controller]`.
    pub create: Option<String>,
    /// Binds app `{app}` to `{instance_id}`. When unset, bind uses `[cloud_controller]`.
    pub bind: Option<String>,
    /// Longest a command may run (humantime).
    #[serde(deserialize_with = "crate::settings::duration", serialize_with = "crate::settings::serialize_duration")]
    pub timeout: Duration,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            stop: format!("bosh -d {{deployment}} ssh {{host}} -c \"{DOCKER} stop {{container}}\""),
            flush: format!(
                "bosh -d {{deployment}} ssh {{host}} -c \"{DOCKER} run --rm --volumes-from {{container}} --entrypoint /bin/sh \\$({DOCKER} inspect --format '{{{{.Config.Image}}}}' {{container}}) -c 'find /data -mindepth 1 -delete'\""
            ),
            start: format!("bosh -d {{deployment}} ssh {{host}} -c \"{DOCKER} start {{container}}\""),
            create: None,
            bind: None,
            timeout: Duration::from_secs(600),
        }
    }
}

pub struct CommandPlatform {
    cfg: CommandsConfig,
    deployment: String,
    timeout: Duration,
    cc: Option<CloudController>,
}

/// Replaces known placeholders with quoted values. Errors on unknown `{word}` placeholders and on
/// missing or unsafe values.
pub fn render(template: &str, vars: &[(&str, Option<&str>)]) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let word_len = after.bytes().take_while(|b| b.is_ascii_lowercase() || *b == b'_').count();
        if word_len > 0 && after.as_bytes().get(word_len) == Some(&b'}') {
            let word = &after[..word_len];
            match vars.iter().find(|(k, _)| *k == word) {
                Some((_, Some(v))) if safe_value(v) => out.push_str(&shell_quote(v)),
                Some((_, Some(v))) => return Err(format!("the value {v:?} for {{{word}}} has characters that are not allowed in a command")),
                Some((_, None)) => return Err(format!("{{{word}}} is not known for this operation (is the instance's cell known?)")),
                None => {
                    return Err(format!(
                        "unknown placeholder {{{word}}}; known: {}",
                        vars.iter().map(|(k, _)| format!("{{{k}}}")).collect::<Vec<_>>().join(" ")
                    ))
                }
            }
            rest = &after[word_len + 1..];
        } else {
            out.push('{');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Output of one command.
#[derive(Debug)]
pub struct CommandOutput {
    pub status: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `sh -c cmd` in its own process group, killing the group after `timeout`. Blocking.
pub fn run_shell(cmd: &str, timeout: Duration) -> std::io::Result<CommandOutput> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("sh").arg("-c").arg(cmd).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).spawn()?;
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let t1 = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let t2 = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&t1.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t2.join().unwrap_or_default()).into_owned();
    Ok(CommandOutput { status: status.code(), timed_out, stdout, stderr })
}

/// The last GUID (8-4-4-4-12 hex) in `s`.
pub fn last_guid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut found = None;
    for i in 0..b.len().saturating_sub(35) {
        let w = &s[i..i + 36];
        let ok = w.bytes().enumerate().all(|(j, c)| if matches!(j, 8 | 13 | 18 | 23) { c == b'-' } else { c.is_ascii_hexdigit() });
        let bounded = (i == 0 || !b[i - 1].is_ascii_alphanumeric()) && b.get(i + 36).is_none_or(|c| !c.is_ascii_alphanumeric());
        if ok && bounded {
            found = Some(w.to_ascii_lowercase());
        }
    }
    found
}

impl CommandPlatform {
    pub fn new(cfg: &PlatformConfig, cc: Option<CloudController>) -> Result<CommandPlatform, PlatformError> {
        cfg.validate().map_err(PlatformError::Config)?;
        let timeout = cfg.commands.timeout;
        let p = CommandPlatform { cfg: cfg.commands.clone(), deployment: cfg.deployment.clone(), timeout, cc };
        // Catch template typos at start-up, not halfway through a recovery.
        let probe = OpContext { instance_id: Some("i"), container: Some("c"), host: Some("h"), name: Some("n"), space_guid: Some("s"), app: Some("a") };
        for op in [Op::Stop, Op::Flush, Op::Start, Op::Create, Op::Bind] {
            if let Some(t) = p.template(op) {
                render(t, &p.vars(&probe)).map_err(|e| PlatformError::Config(format!("platform.commands.{}: {e}", op.as_str())))?;
            }
        }
        Ok(p)
    }

    fn template(&self, op: Op) -> Option<&str> {
        match op {
            Op::Stop => Some(&self.cfg.stop),
            Op::Flush => Some(&self.cfg.flush),
            Op::Start => Some(&self.cfg.start),
            Op::Create => self.cfg.create.as_deref(),
            Op::Bind => self.cfg.bind.as_deref(),
        }
    }

    fn vars<'a>(&'a self, c: &OpContext<'a>) -> Vec<(&'static str, Option<&'a str>)> {
        vec![
            ("container", c.container),
            ("host", c.host),
            ("deployment", Some(self.deployment.as_str())),
            ("instance_id", c.instance_id),
            ("name", c.name),
            ("space_guid", c.space_guid),
            ("app", c.app),
        ]
    }

    fn command(&self, op: Op, ctx: &OpContext<'_>) -> Result<String, PlatformError> {
        let t = self.template(op).ok_or_else(|| PlatformError::NotConfigured {
            op: op.as_str(),
            hint: format!("set platform.commands.{} or configure [cloud_controller]", op.as_str()),
        })?;
        render(t, &self.vars(ctx)).map_err(|e| PlatformError::Config(format!("platform.commands.{}: {e}", op.as_str())))
    }

    async fn run(&self, op: Op, what: String, ctx: OpContext<'_>) -> Result<String, PlatformError> {
        let cmd = self.command(op, &ctx)?;
        let timeout = self.timeout;
        let c2 = cmd.clone();
        let out = tokio::task::spawn_blocking(move || run_shell(&c2, timeout))
            .await
            .map_err(|e| PlatformError::Failed { op: op.as_str(), what: what.clone(), detail: format!("the command runner failed: {e}") })?
            .map_err(|e| PlatformError::Failed { op: op.as_str(), what: what.clone(), detail: format!("cannot run `sh -c {cmd}`: {e}") })?;
        let both = format!("{}\n{}", out.stdout, out.stderr);
        if out.timed_out {
            return Err(PlatformError::Command {
                op: op.as_str(),
                what,
                command: cmd,
                outcome: format!("did not finish within {} and was killed", humantime::format_duration(self.cfg.timeout)),
                tail: tail(&both, 400),
            });
        }
        if out.status != Some(0) {
            let outcome = out.status.map_or_else(|| "was killed by a signal".to_string(), |c| format!("exited with status {c}"));
            return Err(PlatformError::Command { op: op.as_str(), what, command: cmd, outcome, tail: tail(&both, 400) });
        }
        Ok(format!("`{cmd}` exited 0; output: {}", tail(&out.stdout, 300)))
    }
}

fn ctx_of(c: &ContainerRef) -> OpContext<'_> {
    OpContext { instance_id: Some(&c.instance_id), container: Some(&c.container), host: c.host.as_deref(), ..OpContext::default() }
}

impl Platform for CommandPlatform {
    fn kind(&self) -> &'static str {
        "commands"
    }

    fn describe(&self, op: Op, ctx: &OpContext<'_>) -> String {
        match (op, self.template(op), &self.cc) {
            (Op::Create | Op::Bind, None, Some(cc)) => cc.describe(op, ctx),
            (_, None, None) => format!("{}: not possible, set platform.commands.{} or configure [cloud_controller]", op.as_str(), op.as_str()),
            _ => match self.command(op, ctx) {
                Ok(c) => format!("run: {c}"),
                // Values not known yet (a target still to be created): show the template.
                Err(_) => format!("run: {} (placeholders filled in when known)", self.template(op).unwrap_or("")),
            },
        }
    }

    fn create<'a>(&'a self, req: &'a CreateRequest) -> OpFuture<'a, Created> {
        Box::pin(async move {
            if self.cfg.create.is_none() {
                if let Some(cc) = &self.cc {
                    return cc.create(req).await;
                }
            }
            let ctx = OpContext { name: Some(&req.name), space_guid: Some(&req.space_guid), ..OpContext::default() };
            let what = format!("instance {:?} in space {}", req.name, req.space_guid);
            let cmd = self.command(Op::Create, &ctx)?;
            let timeout = self.timeout;
            let out = tokio::task::spawn_blocking(move || run_shell(&cmd, timeout))
                .await
                .map_err(|e| PlatformError::Failed { op: "create", what: what.clone(), detail: e.to_string() })?
                .map_err(|e| PlatformError::Failed { op: "create", what: what.clone(), detail: e.to_string() })?;
            if out.status != Some(0) || out.timed_out {
                return Err(PlatformError::Command {
                    op: "create",
                    what,
                    command: self.command(Op::Create, &ctx)?,
                    outcome: if out.timed_out { "timed out".into() } else { format!("exited with {:?}", out.status) },
                    tail: tail(&format!("{}\n{}", out.stdout, out.stderr), 400),
                });
            }
            let id = last_guid(&out.stdout).ok_or_else(|| PlatformError::Failed {
                op: "create",
                what: what.clone(),
                detail: format!("the create command succeeded but printed no instance GUID (output: {}); make it print the GUID, e.g. append `&& cf service {{name}} --guid`", tail(&out.stdout, 200)),
            })?;
            Ok(Created { instance_id: id, detail: format!("create command printed {}", tail(&out.stdout, 200)) })
        })
    }

    fn find_instance<'a>(&'a self, name: &'a str, space_guid: &'a str) -> OpFuture<'a, Option<String>> {
        Box::pin(async move {
            match &self.cc {
                Some(cc) => cc.find_instance(name, space_guid).await,
                None => Ok(None),
            }
        })
    }

    fn stop<'a>(&'a self, c: &'a ContainerRef) -> OpFuture<'a, String> {
        Box::pin(self.run(Op::Stop, format!("container {}", c.container), ctx_of(c)))
    }

    fn flush<'a>(&'a self, c: &'a ContainerRef) -> OpFuture<'a, String> {
        Box::pin(self.run(Op::Flush, format!("container {}", c.container), ctx_of(c)))
    }

    fn start<'a>(&'a self, c: &'a ContainerRef) -> OpFuture<'a, String> {
        Box::pin(self.run(Op::Start, format!("container {}", c.container), ctx_of(c)))
    }

    fn bind<'a>(&'a self, instance_id: &'a str, space_guid: Option<&'a str>, app: &'a str) -> OpFuture<'a, String> {
        Box::pin(async move {
            if self.cfg.bind.is_none() {
                if let Some(cc) = &self.cc {
                    return cc.bind(instance_id, space_guid, app).await;
                }
            }
            let ctx = OpContext { instance_id: Some(instance_id), space_guid, app: Some(app), ..OpContext::default() };
            self.run(Op::Bind, format!("app {app:?} to {instance_id}"), ctx).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_quotes() {
        let v = [("container", Some("cf-1")), ("host", Some("cell_z1/0")), ("deployment", Some("d")), ("instance_id", None)];
        assert_eq!(render("docker stop {container} on {host}", &v).unwrap(), "docker stop 'cf-1' on 'cell_z1/0'");
        assert_eq!(render("x {{.Config.Image}} {container}", &v).unwrap(), "x {{.Config.Image}} 'cf-1'");
        assert!(render("{contianer}", &v).unwrap_err().contains("unknown placeholder"));
        assert!(render("{instance_id}", &v).unwrap_err().contains("not known"));
        let bad = [("container", Some("cf-1; reboot"))];
        assert!(render("{container}", &bad).is_err());
    }

    #[test]
    fn default_templates_render() {
        let p = CommandPlatform::new(&PlatformConfig::default(), None).unwrap();
        let c = ContainerRef { instance_id: "i".into(), container: "cf-abc".into(), host: Some("cell_z1/0".into()) };
        let s = p.describe(Op::Stop, &ctx_of(&c));
        assert!(s.contains("bosh -d 'dingo-postgresql' ssh 'cell_z1/0' -c \"sudo"), "{s}");
        assert!(s.ends_with("stop 'cf-abc'\""), "{s}");
        let f = p.describe(Op::Flush, &ctx_of(&c));
        assert!(f.contains("{{.Config.Image}}") && f.contains("--volumes-from 'cf-abc'"), "{f}");
    }

    #[test]
    fn finds_guids() {
        assert_eq!(last_guid("ok\nAB1A1A1A-0000-4000-8000-000000000001\n").as_deref(), Some("ab1a1a1a-0000-4000-8000-000000000001"));
        assert_eq!(last_guid("no guid here"), None);
    }

    #[test]
    fn kills_on_timeout() {
        let t = Instant::now();
        let o = run_shell("sleep 5; echo never", Duration::from_millis(300)).unwrap();
        assert!(o.timed_out, "{o:?}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }
}
