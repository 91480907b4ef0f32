//! The read-only commands: `instances`, `show`, `status`, `alerts` (and `alerts retry`). They read
//! through [`Access`]: the running watcher's socket, else the read snapshot, else the store.

use std::process::ExitCode;

use anyhow::Result;
use safeguard::alerts::Delivery;
use safeguard::app::report;
use safeguard::store::query::{Access, Filter};

use super::{print_json, Ctx};

pub fn instances(ctx: Ctx, deleted: bool, at_risk: bool, json: bool) -> Result<ExitCode> {
    let access = Access::open(&ctx.store_path, ctx.cache)?;
    let recs = access.records(&Filter { deleted, at_risk }, ctx.now, &ctx.rules)?;
    if json {
        let v: Vec<_> = recs.iter().map(|r| report::record_json(r, ctx.now, &ctx.rules)).collect();
        print_json(&v)?;
    } else {
        print!("{}", report::instances_table(&recs, ctx.now, &ctx.rules));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn show(ctx: Ctx, instance_id: String, json: bool) -> Result<ExitCode> {
    let access = Access::open(&ctx.store_path, ctx.cache)?;
    match access.record(&instance_id)? {
        Some(r) if json => print_json(&report::record_json(&r, ctx.now, &ctx.rules))?,
        Some(r) => print!("{}", report::record_text(&r, ctx.now, &ctx.rules)),
        None => {
            eprintln!(
                "error: no instance {instance_id} in the store at {}; list known ids with `safeguard instances`, or ingest older logs with `safeguard ingest`",
                ctx.store_path.display()
            );
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(ctx: Ctx, json: bool) -> Result<ExitCode> {
    let access = Access::open(&ctx.store_path, ctx.cache)?;
    let st = access.status()?;
    // The kernel's drop counts of the configured syslog UDP sockets (a running watcher's).
    let drops: Vec<(std::net::SocketAddr, u64)> = if st.watcher_running {
        ctx.cfg
            .sources()
            .iter()
            .filter_map(|s| match s {
                safeguard::sources::SourceConfig::Syslog(sys) => sys.udp,
                _ => None,
            })
            .filter_map(|a| Some((a, safeguard::sources::syslog::udp_drops(a)?)))
            .collect()
    } else {
        Vec::new()
    };
    if json {
        let mut v = serde_json::to_value(&st)?;
        v["udp_drops"] = drops.iter().map(|(a, n)| (a.to_string(), serde_json::Value::from(*n))).collect::<serde_json::Map<_, _>>().into();
        print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("store        {} (schema {}, {} bytes)", st.path.display(), st.schema_version.as_deref().unwrap_or("?"), st.size_bytes);
    println!("watcher      {}", if st.watcher_running { "running" } else { "not running" });
    if let Some(r) = &st.leadership {
        let leader = r.leader.as_deref().unwrap_or("unknown");
        let lag = r.deliveries_lag.map_or("not measured yet".to_string(), |n| format!("{n} behind"));
        println!("role         {} (member {}, leader {leader}, {} takeovers; deliveries topic {lag})", r.role, r.member, r.takeovers);
    }
    println!("instances    {} ({} live, {} deleted)", st.instances, st.instances.saturating_sub(st.deleted), st.deleted);
    if let Some(n) = st.at_risk {
        let why: Vec<String> = st.at_risk_by_reason.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r}: {n}")).collect();
        let until =
            st.risk_counts_until.map(|t| format!(" (as of {}: start the watcher to bring it up to date)", safeguard::timeutil::rfc3339(t))).unwrap_or_default();
        println!("at risk      {n} live instance(s){}{until}", if why.is_empty() { String::new() } else { format!(" ({})", why.join(", ")) });
    }
    if st.alerts_retired > 0 {
        println!("alerts       {} past retention, kept as ids only (never raised again)", st.alerts_retired);
    }
    println!("lines        {}", st.counters.text());
    println!("events       {} applied, {} effects", st.counters.events_applied, st.counters.effects);
    println!(
        "waiting      {} line(s) wait for the line that names their instance; {} given up so far ([watch] parked_max, parked_ttl)",
        st.counters.lines_parked, st.counters.lines_expired_unattributed
    );
    for (a, n) in &drops {
        println!("udp drops    {n} datagram(s) dropped by the kernel on {a} (the listener fell behind; raise net.core.rmem_max or use TCP or Kafka)");
    }
    for (id, p) in &st.positions {
        println!("source       {id} {} at byte/offset {} ({})", p.name, p.offset, safeguard::timeutil::rfc3339(p.updated_at));
    }
    Ok(ExitCode::SUCCESS)
}

/// What `alerts` lists without `--all`: what still needs someone, and the last week.
const RECENT_MS: i64 = 7 * 86_400_000;

pub fn alerts(ctx: Ctx, pending: bool, failed: bool, all: bool, json: bool) -> Result<ExitCode> {
    let access = Access::open(&ctx.store_path, ctx.cache)?;
    let recent = |a: &safeguard::alerts::Alert| all || matches!(a.state, Delivery::Pending | Delivery::Failed) || a.raised_at >= ctx.now - RECENT_MS;
    let retained = access.alerts()?;
    let total = retained.len();
    let alerts: Vec<_> = retained
        .into_iter()
        .filter(|a| recent(a))
        .filter(|a| !pending || a.state == Delivery::Pending)
        .filter(|a| !failed || a.state == Delivery::Failed)
        .collect();
    if json {
        print_json(&alerts)?;
    } else {
        print!("{}", report::alerts_table(&alerts));
        let older = total - alerts.len();
        if !all && !pending && !failed && older > 0 {
            println!("({older} delivered alert(s) older than 7 days not shown; `safeguard alerts --all` lists every retained alert)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn retry_alert(ctx: Ctx, id: String, json: bool) -> Result<ExitCode> {
    let access = Access::open(&ctx.store_path, ctx.cache)?;
    match access.retry_alert(&id)? {
        Some(a) => {
            if json {
                print_json(&a)?;
            } else {
                println!("requeued {}; a running watcher delivers it within seconds", a.id);
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("error: no alert {id} in the outbox; list them with `safeguard alerts --all` (an alert finished more than `alerts.retention` ago is kept as its id only and cannot be requeued)");
            Ok(ExitCode::from(1))
        }
    }
}
