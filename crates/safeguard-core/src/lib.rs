//! safeguard's pure core: [`parse`] turns one syslog line into a typed [`parse::Event`]; [`state`]
//! applies events to an instance record and says what they caused ([`state::Effect`]), as a function of
//! the set of facts seen. No I/O, no clock (time is passed in), no panic on any input. [`timeutil`] holds
//! the time arithmetic both need; [`gen`] generates realistic platform syslog with its truth, for tests
//! and benchmarks.

pub mod gen;
pub mod parse;
pub mod state;
pub mod timeutil;
