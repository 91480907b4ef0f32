//! Writes seeded synthetic platform syslog for benchmarks:
//! `cargo run --release --example gen_syslog -- OUT LINES [SEED] [CONCURRENT_INSTANCES] [NOISE] [BROKER_NOISE]`
//! (BROKER_NOISE: the fraction of unrelated lines that are broker lager lines about no instance).
//! and prints a one-line summary of the truth it implies.

use std::io::BufWriter;

use safeguard::gen::{GenConfig, Generator};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: gen_syslog OUT LINES [SEED] [CONCURRENT_INSTANCES] [NOISE] [BROKER_NOISE]";
    let out = args.first().expect(usage);
    let num = |i: usize, d: f64| args.get(i).map(|s| s.parse::<f64>().expect(usage)).unwrap_or(d);
    let cfg = GenConfig {
        lines: num(1, 1_000_000.0) as u64,
        seed: num(2, 42.0) as u64,
        concurrent_instances: num(3, 200.0) as usize,
        noise: num(4, 0.95),
        broker_noise: num(5, 0.0),
        ..GenConfig::default()
    };
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
    let truth = Generator::new(cfg).write_all(&mut w)?;
    let deleted = truth.instances.values().filter(|t| t.deleted).count();
    let first = truth.instances.keys().next().cloned().unwrap_or_default();
    println!("{} lines, {} noise, {} instances ({} deleted), first instance {}", truth.lines, truth.noise_lines, truth.instances.len(), deleted, first);
    Ok(())
}
