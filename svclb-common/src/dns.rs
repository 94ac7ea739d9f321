//! The cluster's DNS names, answered by the datapath (`SVCLB_DNS`): one entry per name and
//! query type that has an answer other than the zone's default, holding the reply's sections
//! after the question, ready to send.
//!
//! The agent encodes each reply for the question in lowercase; its names refer to the question
//! by compression pointers (offset 12 on), so a reply spliced after the client's own question
//! names the owner, and the zone in the SOA, in the client's case, as CoreDNS does. The name's
//! length, and so every such offset, is the same whatever case the client chose.
//!
//! A name with no entry for the type asked gets what its entry of type [`QTYPE_NAME`] says
//! (NODATA, another rcode, or pass on). A name with neither under `svc.<zone>` is NXDOMAIN,
//! with the zone's SOA ([`DnsZone`]), if it is a Service's (`<svc>.<ns>.svc.<zone>`) or below
//! a Service's name that has no entry; other names pass on.

use crate::addr::L3Addr;

/// The longest name (wire format, with its final zero byte) a key holds: RFC 1035's limit.
pub const DNS_NAME_MAX: usize = 255;
/// The reply sections an entry holds at most.
pub const DNS_SECTIONS_MAX: usize = 1200;
/// What a client without EDNS takes (RFC 1035); an entry's small cut fits it, with room for
/// an OPT record.
pub const DNS_SMALL_MESSAGE: usize = 512;
/// The largest reply sent, whatever larger EDNS payload size a client offers: DNS flag day
/// 2020's 1,232 bytes, which fit a frame on any link from MTU 1,280. An entry's whole cut
/// fits it.
pub const DNS_EDNS_MESSAGE: usize = 1232;

/// The query types answered. Others pass to the cluster's DNS server.
pub const QTYPE_A: u16 = 1;
pub const QTYPE_CNAME: u16 = 5;
pub const QTYPE_SOA: u16 = 6;
pub const QTYPE_PTR: u16 = 12;
pub const QTYPE_TXT: u16 = 16;
pub const QTYPE_AAAA: u16 = 28;
pub const QTYPE_SRV: u16 = 33;
/// Not a query type: the key of what a name's other types get.
pub const QTYPE_NAME: u16 = 0;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_NXDOMAIN: u8 = 3;

/// Key of `SVCLB_DNS`: a name in lowercase wire format (labels with their lengths, the final
/// zero byte), zero padded, and a query type.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsKey {
    pub qtype: u16,
    /// The name's length in `name`, its final zero byte included.
    pub len: u16,
    pub name: [u8; DNS_NAME_MAX + 1],
}
const _: () = assert!(size_of::<DnsKey>() == 260);

/// Where a reply's sections may be cut: how many bytes and records of each section fit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsCut {
    pub len: u16,
    pub answers: u16,
    pub authorities: u16,
    pub additionals: u16,
}
const _: () = assert!(size_of::<DnsCut>() == 8);

/// `DnsAnswer::flags`: some of the reply's records are not in the entry (it did not fit
/// [`DNS_SECTIONS_MAX`]): sent, the entry's records are a truncated reply.
pub const DNS_F_CUT: u8 = 1 << 0;
/// `DnsAnswer::flags`: not answered here; the query passes to the cluster's DNS server (an
/// ExternalName's addresses, which the server finds by following its CNAME).
pub const DNS_F_PASS: u8 = 1 << 1;

/// Value of `SVCLB_DNS`: the reply's rcode, its answer, authority and additional sections
/// after the question (`data[..whole.len]`), and the cut that fits a 512-byte message (a
/// client without EDNS), the records a truncated reply keeps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsAnswer {
    pub rcode: u8,
    /// `DNS_F_*` bits.
    pub flags: u8,
    pub _pad: [u8; 6],
    pub whole: DnsCut,
    pub small: DnsCut,
    pub data: [u8; DNS_SECTIONS_MAX],
}
const _: () = assert!(size_of::<DnsAnswer>() == 24 + DNS_SECTIONS_MAX);

/// The responder's settings (`SVCLB_DNS_ZONE`, one entry; a zero `len`: the responder is
/// off): the cluster DNS addresses it answers for (`--cluster-dns`), the zone (`<domain>`,
/// lowercase wire format) and the SOA record of its negative answers, encoded for a question
/// that is the zone itself. The datapath points the SOA's three names (owner, mname's and
/// rname's zone) at the zone's place in the client's question: the 16-bit words at
/// `soa_pointers` are `0xc00c`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DnsZone {
    /// The host's network namespace cookie while no program of the responder sees the host's
    /// queries: the socket hooks leave pods' queries to the servers untranslated, for the pod
    /// program to answer, but translate the host's. 0 once the host's queries are routed to
    /// the pod program too (the agent's veth pair), and every socket's are left alone.
    pub host_netns: u64,
    /// Up to [`DNS_SERVERS`] addresses, each with its family (0: none).
    pub servers: [L3Addr; DNS_SERVERS],
    pub server_families: [u8; DNS_SERVERS],
    pub _pad: [u8; 2],
    pub len: u16,
    pub soa_len: u16,
    pub soa_pointers: [u16; 3],
    pub _pad2: u16,
    pub name: [u8; DNS_NAME_MAX + 1],
    pub soa: [u8; DNS_SOA_MAX],
    pub _pad3: [u8; 6],
}
/// Cluster DNS addresses at most: one of each family, and one more.
pub const DNS_SERVERS: usize = 4;
/// The negative answers' SOA record at most: owner pointer, type, class, TTL, length, two
/// names of a label and a pointer, five numbers.
pub const DNS_SOA_MAX: usize = 64;
const _: () = assert!(
    size_of::<DnsZone>() == 8 + 16 * DNS_SERVERS + DNS_SERVERS + 2 + 12 + 256 + DNS_SOA_MAX + 6
);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, `#[repr(C)]`, explicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::DnsKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsAnswer {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsZone {}
}
