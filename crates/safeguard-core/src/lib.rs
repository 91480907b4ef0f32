//! safeguard's pure core: [`parse`] turns one syslog line into a typed [`parse::Event`]; [`state`]
//! applies events to an instance record and says what they caused ([`state::Effect`]), as a function of
//! the set of facts seen. No I/O, no clock (time is passed in), no panic on any input. [`timeutil`] holds
//! the time arithmetic both need; [`alerts`] are the alert rules and messages, [`digest`] the daily digest's figures and text; [`layout`] is WAL-E's object layout, which the log lines, `verify` and
//! recovery all read; [`gen`] generates realistic platform syslog with its truth, for tests
//! and benchmarks.

pub mod alerts;
pub mod digest;
pub mod gen;
pub mod layout;
pub mod parse;
pub mod state;
pub mod timeutil;

/// FNV-1a: a stable fingerprint across builds and platforms (std's hasher promises neither); names
/// streams and checks the bytes before a stored position.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
