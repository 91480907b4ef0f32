//! Email delivery over SMTP (lettre): plain, STARTTLS or implicit TLS, optional auth, recipients per
//! severity. The password may come from `SAFEGUARD_SMTP_PASSWORD` so it never sits in a file.

use std::time::Duration;

use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message as Mail, Tokio1Executor};
use serde::Deserialize;

use crate::alerts::{Alert, Message, Severity};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    /// Plain SMTP (a relay on the same host or a test server).
    None,
    #[default]
    Starttls,
    /// Implicit TLS (SMTPS, usually port 465).
    Tls,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub host: String,
    /// Defaults: 25 for none, 587 for starttls, 465 for tls.
    pub port: Option<u16>,
    #[serde(default)]
    pub security: Security,
    pub username: Option<String>,
    /// Prefer `SAFEGUARD_SMTP_PASSWORD` in the environment.
    pub password: Option<String>,
    pub from: String,
    #[serde(default)]
    pub to: Vec<String>,
    /// Recipients for critical alerts (default: `to`).
    #[serde(default)]
    pub to_critical: Vec<String>,
    /// Recipients for warnings and the daily digest (default: `to`).
    #[serde(default)]
    pub to_warning: Vec<String>,
    #[serde(default = "default_timeout", deserialize_with = "crate::settings::duration")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl std::fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .field("to", &self.to)
            .field("to_critical", &self.to_critical)
            .field("to_warning", &self.to_warning)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("email is misconfigured: {0}; fix [alerts.email] in the config")]
    Config(String),
    #[error("sending email through {server} failed: {detail}; check the SMTP server is up and reachable, and the security/port/credentials in [alerts.email]")]
    Send { server: String, detail: String },
}

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    cfg: EmailConfig,
    server: String,
    /// The password in use (config or environment), masked in every error text.
    password: Option<String>,
}

impl Mailer {
    pub fn new(cfg: &EmailConfig) -> Result<Mailer, EmailError> {
        let port = cfg.port.unwrap_or(match cfg.security {
            Security::None => 25,
            Security::Starttls => 587,
            Security::Tls => 465,
        });
        let builder = match cfg.security {
            Security::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host),
            Security::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host).map_err(|e| EmailError::Config(e.to_string()))?,
            Security::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host).map_err(|e| EmailError::Config(e.to_string()))?,
        };
        let mut builder = builder.port(port).timeout(Some(cfg.timeout));
        let password = std::env::var("SAFEGUARD_SMTP_PASSWORD").ok().or_else(|| cfg.password.clone());
        if let Some(user) = &cfg.username {
            let pass = password.clone().ok_or_else(|| EmailError::Config("username is set but no password (set SAFEGUARD_SMTP_PASSWORD)".into()))?;
            builder = builder.credentials(Credentials::new(user.clone(), pass));
        }
        cfg.from.parse::<Mailbox>().map_err(|e| EmailError::Config(format!("from `{}`: {e}", cfg.from)))?;
        for a in cfg.to.iter().chain(&cfg.to_critical).chain(&cfg.to_warning) {
            a.parse::<Mailbox>().map_err(|e| EmailError::Config(format!("recipient `{a}`: {e}")))?;
        }
        if cfg.to.is_empty() && (cfg.to_critical.is_empty() || cfg.to_warning.is_empty()) {
            return Err(EmailError::Config("no recipients: set `to` (or both `to_critical` and `to_warning`)".into()));
        }
        Ok(Mailer { transport: builder.build(), cfg: cfg.clone(), server: format!("{}:{port}", cfg.host), password })
    }

    /// An SMTP error's text (the server's answer quoted in it) with every secret masked.
    fn detail(&self, e: &(dyn std::error::Error + 'static)) -> String {
        crate::redact::with_secrets(&crate::error_chain(e), self.password.as_deref())
    }

    fn recipients(&self, sev: Severity) -> Vec<&String> {
        fn pick<'a>(to: &'a [String], specific: &'a [String]) -> Vec<&'a String> {
            if specific.is_empty() {
                to.iter().collect()
            } else {
                specific.iter().collect()
            }
        }
        let c = &self.cfg;
        match sev {
            Severity::Critical => pick(&c.to, &c.to_critical),
            // The daily digest is news, not a page: whoever gets the warnings.
            Severity::Warning | Severity::Info => pick(&c.to, &c.to_warning),
            // The all-clear goes to whoever may have been paged for the deletion, each once.
            Severity::Resolved => {
                let mut all = pick(&c.to, &c.to_critical);
                for r in pick(&c.to, &c.to_warning) {
                    if !all.contains(&r) {
                        all.push(r);
                    }
                }
                all
            }
        }
    }

    pub async fn send(&self, a: &Alert, m: &Message) -> Result<(), EmailError> {
        let sev = a.severity.unwrap_or(Severity::Warning);
        let mut b = Mail::builder()
            .from(self.cfg.from.parse().map_err(|e| EmailError::Config(format!("from: {e}")))?)
            .subject(m.subject.clone())
            // The alert id is the idempotency key: a resend after a crash carries the same Message-ID.
            .message_id(Some(format!("<{}@safeguard>", a.id.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '.', "."))))
            .header(ContentType::TEXT_PLAIN);
        for r in self.recipients(sev) {
            b = b.to(r.parse().map_err(|e| EmailError::Config(format!("recipient `{r}`: {e}")))?);
        }
        let mail = b.body(m.body.clone()).map_err(|e| EmailError::Config(e.to_string()))?;
        self.transport.send(mail).await.map_err(|e| EmailError::Send { server: self.server.clone(), detail: self.detail(&e) })?;
        Ok(())
    }

    /// Connects and greets (EHLO, STARTTLS and auth as configured) without sending mail.
    pub async fn check(&self) -> Result<(), EmailError> {
        match self.transport.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(EmailError::Send { server: self.server.clone(), detail: "the server did not accept the connection".into() }),
            Err(e) => Err(EmailError::Send { server: self.server.clone(), detail: self.detail(&e) }),
        }
    }
}
