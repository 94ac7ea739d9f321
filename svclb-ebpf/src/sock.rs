//! Socket-level load balancing: cgroup hooks that give a socket its backend when it connects
//! (TCP, connected UDP) or sends a datagram (unconnected UDP), so the packets leave addressed
//! to the backend and no TC program translates them, and no conntrack entry is made. Host
//! processes and pods are served alike: the hooks run wherever the socket's cgroup is, not on
//! a device.
//!
//! The same maps and the same selection as the TC programs decide (`select`); sockets get a
//! frontend's internal view, as pods do on the TC path. What the hooks do not finish passes
//! untouched, to the TC path or the network: a frontend with `loadBalancerSourceRanges` (a
//! socket has no source address yet to check), a `drop` frontend without endpoints (the
//! connection times out, as it would through TC), anything not a frontend. A program error
//! never fails a connect.
//!
//! `recvmsg` and `getpeername` show the frontend's address again, from the socket's own
//! storage: a connected socket's `SVCLB_SOCK_FRONT`, an unconnected one's `SVCLB_SOCK_PEERS`
//! (see `svclb_common::socket`). A connected UDP socket is listed in `SVCLB_SOCK_REVERSE`
//! too, for the agent, and `sock_release` deletes it there.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr},
    helpers::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_set_retval},
    programs::{SockAddrContext, SockContext},
};
use svclb_common::{
    Backend, FAMILY_V4, FAMILY_V6, IPPROTO_TCP, IPPROTO_UDP, L3Addr, ServiceValue, SockPeer,
    SockPeers, SockRevKey, SockRevValue,
    config::{CFG_F_HOSTNS_ONLY, CFG_F_SOCKET_LB},
    events::{EV_SOCK_PEER_DROPPED, EV_SOCK_PEERS_FAILED, LRU_SOCK_REVERSE},
    service::{SCOPE_INTERNAL_VIEW, SVC_F_INTERNAL_VIEW, SVC_F_REJECT, SVC_F_SOURCE_RANGES},
    socket::{REV_CONNECTED, SOCK_PEERS},
};

use crate::{
    conntrack, maps,
    maps::{SVCLB_SOCK_FRONT, SVCLB_SOCK_PEERS, SVCLB_SOCK_REVERSE},
    select::{self, Flow},
};

/// What a cgroup hook returns to let the call go on.
pub const ALLOW: i32 = 1;
/// What a cgroup hook returns to fail the call (with the error `bpf_set_retval` set).
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// Which call a forward hook runs in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `connect`: TCP, or a UDP socket that will send to one peer.
    Connect,
    /// `sendmsg` with an address: one datagram of an unconnected UDP socket.
    Sendmsg,
}

/// A socket address as the hooks see it: an IPv4 address in an IPv6 socket (`::ffff:a.b.c.d`,
/// a dual-stack socket reaching an IPv4 service) is looked up as IPv4 and written back mapped.
#[derive(Clone, Copy)]
struct SockAddr {
    addr: L3Addr,
    port_be: u16,
    family: u8,
    mapped: bool,
}

/// The flow selection sees: the socket's destination, and as client the socket's network
/// namespace (a socket has no source address before it connects; a namespace is one pod, or
/// the host). Its source port is random, so Maglev spreads a client's connections, unless
/// ClientIP affinity leaves it out.
struct SockFlow {
    dest: SockAddr,
    client: L3Addr,
    sport_be: u16,
    proto: u8,
}

impl Flow for SockFlow {
    #[inline(always)]
    fn saddr(&self) -> &L3Addr {
        &self.client
    }
    #[inline(always)]
    fn daddr(&self) -> &L3Addr {
        &self.dest.addr
    }
    #[inline(always)]
    fn sport_be(&self) -> u16 {
        self.sport_be
    }
    #[inline(always)]
    fn dport_be(&self) -> u16 {
        self.dest.port_be
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn family(&self) -> u8 {
        self.dest.family
    }
}

/// The leading 12 bytes of an IPv4-mapped IPv6 address.
const MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// Reads four network-order words (the kernel allows 4-byte loads of these fields only).
#[inline(always)]
unsafe fn read_ip6(words: *const [u32; 4]) -> L3Addr {
    let mut addr = [0u8; 16];
    for i in 0..4 {
        // SAFETY: the caller's field, read a word at a time.
        let word = unsafe { read_volatile(words.cast::<u32>().add(i)) }.to_ne_bytes();
        addr[i * 4..i * 4 + 4].copy_from_slice(&word);
    }
    addr
}

#[inline(always)]
fn unmapped(addr: L3Addr, port_be: u16) -> SockAddr {
    if addr[..12] == MAPPED_PREFIX {
        SockAddr {
            addr: svclb_common::addr::v4([addr[12], addr[13], addr[14], addr[15]]),
            port_be,
            family: FAMILY_V4,
            mapped: true,
        }
    } else {
        SockAddr {
            addr,
            port_be,
            family: FAMILY_V6,
            mapped: false,
        }
    }
}

/// The address the call is about (`user_ip4/6`, `user_port`): the destination of a connect
/// or a datagram, the source of a datagram received, the peer of `getpeername`.
#[inline(always)]
fn user_addr(sa: *mut bpf_sock_addr, v6: bool) -> SockAddr {
    // SAFETY: fields of the context, read with the 4-byte loads the verifier allows.
    unsafe {
        let port_be = read_volatile(addr_of!((*sa).user_port)) as u16;
        if v6 {
            unmapped(read_ip6(addr_of!((*sa).user_ip6)), port_be)
        } else {
            let ip = read_volatile(addr_of!((*sa).user_ip4)).to_ne_bytes();
            SockAddr {
                addr: svclb_common::addr::v4(ip),
                port_be,
                family: FAMILY_V4,
                mapped: false,
            }
        }
    }
}

#[inline(always)]
fn word(addr: &L3Addr, i: usize) -> u32 {
    u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]])
}

/// Writes `addr` (of `family`) and `port_be` into the call's address, as the socket's family
/// has it.
#[inline(always)]
fn set_user_addr(sa: *mut bpf_sock_addr, v6: bool, addr: &L3Addr, family: u8, port_be: u16) {
    // SAFETY: fields of the context, written with the 4-byte stores the verifier allows.
    unsafe {
        if !v6 {
            write_volatile(addr_of_mut!((*sa).user_ip4), word(addr, 0));
        } else {
            let words = addr_of_mut!((*sa).user_ip6).cast::<u32>();
            if family == FAMILY_V4 {
                write_volatile(words, 0);
                write_volatile(words.add(1), 0);
                write_volatile(words.add(2), u32::from_ne_bytes([0, 0, 0xff, 0xff]));
                write_volatile(words.add(3), word(addr, 0));
            } else {
                write_volatile(words, word(addr, 0));
                write_volatile(words.add(1), word(addr, 4));
                write_volatile(words.add(2), word(addr, 8));
                write_volatile(words.add(3), word(addr, 12));
            }
        }
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(port_be));
    }
}

/// The socket's L4 protocol, when it is one the services map knows.
#[inline(always)]
fn protocol(sa: *mut bpf_sock_addr) -> Option<u8> {
    // SAFETY: a field of the context, read whole.
    let proto = unsafe { read_volatile(addr_of!((*sa).protocol)) };
    match proto {
        p if p == u32::from(IPPROTO_TCP) => Some(IPPROTO_TCP),
        p if p == u32::from(IPPROTO_UDP) => Some(IPPROTO_UDP),
        _ => None,
    }
}

/// The client identity of a socket: its network namespace's cookie, in bytes no IPv4
/// address of the TC path's affinity entries has (those end in zeros).
#[inline(always)]
fn client_of(netns: u64) -> L3Addr {
    let c = netns.to_ne_bytes();
    [
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], b's', b'v', b'c', b'l', b'b', b'-', b'n',
        b's',
    ]
}

/// Whether the hooks translate this socket: they are on, and the socket is the host's when
/// only the host's are wanted. The namespace cookie, for the client identity.
#[inline(always)]
fn in_scope(ctx: &SockAddrContext) -> Option<u64> {
    let config = maps::config()?;
    if config.flags & CFG_F_SOCKET_LB == 0 {
        return None;
    }
    // SAFETY: a helper taking the program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    if config.flags & CFG_F_HOSTNS_ONLY != 0 && netns != config.host_netns {
        return None;
    }
    Some(netns)
}

/// The frontend entry a socket gets: the internal view where the frontend has one.
#[inline(always)]
fn frontend(flow: &SockFlow) -> Option<ServiceValue> {
    let svc = select::frontend(flow)?;
    if svc.flags & SVC_F_INTERNAL_VIEW != 0 {
        return Some(select::service(flow, SCOPE_INTERNAL_VIEW).unwrap_or(svc));
    }
    Some(svc)
}

#[inline(always)]
fn rev_key(cookie: u64, addr: &L3Addr, port_be: u16, family: u8) -> SockRevKey {
    SockRevKey {
        cookie,
        addr: *addr,
        port_be,
        family,
        _pad: [0; 5],
    }
}

/// `connect4/6` and `sendmsg4/6`: a destination that is a frontend becomes a backend.
#[inline(always)]
pub fn forward(ctx: &SockAddrContext, v6: bool, call: Call) -> i32 {
    let sa = ctx.sock_addr;
    let Some(proto) = protocol(sa) else {
        return ALLOW;
    };
    let mut flow = SockFlow {
        dest: user_addr(sa, v6),
        client: [0; 16],
        sport_be: 0,
        proto,
    };
    let Some(svc) = frontend(&flow) else {
        return ALLOW;
    };
    if svc.flags & SVC_F_SOURCE_RANGES != 0 {
        return ALLOW;
    }
    let Some(netns) = in_scope(ctx) else {
        return ALLOW;
    };
    // A pod's DNS queries stay addressed to the cluster DNS address: the pod program answers
    // them in place, or sends them on through the service path.
    if proto == IPPROTO_UDP
        && crate::dns::answers_socket(&flow.dest.addr, flow.dest.family, flow.dest.port_be, netns)
    {
        return ALLOW;
    }
    flow.client = client_of(netns);
    // SAFETY: a helper without arguments.
    flow.sport_be = unsafe { bpf_get_prandom_u32() } as u16;
    let stats = maps::sock_stats(svc.id);
    let Some((backend_id, backend)) = select::pick(&svc, &flow, conntrack::now_ns()) else {
        if svc.flags & SVC_F_REJECT == 0 {
            return ALLOW;
        }
        maps::count(stats, |c| c.refused += 1);
        // SAFETY: a helper setting the error the failed call returns.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return DENY;
    };
    match call {
        Call::Connect => {
            remember_connected(ctx, &backend, &flow.dest);
            if proto == IPPROTO_UDP {
                list_connected_udp(sa, &backend, backend_id, &flow.dest, svc.id, netns);
            }
        }
        Call::Sendmsg => remember_datagram(ctx, &backend, &flow.dest),
    }
    set_user_addr(sa, v6, &backend.addr, backend.family, backend.port_be);
    maps::count(stats, |c| match call {
        Call::Connect => c.connects += 1,
        Call::Sendmsg => c.datagrams += 1,
    });
    ALLOW
}

/// Records in the socket's own storage that it connected to `front` went to `backend`.
#[inline(always)]
fn remember_connected(ctx: &SockAddrContext, backend: &Backend, front: &SockAddr) {
    let peer = SVCLB_SOCK_FRONT.get_or_insert_ptr_mut(ctx, None);
    if peer.is_null() {
        maps::event(EV_SOCK_PEERS_FAILED);
        return;
    }
    // SAFETY: the socket's storage, valid until the program returns.
    unsafe { *peer = peer_of(backend, front) };
}

#[inline(always)]
fn peer_of(backend: &Backend, front: &SockAddr) -> SockPeer {
    SockPeer {
        backend: backend.addr,
        front: front.addr,
        backend_port_be: backend.port_be,
        front_port_be: front.port_be,
        backend_family: backend.family,
        front_family: front.family,
        _pad: [0; 2],
    }
}

/// Lists in `SVCLB_SOCK_REVERSE` that a UDP socket connected to `front` went to `backend`:
/// where the agent finds it to destroy when the backend leaves.
#[inline(always)]
fn list_connected_udp(
    sa: *mut bpf_sock_addr,
    backend: &Backend,
    backend_id: u32,
    front: &SockAddr,
    svc_id: u32,
    netns: u64,
) {
    // SAFETY: a helper taking the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let key = rev_key(cookie, &backend.addr, backend.port_be, backend.family);
    let value = SockRevValue {
        addr: front.addr,
        port_be: front.port_be,
        family: front.family,
        kind: REV_CONNECTED,
        svc_id,
        backend_id,
        _pad2: 0,
        netns,
    };
    // A full map evicts its least recently used entry (counted by the agent); a failed insert
    // only leaves this socket's peer showing as the backend (counted).
    let _ = maps::lru_insert(&SVCLB_SOCK_REVERSE, LRU_SOCK_REVERSE, &key, &value);
}

/// Records in the socket's own storage that a datagram of an unconnected socket sent to
/// `front` went to `backend`.
#[inline(always)]
fn remember_datagram(ctx: &SockAddrContext, backend: &Backend, front: &SockAddr) {
    let peers = SVCLB_SOCK_PEERS.get_or_insert_ptr_mut(ctx, None);
    if peers.is_null() {
        maps::event(EV_SOCK_PEERS_FAILED);
        return;
    }
    // SAFETY: the socket's storage, valid until the program returns. Two threads sending on
    // one socket at once may interleave their writes: the worst is one reply shown with the
    // backend's address.
    let peers = unsafe { &mut *peers };
    let slot = match find_peer(peers, &backend.addr, backend.port_be, backend.family) {
        Some(slot) => slot,
        None => {
            let slot = peers.next as usize % SOCK_PEERS;
            peers.next = peers.next.wrapping_add(1);
            if peers.peers[slot].backend_family != 0 {
                maps::event(EV_SOCK_PEER_DROPPED);
            }
            slot
        }
    };
    peers.peers[slot] = peer_of(backend, front);
}

/// The slot of `peers` that holds backend `addr:port_be`.
#[inline(always)]
fn find_peer(peers: &SockPeers, addr: &L3Addr, port_be: u16, family: u8) -> Option<usize> {
    (0..SOCK_PEERS).find(|&i| holds(&peers.peers[i], addr, port_be, family))
}

/// Whether `found` records backend `addr:port_be` (of `family`).
#[inline(always)]
fn holds(found: &SockPeer, addr: &L3Addr, port_be: u16, family: u8) -> bool {
    found.backend_family == family && found.backend_port_be == port_be && found.backend == *addr
}

#[inline(always)]
fn front_in(found: &SockPeer) -> SockAddr {
    SockAddr {
        addr: found.front,
        port_be: found.front_port_be,
        family: found.front_family,
        mapped: false,
    }
}

/// The frontend a socket asked for when the hooks sent it to `peer`: from its own storage,
/// or from `SVCLB_SOCK_REVERSE` for a socket an earlier build connected.
#[inline(always)]
fn front_of(ctx: &SockAddrContext, peer: &SockAddr) -> Option<SockAddr> {
    let connected = SVCLB_SOCK_FRONT.get_ptr_mut(ctx);
    // SAFETY: the socket's storage, valid until the program returns.
    if let Some(found) = unsafe { connected.as_ref() }
        && holds(found, &peer.addr, peer.port_be, peer.family)
    {
        return Some(front_in(found));
    }
    // SAFETY: a helper taking the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = rev_key(cookie, &peer.addr, peer.port_be, peer.family);
    if let Some(front) = SVCLB_SOCK_REVERSE.get_ptr(&key) {
        // SAFETY: the value is copied out at once.
        let front = unsafe { *front };
        return Some(SockAddr {
            addr: front.addr,
            port_be: front.port_be,
            family: front.family,
            mapped: false,
        });
    }
    let peers = SVCLB_SOCK_PEERS.get_ptr_mut(ctx);
    if peers.is_null() {
        return None;
    }
    // SAFETY: the socket's storage, valid until the program returns.
    let peers = unsafe { &*peers };
    let slot = find_peer(peers, &peer.addr, peer.port_be, peer.family)?;
    Some(front_in(&peers.peers[slot]))
}

/// `recvmsg4/6` (a datagram's source) and `getpeername4/6`: a backend the hooks sent this
/// socket to shows as the frontend it asked for.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    let peer = user_addr(sa, v6);
    if let Some(front) = front_of(ctx, &peer)
        && (front.family == FAMILY_V4 || !peer.mapped)
    {
        set_user_addr(sa, v6, &front.addr, front.family, front.port_be);
    }
    ALLOW
}

/// `sock_release`: a UDP socket the hooks connected to a backend takes its listing with it.
/// (Socket storage goes with the socket by itself.)
#[inline(always)]
pub fn release(ctx: &SockContext) -> i32 {
    let sk: *mut bpf_sock = ctx.sock;
    // SAFETY: fields of the context, read whole.
    let (family, port_be, protocol) = unsafe {
        (
            read_volatile(addr_of!((*sk).family)),
            read_volatile(addr_of!((*sk).dst_port)),
            read_volatile(addr_of!((*sk).protocol)),
        )
    };
    if port_be == 0 || protocol != u32::from(IPPROTO_UDP) {
        return ALLOW;
    }
    let peer = if family == AF_INET6 {
        // SAFETY: as above.
        unmapped(unsafe { read_ip6(addr_of!((*sk).dst_ip6)) }, port_be)
    } else {
        SockAddr {
            // SAFETY: as above.
            addr: svclb_common::addr::v4(
                unsafe { read_volatile(addr_of!((*sk).dst_ip4)) }.to_ne_bytes(),
            ),
            port_be,
            family: FAMILY_V4,
            mapped: false,
        }
    };
    // SAFETY: a helper taking the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(sk.cast()) };
    let key = rev_key(cookie, &peer.addr, peer.port_be, peer.family);
    maps::lru_remove(&SVCLB_SOCK_REVERSE, LRU_SOCK_REVERSE, &key);
    ALLOW
}

const AF_INET6: u32 = 10;
