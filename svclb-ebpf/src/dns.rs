//! The cluster's DNS names, answered in place: a pod's UDP query to a cluster DNS address
//! (`--cluster-dns`) for a name the agent has an entry for is turned into its reply and sent
//! straight back to the pod, before it becomes a flow (no conntrack entry, so no insertion
//! race between the A and AAAA queries glibc sends together). A Service's name under
//! `svc.<zone>` with no entry, or a name below one, is NXDOMAIN, with the zone's SOA (see
//! [`nonexistent`]). Everything else passes on untouched, to the
//! cluster's DNS server through the service path: other names, query types not answered,
//! classes but IN, more than one question, opcodes but QUERY, EDNS versions but 0, an EDNS
//! client subnet, anything malformed (EDNS options cut short too), IPv4 options and IPv6
//! extension headers.
//!
//! The reply is the entry's sections after the client's own question (see
//! `svclb_common::dns`): its names point into that question, so they come out in the
//! client's case. Header: the query's ID, QR and AA set, RD and CD copied, RA clear. A query
//! with EDNS gets an OPT record back with its payload size, as sent, and DO bit (its options
//! are not echoed). A reply longer than the client takes (512 bytes, or its EDNS size) is cut at a
//! record that fits a 512-byte message and sent with TC, and the client asks again over TCP,
//! which passes on.

use aya_ebpf::{
    EbpfContext as _,
    bindings::TC_ACT_SHOT,
    btf_maps::PerCpuArray,
    helpers::{bpf_redirect, bpf_skb_load_bytes, bpf_skb_store_bytes},
    macros::btf_map,
    programs::TcContext,
};
use svclb_common::{
    IPPROTO_UDP, L3Addr,
    dns::{
        DNS_EDNS_MESSAGE, DNS_F_CUT, DNS_F_PASS, DNS_NAME_MAX, DNS_SECTIONS_MAX, DNS_SERVERS,
        DNS_SMALL_MESSAGE, DNS_SOA_MAX, DnsAnswer, DnsKey, DnsZone, QTYPE_A, QTYPE_AAAA,
        QTYPE_CNAME, QTYPE_NAME, QTYPE_PTR, QTYPE_SRV, QTYPE_TXT, RCODE_NXDOMAIN,
    },
    events::{
        EV_DNS_ANSWERED, EV_DNS_NXDOMAIN, EV_DNS_PASSED_FORM, EV_DNS_PASSED_NAME,
        EV_DNS_PASSED_TYPE, EV_DNS_TRUNCATED,
    },
};
use svclb_ebpf::bytes;

use crate::{
    maps::{SVCLB_DNS, SVCLB_DNS_ZONE, event},
    parse::{ETH_HLEN, IP_HLEN, IPV6_HLEN, Packet},
    reject::{checksum, pseudo_v6, reply_headers, reply_headers_v6, sum16},
};

/// What [`respond`] returns for a query it leaves to the cluster's DNS server.
pub const NOT_ANSWERED: i32 = i32::MIN + 2;

const UDP_HLEN: usize = 8;
const DNS_HLEN: usize = 12;
/// A query holds its header, one question and at most an OPT record with a few options.
const QUERY_MAX: usize = DNS_HLEN + DNS_NAME_MAX + 4 + 64;
const OPT_LEN: usize = 11;
const TYPE_OPT: u16 = 41;
/// EDNS Client Subnet (RFC 7871).
const OPTION_CLIENT_SUBNET: u16 = 8;
const CLASS_IN: u16 = 1;

/// The UDP datagram of the largest reply, in whole pieces of [`CSUM_PIECE`] bytes.
const CSUM_PIECE: usize = 512;
const CSUM_BUF: usize = 3 * CSUM_PIECE;
const _: () = assert!(UDP_HLEN + DNS_EDNS_MESSAGE <= CSUM_BUF);

/// The query buffer: a power of two, so an index masked to it is in bounds (see [`at`]).
const QUERY_BUF: usize = 512;
const _: () = assert!(QUERY_MAX <= QUERY_BUF && QUERY_BUF.is_power_of_two());

/// The responder's buffers, off the stack.
pub struct DnsScratch {
    query: [u8; QUERY_BUF],
    key: DnsKey,
    /// The key of the Service a name with no entry is under (see [`nonexistent`]), and where
    /// that Service's label starts in `key` (kept here, not in a register: read back, it is
    /// one value to the verifier whichever way the walk over the labels went).
    service: DnsKey,
    service_at: u32,
    /// The reply's Ethernet, IP (v4 or v6) and UDP headers, its DNS header and its OPT
    /// record.
    headers: [u8; ETH_HLEN + IP_HLEN + UDP_HLEN],
    headers6: [u8; ETH_HLEN + IPV6_HLEN + UDP_HLEN],
    /// An IPv6 reply's UDP datagram, read back to sum its checksum (zero padded to whole
    /// 512-byte pieces, what `bpf_csum_diff` takes at most).
    udp: [u8; CSUM_BUF],
    dns: [u8; DNS_HLEN],
    opt: [u8; OPT_LEN],
    /// The zone's SOA, its pointers set (twice its size: an offset masked to the first half
    /// has its next byte in the array).
    soa: [u8; 2 * DNS_SOA_MAX],
}

#[btf_map]
static SVCLB_DNS_SCRATCH: PerCpuArray<DnsScratch, 1> = PerCpuArray::new();

/// A query as far as the responder reads it.
struct Query {
    /// Where its DNS message starts in the frame.
    at: usize,
    /// Its name's length in wire format (the final zero byte included).
    name_len: usize,
    qtype: u16,
    /// Header bits the reply copies (RD, CD).
    rd: u8,
    cd: u8,
    /// EDNS: the client's payload size and DO bit, if it sent an OPT record.
    edns: Option<(u16, u8)>,
}

/// Answers `pkt` if it is a query the responder answers (see the module docs): the verdict,
/// or [`NOT_ANSWERED`].
#[inline(never)]
pub fn respond(ctx: &TcContext, pkt: &Packet) -> i32 {
    let Some(zone) = SVCLB_DNS_ZONE.get(0) else {
        return NOT_ANSWERED;
    };
    if zone.len == 0 || !to_server(zone, pkt.family, &pkt.daddr) {
        return NOT_ANSWERED;
    }
    let Some(s) = SVCLB_DNS_SCRATCH.get_ptr_mut(0) else {
        return NOT_ANSWERED;
    };
    // SAFETY: this CPU's buffers; nothing else runs on it until the program returns.
    let s = unsafe { &mut *s };
    match answer(ctx, pkt, zone, s) {
        Ok(verdict) => verdict,
        Err(reason) => {
            event(reason);
            NOT_ANSWERED
        }
    }
}

/// Whether `addr` (of `family`) is one of the zone's servers.
#[inline(always)]
fn to_server(zone: &DnsZone, family: u8, addr: &L3Addr) -> bool {
    (0..DNS_SERVERS).any(|i| zone.server_families[i] == family && zone.servers[i] == *addr)
}

/// Whether a socket in network namespace `netns` sending UDP to `addr:port_be` (of `family`)
/// sends queries the responder answers: the socket hooks must leave them addressed to the
/// server, for the pod program to see.
#[inline(always)]
pub fn answers_socket(addr: &L3Addr, family: u8, port_be: u16, netns: u64) -> bool {
    if port_be != DNS_PORT.to_be() {
        return false;
    }
    SVCLB_DNS_ZONE.get(0).is_some_and(|zone| {
        zone.len != 0 && netns != zone.host_netns && to_server(zone, family, addr)
    })
}

/// The port queries are answered on.
pub const DNS_PORT: u16 = 53;

/// The reply, or the reason (an `EV_DNS_PASSED_*` event) the query passes on.
#[inline(always)]
fn answer(ctx: &TcContext, pkt: &Packet, zone: &DnsZone, s: &mut DnsScratch) -> Result<i32, u32> {
    // Plain headers only: IPv4 without options, IPv6 without extension headers.
    let l3_len = if pkt.is_v6() { IPV6_HLEN } else { IP_HLEN };
    if pkt.l3_off != ETH_HLEN || pkt.l4_off != ETH_HLEN + l3_len {
        return Err(EV_DNS_PASSED_FORM);
    }
    let query = read_query(ctx, pkt, s)?;
    if !answered_type(query.qtype) {
        return Err(EV_DNS_PASSED_TYPE);
    }
    key_of(&query, s)?;
    let sections = match entry_of(&mut s.key) {
        Some(entry) if entry.flags & DNS_F_PASS != 0 => return Err(EV_DNS_PASSED_NAME),
        Some(entry) => Sections::Entry(entry),
        None => match under_svc(&s.key, zone) {
            Some(service) => {
                s.service_at = service.min(u32::MAX as usize) as u32;
                if !nonexistent(s) {
                    return Err(EV_DNS_PASSED_NAME);
                }
                patch_soa(zone, &query, s);
                Sections::Negative(zone)
            }
            None => return Err(EV_DNS_PASSED_NAME),
        },
    };
    // From here the packet is rewritten: a failure drops it (the client asks again).
    Ok(send(ctx, pkt, &query, s, sections).unwrap_or(TC_ACT_SHOT))
}

#[inline(always)]
fn answered_type(qtype: u16) -> bool {
    matches!(
        qtype,
        QTYPE_A | QTYPE_AAAA | QTYPE_CNAME | QTYPE_PTR | QTYPE_TXT | QTYPE_SRV
    )
}

/// The entry of the key's name and type, else of its name (what its other types get).
#[inline(always)]
fn entry_of(key: &mut DnsKey) -> Option<&'static DnsAnswer> {
    // SAFETY: map values, valid until the program returns.
    if let Some(entry) = SVCLB_DNS.get_ptr(key) {
        return Some(unsafe { &*entry });
    }
    key.qtype = QTYPE_NAME;
    // SAFETY: as above.
    SVCLB_DNS.get_ptr(key).map(|entry| unsafe { &*entry })
}

/// Reads the query's DNS message into `s.query` and checks it is one question, IN, with at
/// most an OPT record of version 0 after it, and nothing else.
#[inline(always)]
fn read_query(ctx: &TcContext, pkt: &Packet, s: &mut DnsScratch) -> Result<Query, u32> {
    let at = pkt.l4_off + UDP_HLEN;
    let ip_len = usize::from(u16::from_be(pkt.tot_len_be));
    let len = ip_len
        .checked_sub(pkt.l4_off - pkt.l3_off + UDP_HLEN)
        .ok_or(EV_DNS_PASSED_FORM)?;
    if !(DNS_HLEN + 5..=QUERY_MAX).contains(&len) || (ctx.len() as usize) < at + len {
        return Err(EV_DNS_PASSED_FORM);
    }
    // Exactly the message.
    load_bytes(ctx, at, &mut s.query, len).map_err(|_| EV_DNS_PASSED_FORM)?;
    let q = &s.query;
    let word = |i: usize| u16::from_be_bytes([q[i], q[i + 1]]);
    // QR clear, opcode QUERY; one question, no answers or authorities, at most an OPT.
    if q[2] & 0xf8 != 0 || word(4) != 1 || word(6) != 0 || word(8) != 0 || word(10) > 1 {
        return Err(EV_DNS_PASSED_FORM);
    }
    let name_len = name_len(q)?;
    let end = DNS_HLEN + name_len;
    let (qtype, class) = (get16(q, end)?, get16(q, end + 2)?);
    if class != CLASS_IN {
        return Err(EV_DNS_PASSED_TYPE);
    }
    let edns = if word(10) == 1 {
        Some(opt(q, end + 4, len)?)
    } else if end + 4 == len {
        None
    } else {
        return Err(EV_DNS_PASSED_FORM);
    };
    Ok(Query {
        at,
        name_len,
        qtype,
        rd: q[2] & 0x01,
        cd: q[3] & 0x10,
        edns,
    })
}

/// `bytes[i]`, `i` masked to the array's power-of-two length. The index is read back through
/// a volatile load first: a bounds check of `i` says nothing to the verifier when LLVM has
/// moved `i`'s arithmetic onto a pointer made before the check.
#[inline(always)]
fn at<const N: usize>(bytes: &[u8; N], i: usize) -> u8 {
    // SAFETY: a local read.
    let i = unsafe { core::ptr::read_volatile(&i) } & (N - 1);
    bytes[i]
}

#[inline(always)]
fn get16(q: &[u8; QUERY_BUF], i: usize) -> Result<u16, u32> {
    if i + 1 >= QUERY_MAX {
        return Err(EV_DNS_PASSED_FORM);
    }
    Ok(u16::from_be_bytes([at(q, i), at(q, i + 1)]))
}

/// The question name's length (labels, no compression, at most [`DNS_NAME_MAX`] bytes).
#[inline(always)]
fn name_len(q: &[u8; QUERY_BUF]) -> Result<usize, u32> {
    let mut pos = DNS_HLEN;
    for _ in 0..128 {
        let label = usize::from(at(q, pos));
        if label == 0 {
            let len = pos + 1 - DNS_HLEN;
            return if len <= DNS_NAME_MAX {
                Ok(len)
            } else {
                Err(EV_DNS_PASSED_FORM)
            };
        }
        if label > 63 {
            return Err(EV_DNS_PASSED_FORM);
        }
        pos += label + 1;
        if pos > DNS_HLEN + DNS_NAME_MAX {
            return Err(EV_DNS_PASSED_FORM);
        }
    }
    Err(EV_DNS_PASSED_FORM)
}

/// The OPT record at `at`, the last thing in a message of `len` bytes: the client's payload
/// size and DO bit. Another version passes on (the server answers BADVERS).
#[inline(always)]
fn opt(q: &[u8; QUERY_BUF], pos: usize, len: usize) -> Result<(u16, u8), u32> {
    let rdlen = usize::from(get16(q, pos + 9)?);
    if at(q, pos) != 0 || get16(q, pos + 1)? != TYPE_OPT || pos + OPT_LEN + rdlen != len {
        return Err(EV_DNS_PASSED_FORM);
    }
    // Version 0 only, and options that fill the record's data exactly.
    if at(q, pos + 6) != 0 || !options_fit(q, pos + OPT_LEN, len) {
        return Err(EV_DNS_PASSED_FORM);
    }
    Ok((get16(q, pos + 3)?, at(q, pos + 7) & 0x80))
}

/// Whether the options from `pos` end exactly at `end` (each a code, a length and that many
/// bytes: a cut option makes the whole message malformed), with no client subnet among them
/// (a server checks that option's contents and may refuse it; passing on is always safe).
#[inline(always)]
fn options_fit(q: &[u8; QUERY_BUF], mut pos: usize, end: usize) -> bool {
    for _ in 0..(QUERY_MAX - DNS_HLEN) / 4 {
        if pos >= end {
            return pos == end;
        }
        let (Ok(code), Ok(len)) = (get16(q, pos), get16(q, pos + 2)) else {
            return false;
        };
        if code == OPTION_CLIENT_SUBNET {
            return false;
        }
        pos += 4 + usize::from(len);
    }
    pos == end
}

/// Fills `s.key` with the query's type and its name in lowercase, zero padded.
#[inline(always)]
fn key_of(query: &Query, s: &mut DnsScratch) -> Result<(), u32> {
    // SAFETY: all-zero is a valid key; 260 bytes, aligned to 2... and a multiple of 4.
    unsafe { bytes::zero(&raw mut s.key) };
    s.key.qtype = query.qtype;
    s.key.len = query.name_len as u16;
    for i in 0..DNS_NAME_MAX {
        if i >= query.name_len {
            break;
        }
        s.key.name[i] = at(&s.query, DNS_HLEN + i).to_ascii_lowercase();
    }
    Ok(())
}

/// Where `svc.<zone>` starts in the key's name, if the name is under it: it ends in those
/// labels, and a label of its own starts where they do.
#[inline(always)]
fn under_svc(key: &DnsKey, zone: &DnsZone) -> Option<usize> {
    const SVC: [u8; 4] = [3, b's', b'v', b'c'];
    let (len, zone_len) = (usize::from(key.len), usize::from(zone.len));
    let suffix = zone_len + SVC.len();
    if len <= suffix || len > DNS_NAME_MAX {
        return None;
    }
    let from = len - suffix;
    for i in 0..DNS_NAME_MAX {
        if i >= suffix {
            break;
        }
        let want = if i < SVC.len() {
            at(&SVC, i)
        } else {
            at(&zone.name, i - SVC.len())
        };
        if at(&key.name, from + i) != want {
            return None;
        }
    }
    let [service, _namespace, end] = last_labels(key, from);
    (end == from).then_some(service)
}

/// Where the last two labels before `from` in the key's name start (`usize::MAX`: there is
/// no such label), and where the walk over its labels reached `from` (`from` itself when a
/// label starts there).
#[inline(always)]
fn last_labels(key: &DnsKey, from: usize) -> [usize; 3] {
    let (mut second, mut last, mut pos) = (usize::MAX, usize::MAX, 0);
    for _ in 0..128 {
        if pos >= from {
            break;
        }
        (second, last) = (last, pos);
        pos += usize::from(at(&key.name, pos)) + 1;
    }
    [second, last, pos]
}

/// Whether a name under `svc.<zone>` that has no entry does not exist: `<svc>.<ns>.svc.<zone>`
/// (a Service the agent knows has an entry); a name below one, unless that Service has an
/// entry. Not a namespace's name (`service` is `usize::MAX`): the DNS server knows the
/// namespaces with no Service in them. Names below a Service that has an entry pass on too:
/// the server answers some the agent writes none for (an endpoint of a Service with a cluster
/// IP, by its address; loose SRV labels such as `_._tcp`). `s.service_at` is where the
/// Service's label starts in `s.key`'s name.
#[inline(always)]
fn nonexistent(s: &mut DnsScratch) -> bool {
    // SAFETY: a read of this CPU's scratch.
    let service = unsafe { core::ptr::read_volatile(&s.service_at) } as usize;
    if service >= DNS_NAME_MAX {
        return false;
    }
    if service == 0 {
        return true;
    }
    // SAFETY: all-zero is a valid key.
    unsafe { bytes::zero(&raw mut s.service) };
    let len = usize::from(s.key.len);
    s.service.len = len.saturating_sub(service) as u16;
    s.service.qtype = QTYPE_NAME;
    // A copy that stops at the name's end: nothing it learns about `len` lives on after it.
    for i in 0..DNS_NAME_MAX {
        let from = i + service;
        if from >= len {
            break;
        }
        s.service.name[i] = at(&s.key.name, from);
    }
    SVCLB_DNS.get_ptr(&s.service).is_none()
}

/// Copies the zone's SOA into `s.soa`, its names pointing at the zone's place in the query's
/// question.
#[inline(always)]
fn patch_soa(zone: &DnsZone, query: &Query, s: &mut DnsScratch) {
    s.soa[..DNS_SOA_MAX].copy_from_slice(&zone.soa);
    let zone_at = (DNS_HLEN + query.name_len - usize::from(zone.len)) as u16;
    let pointer = (0xc000 | zone_at).to_be_bytes();
    for p in zone.soa_pointers {
        // SAFETY: a local read (see [`at`] on why volatile); the mask keeps it in the array.
        let p = unsafe { core::ptr::read_volatile(&p) } as usize & (DNS_SOA_MAX - 1);
        s.soa[p] = pointer[0];
        s.soa[p + 1] = pointer[1];
    }
}

/// Reads `len` bytes of the packet at `off` into the start of `buf` (at least one, at most
/// `N`).
#[inline(always)]
fn load_bytes<const N: usize>(
    ctx: &TcContext,
    off: usize,
    buf: &mut [u8; N],
    len: usize,
) -> Result<(), i64> {
    // SAFETY: a local read (its bounds checked on what the helper gets, see [`at`]).
    let n = unsafe { core::ptr::read_volatile(&len) };
    if n == 0 || n > N {
        return Err(-1);
    }
    // SAFETY: the helper writes `n` bytes into `buf`, which holds them.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr().cast(),
            off as u32,
            buf.as_mut_ptr().cast(),
            n as u32,
        )
    };
    if ret == 0 { Ok(()) } else { Err(ret) }
}

/// Writes the first `len` bytes of `bytes` into the packet at `off` (nothing for none).
#[inline(always)]
fn store_bytes<const N: usize>(
    ctx: &TcContext,
    off: usize,
    bytes: &[u8; N],
    len: usize,
) -> Result<(), i64> {
    // SAFETY: a local read (its bounds checked on what the helper gets, see [`at`]).
    let n = unsafe { core::ptr::read_volatile(&len) };
    if n == 0 {
        return Ok(());
    }
    if n > N {
        return Err(-1);
    }
    // SAFETY: `bytes` holds `n` bytes; the helper copies them into the packet.
    let ret = unsafe {
        bpf_skb_store_bytes(
            ctx.as_ptr().cast(),
            off as u32,
            bytes.as_ptr().cast(),
            n as u32,
            0,
        )
    };
    if ret == 0 { Ok(()) } else { Err(ret) }
}

/// A reply's UDP header: from the query's destination port back to its source port,
/// `len` long, checksum 0.
#[inline(always)]
fn udp_header(pkt: &Packet, len: u16) -> [u8; UDP_HLEN] {
    let mut udp = [0u8; UDP_HLEN];
    udp[0..2].copy_from_slice(&pkt.dport_be.to_ne_bytes());
    udp[2..4].copy_from_slice(&pkt.sport_be.to_ne_bytes());
    udp[4..6].copy_from_slice(&len.to_be_bytes());
    udp
}

/// Sums the IPv6 reply's UDP checksum (mandatory over IPv6, RFC 8200 8.1) and writes it:
/// the datagram of `len` bytes at `l4_off`, its checksum field 0, is read back into the
/// zeroed `s.udp` and summed a piece at a time, with the pseudo-header of the reply's IPv6
/// header (in `s.headers6`).
#[inline(always)]
fn udp_checksum_v6(
    ctx: &TcContext,
    l4_off: usize,
    len: usize,
    s: &mut DnsScratch,
) -> Result<(), i64> {
    // SAFETY: all-zero bytes are valid.
    unsafe { bytes::zero(&raw mut s.udp) };
    load_bytes(ctx, l4_off, &mut s.udp, len)?;
    let ip = &s.headers6[ETH_HLEN..ETH_HLEN + IPV6_HLEN];
    let mut sum = pseudo_v6(ip, IPPROTO_UDP, len as u16);
    for piece in 0..CSUM_BUF / CSUM_PIECE {
        if piece * CSUM_PIECE < len {
            let from = piece * CSUM_PIECE;
            sum = sum16(sum, &s.udp[from..from + CSUM_PIECE]);
        }
    }
    let mut check = checksum(sum);
    // A sum of 0 is sent as all ones: 0 means no checksum, which IPv6 does not allow.
    if check == 0 {
        check = 0xffff;
    }
    ctx.store(l4_off + 6, &check.to_be_bytes(), 0)?;
    Ok(())
}

/// What follows the question.
#[derive(Clone, Copy)]
enum Sections<'a> {
    Entry(&'a DnsAnswer),
    /// NXDOMAIN with the zone's SOA (in `s.soa`).
    Negative(&'a DnsZone),
}

/// Rewrites the query into its reply and sends it back out of the device it came in on.
#[inline(always)]
fn send(
    ctx: &TcContext,
    pkt: &Packet,
    query: &Query,
    s: &mut DnsScratch,
    sections: Sections<'_>,
) -> Result<i32, i64> {
    let question = DNS_HLEN + query.name_len + 4;
    let opt_len = if query.edns.is_some() { OPT_LEN } else { 0 };
    // The client's size, at most `DNS_EDNS_MESSAGE`.
    let limit = match query.edns {
        Some((size, _)) => usize::from(size).clamp(DNS_SMALL_MESSAGE, DNS_EDNS_MESSAGE),
        None => DNS_SMALL_MESSAGE,
    };
    let (rcode, cut, truncated) = match sections {
        Sections::Entry(entry) => {
            let whole = question + usize::from(entry.whole.len) + opt_len <= limit;
            let cut = if whole { entry.whole } else { entry.small };
            let truncated = !whole || entry.flags & DNS_F_CUT != 0;
            (entry.rcode, cut, truncated)
        }
        Sections::Negative(zone) => {
            let cut = svclb_common::dns::DnsCut {
                len: zone.soa_len,
                answers: 0,
                authorities: 1,
                additionals: 0,
            };
            (RCODE_NXDOMAIN, cut, false)
        }
    };
    let sections_len = usize::from(cut.len) & 0x7ff;
    if sections_len > DNS_SECTIONS_MAX {
        return Err(-1);
    }
    let dns_len = question + sections_len + opt_len;
    let dns_at = query.at;
    ctx.change_tail((dns_at + dns_len) as u32, 0)?;
    // Headers: Ethernet and IP swapped round, UDP from port 53 back to the client's port,
    // its checksum 0 (RFC 768 allows none over IPv4; over IPv6 it is summed at the end).
    let eth: [u8; ETH_HLEN] = ctx.load(0)?;
    let udp_len = (UDP_HLEN + dns_len) as u16;
    let udp_header = udp_header(pkt, udp_len);
    if pkt.is_v6() {
        reply_headers_v6(&eth, pkt, IPPROTO_UDP, udp_len, &mut s.headers6);
        s.headers6[ETH_HLEN + IPV6_HLEN..].copy_from_slice(&udp_header);
        ctx.store(0, &s.headers6, 0)?;
    } else {
        let ip_len = (IP_HLEN as u16) + udp_len;
        reply_headers(&eth, pkt, IPPROTO_UDP, ip_len, &mut s.headers);
        s.headers[ETH_HLEN + IP_HLEN..].copy_from_slice(&udp_header);
        ctx.store(0, &s.headers, 0)?;
    }
    // The DNS header: the query's ID; QR, AA, TC as cut, RD and CD copied; the counts.
    s.dns[0] = s.query[0];
    s.dns[1] = s.query[1];
    s.dns[2] = 0x84 | if truncated { 0x02 } else { 0 } | query.rd;
    s.dns[3] = query.cd | (rcode & 0x0f);
    s.dns[4..6].copy_from_slice(&1u16.to_be_bytes());
    s.dns[6..8].copy_from_slice(&cut.answers.to_be_bytes());
    s.dns[8..10].copy_from_slice(&cut.authorities.to_be_bytes());
    let additionals = cut.additionals + u16::from(query.edns.is_some());
    s.dns[10..12].copy_from_slice(&additionals.to_be_bytes());
    ctx.store(dns_at, &s.dns, 0)?;
    let sections_at = dns_at + question;
    match sections {
        Sections::Entry(entry) => store_bytes(ctx, sections_at, &entry.data, sections_len)?,
        Sections::Negative(_) => store_bytes(ctx, sections_at, &s.soa, sections_len)?,
    }
    if let Some((size, do_bit)) = query.edns {
        // Root name, OPT, the client's payload size, extended rcode 0, version 0, DO, no
        // options.
        s.opt = [0, 0, 41, 0, 0, 0, 0, do_bit, 0, 0, 0];
        s.opt[3..5].copy_from_slice(&size.to_be_bytes());
        ctx.store(sections_at + sections_len, &s.opt, 0)?;
    }
    if pkt.is_v6() {
        udp_checksum_v6(ctx, pkt.l4_off, usize::from(udp_len), s)?;
    }
    event(match sections {
        Sections::Negative(_) => EV_DNS_NXDOMAIN,
        Sections::Entry(_) if truncated => EV_DNS_TRUNCATED,
        Sections::Entry(_) => EV_DNS_ANSWERED,
    });
    let ifindex = crate::frame::Frame::ifindex(ctx);
    // SAFETY: redirect to the egress of the device the query arrived on: back to the pod.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}
