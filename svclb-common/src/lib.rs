//! Types shared by the svclb eBPF programs and the agent.
//!
//! Every struct that crosses the kernel/user boundary is `#[repr(C)]`, has explicit padding
//! fields, holds no `bool`/`Option`/`enum`, names network-order fields `*_be`, and carries a
//! compile-time size assertion. Addresses are 16 bytes so IPv6 needs no new layout: an IPv4
//! address sits in the first four bytes with the rest zero and `family` set to [`FAMILY_V4`].
//!
//! Pinned maps outlive a build, and a newer one migrates them (the agent's `kernel::migrate`):
//! a map's key never changes, and its value changes only by appending fields whose zero keeps
//! the old behaviour, so an old value zero-extended is a valid new one.
#![cfg_attr(not(any(feature = "user", feature = "host", feature = "http")), no_std)]

pub mod addr;
pub mod backend;
pub mod config;
pub mod conntrack;
pub mod dns;
pub mod events;
pub mod fragment;
#[cfg(feature = "host")]
pub mod host;
#[cfg(feature = "http")]
pub mod http;
pub mod limits;
#[cfg(feature = "user")]
pub mod maglev;
pub mod service;
pub mod socket;
pub mod stats;
pub mod toolchain;

pub use addr::{
    FAMILY_V4, FAMILY_V6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
    L3Addr,
};
pub use backend::{Backend, SlotKey};
pub use config::Config;
pub use conntrack::{
    AffinityKey, AffinityValue, CT_DIR_FORWARD, CT_DIR_REPLY, CtEntry, CtKey, CtRoute, SweepItem,
};
pub use fragment::{FragKey, FragValue};
pub use service::{ServiceKey, ServiceValue, SourceRangeKey};
pub use socket::{SockPeer, SockPeers, SockRevKey, SockRevValue, SockStats};
pub use stats::{FrontendStats, XdpStats};
