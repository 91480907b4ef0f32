//! The library's side of the command line: the composed [`config`] (every component's section, checked
//! at load), [`doctor`]'s checks of each configured connection, and the text and JSON the commands print
//! ([`report`]), and [`cost`]: what deleted instances' backups still hold. The binary's `cmd/` modules call these.

pub mod config;
pub mod cost;
pub mod doctor;
pub mod report;
