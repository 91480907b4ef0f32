//! The house's rules, checked (ARCHITECTURE.md "Layers"): no module of the service crate reaches a module
//! above its layer, and the core crate depends on nothing that does I/O.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Layers, lowest first. A name is a top-level module of the crate or one of its re-exported paths.
const LAYERS: &[&[&str]] = &[
    // The pure core (re-exported) and what every section shares.
    &["parse", "state", "layout", "timeutil", "gen", "settings", "redact", "error_chain"],
    // The edges: external systems, where lines come from, the store (and its read side).
    &["adapters", "etcd", "s3", "platform", "sources", "store", "query"],
    // What the object store holds for an instance.
    &["verify"],
    // What to say and how it is delivered.
    &["alerts", "sinks"],
    // The engine and the service around it.
    &["engine", "pipeline", "ingest", "watch", "http"],
    // Recovery.
    &["recover"],
    // Composition: the config, doctor, rendering.
    &["app", "config", "doctor", "report"],
];

fn layer_of(name: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&name))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `crate::<name>` a file names (in `use` lines and in paths).
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        // Skip `safeguard_core::...` and doc links like [`crate::x`] are still references.
        if text[..i].ends_with("_") {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

#[test]
fn no_module_reaches_above_its_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut checked = 0;
    let mut wrong = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        // The binary (main.rs, cmd/) and the crate root compose everything.
        if ["main", "cmd", "lib"].contains(&top.as_str()) {
            continue;
        }
        let own = layer_of(&top).unwrap_or_else(|| panic!("{} is in no layer: add its folder to LAYERS and ARCHITECTURE.md", rel.display()));
        for r in crate_refs(&std::fs::read_to_string(&f).unwrap()) {
            checked += 1;
            match layer_of(&r) {
                Some(l) if l > own => wrong.push(format!("{} (layer {own}) uses crate::{r} (layer {l})", rel.display())),
                Some(_) => {}
                None => wrong.push(format!("{} uses crate::{r}, which is in no layer", rel.display())),
            }
        }
    }
    assert!(checked > 100, "the check read too little: {checked}");
    assert!(wrong.is_empty(), "layers reached upwards:\n{}", wrong.join("\n"));
}

#[test]
fn the_rule_catches_an_upward_reference() {
    // The checker itself: a store file naming the engine would be reported.
    let refs = crate_refs("use crate::engine::pipeline::Engine;\nlet x = safeguard_core::state::x;");
    assert_eq!(refs.into_iter().collect::<Vec<_>>(), ["engine"]);
    assert!(layer_of("engine") > layer_of("store"));
}

#[test]
fn the_core_crate_depends_on_nothing_that_does_io() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-p", "safeguard-core", "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("safeguard-core") && tree.contains("serde"), "{tree}");
    for io in ["tokio", "sled", "rdkafka", "aws-", "reqwest", "lettre", "hyper", "axum", "libc "] {
        assert!(!tree.lines().any(|l| l.starts_with(io)), "the core depends on {io}:\n{tree}");
    }
}
