//! What the `svclb` commands other than `agent` print: `svclb plan` ([`plan`]), `svclb list`
//! ([`list`]), `svclb status` ([`status`]) and `svclb maglev` ([`maglev`]).

pub mod list;
pub mod maglev;
pub mod plan;
pub mod status;
