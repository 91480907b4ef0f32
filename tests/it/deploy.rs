//! The deployment files: the systemd unit passes `systemd-analyze verify` (Debian's systemd, installed
//! by scripts/services.sh install), the Kubernetes manifests parse as YAML with the expected kinds and
//! agree with each other and with the config they carry, the container definition is multi-stage and
//! non-root; plus the generated shell completions and man page.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bin, run};
use serde::Deserialize;
use serde_json::Value;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(rel)
}

fn systemd_analyze() -> &'static str {
    let ok = Command::new("systemd-analyze").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "systemd-analyze is not installed: run scripts/test.sh (scripts/services.sh install installs Debian's systemd package)");
    "systemd-analyze"
}

/// The unit as installed, but with ExecStart pointing at the binary just built (verify checks that the
/// executable exists).
fn unit_copy(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(deploy("systemd/safeguard.service")).unwrap();
    assert!(text.contains("/usr/local/bin/safeguard"), "the unit runs /usr/local/bin/safeguard");
    let p = dir.join("safeguard.service");
    std::fs::write(&p, text.replace("/usr/local/bin/safeguard", bin())).unwrap();
    p
}

fn directives(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.starts_with('[') && l.contains('=')) {
        let (k, v) = l.split_once('=').unwrap();
        m.entry(k.to_string()).or_default().push(v.to_string());
    }
    m
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify_and_is_hardened() {
    let sa = systemd_analyze();
    let tmp = tempfile::tempdir().unwrap();
    let unit = unit_copy(tmp.path());
    let out = Command::new(sa).arg("verify").arg(&unit).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{err}");
    assert!(!err.contains("safeguard.service:"), "systemd-analyze verify warned about the unit:\n{err}");

    let text = std::fs::read_to_string(deploy("systemd/safeguard.service")).unwrap();
    let d = directives(&text);
    let one = |k: &str| d.get(k).and_then(|v| v.last()).map(String::as_str).unwrap_or_else(|| panic!("{k} is not set"));
    assert_eq!(one("User"), "safeguard");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("StateDirectory"), "safeguard");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectHome"), "yes");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("CapabilityBoundingSet"), "");
    assert!(one("ExecStart").ends_with("--store /var/lib/safeguard watch"), "the store is the StateDirectory: {}", one("ExecStart"));
    assert!(one("EnvironmentFile").contains("/etc/safeguard/"), "secrets come from an environment file");
    let sysusers = std::fs::read_to_string(deploy("systemd/safeguard.sysusers")).unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u safeguard ")), "{sysusers}");

    // systemd's own exposure score for the unit (lower is better; 10 is unprotected).
    let out = Command::new(sa).args(["security", "--offline=yes"]).arg(&unit).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    if let Some(line) = report.lines().find(|l| l.contains("Overall exposure level")) {
        let score: f64 = line.split(':').nth(1).and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok()).unwrap_or(10.0);
        assert!(score <= 2.0, "exposure {score}: {line}");
    }
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn kubernetes_manifests_parse_with_the_expected_kinds_and_agree_with_each_other() {
    let dir = deploy("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "yaml")).collect();
    files.sort();
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for f in &files {
        for d in yaml_docs(f) {
            let kind = d["kind"].as_str().unwrap_or_else(|| panic!("{}: a document without kind", f.display())).to_string();
            assert!(d["apiVersion"].is_string(), "{}: {kind} without apiVersion", f.display());
            by_kind.entry(kind).or_default().push(d);
        }
    }
    let kinds: Vec<&str> = by_kind.keys().map(String::as_str).collect();
    assert_eq!(kinds, ["ConfigMap", "Kustomization", "Secret", "Service", "StatefulSet"]);
    assert_eq!(by_kind["Service"].len(), 2);

    // The kustomization lists every manifest.
    let k = &by_kind["Kustomization"][0];
    let mut listed: Vec<String> = k["resources"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
    listed.sort();
    let mut present: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_str().unwrap().to_string()).filter(|f| f != "kustomization.yaml").collect();
    present.sort();
    assert_eq!(listed, present);

    let cm = &by_kind["ConfigMap"][0];
    let secret = &by_kind["Secret"][0];
    let sts = &by_kind["StatefulSet"][0];
    let cfg = safeguard::config::Config::parse(cm["data"]["safeguard.toml"].as_str().unwrap()).expect("the ConfigMap's safeguard.toml is a valid config");
    let http = cfg.http.clone().expect("the ConfigMap enables [http] for the probes");
    assert!(http.listen.ip().is_unspecified(), "in a pod [http] must listen on 0.0.0.0");
    let store_path = cfg.store.path.clone().expect("the ConfigMap sets store.path").display().to_string();
    assert!(
        cfg.sources()
            .iter()
            .all(|s| !matches!(s, safeguard::config::SourceConfig::Syslog(safeguard::config::SyslogConfig { udp: Some(a), .. }) if a.ip().is_loopback())),
        "syslog must not listen on loopback in a pod"
    );
    let in_config = cm["data"]["safeguard.toml"].as_str().unwrap();
    assert!(!in_config.lines().any(|l| !l.trim_start().starts_with('#') && (l.contains("password") || l.contains("secret"))), "no secret in the ConfigMap");
    for key in secret["stringData"].as_object().unwrap().keys() {
        assert!(key.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{key} is an environment variable name");
    }

    assert_eq!(sts["spec"]["replicas"], 1, "one writer per store");
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let port_of = |name: &str| c["ports"].as_array().unwrap().iter().find(|p| p["name"] == name).map(|p| p["containerPort"].as_u64().unwrap());
    assert_eq!(port_of("http"), Some(http.listen.port() as u64), "the container's http port is [http] listen's");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["envFrom"][0]["secretRef"]["name"], secret["metadata"]["name"]);
    let claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].as_str().unwrap();
    let mounts = c["volumeMounts"].as_array().unwrap();
    let store_mount = mounts.iter().find(|m| m["name"] == claim).expect("the store volume is mounted");
    assert_eq!(store_mount["mountPath"].as_str().unwrap(), store_path, "the volume holds the configured store");
    let env: BTreeMap<&str, &str> = c["env"].as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap_or(""))).collect();
    assert_eq!(env.get("SAFEGUARD_STORE").copied(), Some(store_path.as_str()));
    let config_vol = pod["volumes"].as_array().unwrap().iter().find(|v| v["configMap"].is_object()).unwrap();
    assert_eq!(config_vol["configMap"]["name"], cm["metadata"]["name"]);
    let config_mount = mounts.iter().find(|m| m["name"] == config_vol["name"]).unwrap();
    assert_eq!(format!("{}/safeguard.toml", config_mount["mountPath"].as_str().unwrap()), env["SAFEGUARD_CONFIG"]);
    assert_eq!(
        sts["spec"]["serviceName"],
        by_kind["Service"].iter().find(|s| s["spec"]["clusterIP"] == "None").expect("a headless Service")["metadata"]["name"]
    );
    for s in &by_kind["Service"] {
        assert_eq!(s["spec"]["selector"], sts["spec"]["selector"]["matchLabels"]);
    }
}

/// The standby pair (issue 17): the Kubernetes overlay and the systemd pair's config are valid configs
/// with a Kafka source whose group differs per host and a [leader] section; the overlay runs two
/// replicas never on one node and keeps one through drains.
#[test]
fn the_standby_overlay_and_the_systemd_pair_run_two_replicas_with_a_group_each_and_one_leader() {
    let dir = deploy("kubernetes/standby");
    let k = &yaml_docs(&dir.join("kustomization.yaml"))[0];
    let listed = |key: &str| -> Vec<String> { k[key].as_array().unwrap().iter().map(|r| r.as_str().or(r["path"].as_str()).unwrap().to_string()).collect() };
    assert_eq!(listed("resources"), ["../", "poddisruptionbudget.yaml"]);
    assert_eq!(listed("patches"), ["statefulset.yaml", "configmap.yaml"]);
    let sts = &yaml_docs(&dir.join("statefulset.yaml"))[0];
    let base = &yaml_docs(&deploy("kubernetes/statefulset.yaml"))[0];
    assert_eq!(sts["metadata"]["name"], base["metadata"]["name"], "the patch names the base's StatefulSet");
    assert_eq!(sts["spec"]["replicas"], 2);
    let anti = &sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(anti["labelSelector"]["matchLabels"], base["spec"]["selector"]["matchLabels"]);
    let pdb = &yaml_docs(&dir.join("poddisruptionbudget.yaml"))[0];
    assert_eq!((pdb["kind"].as_str(), pdb["spec"]["minAvailable"].as_u64()), (Some("PodDisruptionBudget"), Some(1)));
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], base["spec"]["selector"]["matchLabels"]);
    let cm = &yaml_docs(&dir.join("configmap.yaml"))[0];
    let base_cm = &yaml_docs(&deploy("kubernetes/configmap.yaml"))[0];
    assert_eq!(cm["metadata"]["name"], base_cm["metadata"]["name"], "the patch replaces the base's config");
    let pair = std::fs::read_to_string(deploy("systemd/safeguard-pair.toml")).unwrap();
    for (what, text) in [("the overlay's ConfigMap", cm["data"]["safeguard.toml"].as_str().unwrap()), ("systemd/safeguard-pair.toml", pair.as_str())] {
        assert!(text.contains("group_id = \"safeguard-{hostname}\""), "{what}: one group per host");
        let cfg = safeguard::config::Config::parse(text).unwrap_or_else(|e| panic!("{what}: {e}"));
        let leader = cfg.leader().unwrap_or_else(|| panic!("{what} has no [leader]"));
        assert_eq!(leader.member_name(), safeguard::settings::hostname(), "{what}: the member is the host");
        let kafka: Vec<_> = cfg.sources().into_iter().filter_map(|s| if let safeguard::config::SourceConfig::Kafka(k) = s { Some(k) } else { None }).collect();
        assert_eq!(kafka.len(), 1, "{what}: the syslog topic in Kafka is the only source");
        assert_eq!(kafka[0].group_id, format!("safeguard-{}", safeguard::settings::hostname()), "{what}");
        assert_ne!(kafka[0].group_id, leader.group_id, "{what}: the election's group is not a syslog group");
    }
}

#[test]
fn container_definition_is_multi_stage_and_runs_as_a_non_root_user() {
    let text = std::fs::read_to_string(deploy("container/Dockerfile")).unwrap();
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2 && froms[0].contains(" AS build"), "{froms:?}");
    assert!(text.contains("COPY --from=build"));
    let user = text.lines().rfind(|l| l.starts_with("USER ")).expect("a USER");
    assert!(!user.contains("root") && !user.trim_end().ends_with(" 0"), "{user}");
    assert!(text.contains("EXPOSE 5514/tcp 5514/udp 9187/tcp"));
    assert!(text.contains("cargo build --release --locked"));
    let ignore = std::fs::read_to_string(deploy("container/Dockerfile.dockerignore")).unwrap();
    assert!(ignore.lines().next().is_some() && ignore.contains("!src/"), "{ignore}");
    // Every workspace member is built from inside the image: its directory is sent and copied.
    let manifest: toml::Value = toml::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap()).unwrap();
    for m in manifest["workspace"]["members"].as_array().unwrap() {
        let m = m.as_str().unwrap();
        let top = m.split('/').next().unwrap();
        assert!(ignore.lines().any(|l| l == format!("!{top}/")), "the dockerignore leaves out workspace member {m}");
        assert!(text.contains(&format!("COPY {m}/Cargo.toml")), "the dependency layer lacks {m}'s manifest");
        assert!(text.lines().any(|l| l.starts_with(&format!("COPY {top} "))), "the image does not copy {m}");
    }
}

#[test]
fn deploy_readme_explains_every_piece() {
    let text = std::fs::read_to_string(deploy("README.md")).unwrap();
    for needle in [
        "systemd/safeguard.service",
        "container/Dockerfile",
        "kubernetes/",
        "rsyslog/",
        "vector/",
        "/healthz",
        "/readyz",
        "/metrics",
        "--log-format json",
        "safeguard doctor",
        "completions",
        "SAFEGUARD_SMTP_PASSWORD",
        "[heartbeat]",
        "[alerts.digest]",
        "kubernetes/standby/",
        "systemd/safeguard-pair.toml",
    ] {
        assert!(text.contains(needle), "deploy/README.md does not mention {needle}");
    }
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    for (shell, marker) in
        [("bash", "_safeguard()"), ("zsh", "#compdef safeguard"), ("fish", "complete -c safeguard"), ("elvish", "safeguard"), ("powershell", "safeguard")]
    {
        let (code, out, err) = run(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker), "{shell} completion lacks {marker:?}");
        if shell != "powershell" {
            assert!(out.contains("doctor") && out.contains("log-format"), "{shell} completion lacks the subcommands/options");
        }
    }
    let (code, _, err) = run(&["completions", "tcsh"]);
    assert_ne!(code, 0);
    assert!(err.contains("possible values"), "{err}");

    let (code, man, err) = run(&["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(man.starts_with(".ie") || man.starts_with(".TH") || man.contains("\n.TH safeguard"), "{}", &man[..man.len().min(200)]);
    for needle in ["doctor", "completions", "watch", "log\\-format"] {
        assert!(man.contains(needle), "the man page lacks {needle}");
    }
    // `man` renders it when installed (groff may be absent: then only the roff text is checked).
    if Command::new("man").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("safeguard.1");
        std::fs::write(&p, &man).unwrap();
        let out = Command::new("man").arg("-l").arg(&p).env("MANPAGER", "cat").env("PAGER", "cat").output().unwrap();
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("doctor"));
        }
    }
}
