//! Where alerts go: [`sender`] delivers the outbox (checking the object store first for deletions), by
//! [`email`] (SMTP) and [`webhook`] (HTTP POST). What an alert says and when one is raised is
//! [`crate::alerts`]'s business.
pub mod email;
pub mod sender;
pub mod webhook;
