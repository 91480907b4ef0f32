//! Stand-ins for what cannot run here (the Cloud Controller and Docker APIs) and a fault-injecting proxy
//! in front of moto.

pub mod fake_http;
pub mod fault_proxy;
