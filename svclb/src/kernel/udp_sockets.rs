//! Connected UDP sockets that socket-level load balancing pointed at a backend which then left
//! its service are destroyed, so their applications see `ECONNABORTED` and reconnect, through
//! the hooks, to a live backend (TCP connections are left alone, as on the TC path).
//!
//! `SVCLB_SOCK_REVERSE` names each such socket (its cookie) and its network namespace (the
//! namespace's cookie). A namespace is found among those of the machine's processes
//! (`/proc/<pid>/ns/net`); inside it, a `sock_diag` dump lists its UDP sockets with their
//! cookies, and `SOCK_DESTROY` (`CONFIG_INET_DIAG_DESTROY`) ends the ones wanted. This is done
//! from user space rather than with the `bpf_sock_destroy` kfunc from a socket iterator:
//! aya's Rust programs cannot declare kfunc calls yet, and an iterator too sees one namespace
//! at a time.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, Map, MapData};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};
use netlink_packet_sock_diag::{
    SockDiagDestroy, SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use svclb_common::{SockRevKey, SockRevValue, limits::MAP_SOCK_REVERSE, socket::REV_CONNECTED};
use tracing::{debug, warn};

/// Socket cookies by network namespace cookie.
pub type Wanted = BTreeMap<u64, BTreeSet<u64>>;

/// The pinned reverse map, read by the purge worker.
pub struct Reverse {
    map: HashMap<MapData, SockRevKey, SockRevValue>,
}

impl Reverse {
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        let path = dir.join(MAP_SOCK_REVERSE);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let map = HashMap::try_from(Map::from_map_data(data)?)
            .with_context(|| format!("map {MAP_SOCK_REVERSE}"))?;
        Ok(Self { map })
    }

    /// The sockets the hooks connected to one of the `departed` (frontend id, backend id)
    /// pairs (not the unconnected ones: their next datagram picks again).
    pub fn sockets_of(&self, departed: &BTreeSet<(u32, u32)>) -> Wanted {
        let mut wanted = Wanted::new();
        for (key, value) in self.map.iter().flatten() {
            if value.kind == REV_CONNECTED && departed.contains(&(value.svc_id, value.backend_id)) {
                wanted.entry(value.netns).or_default().insert(key.cookie);
            }
        }
        wanted
    }

    /// Deletes the entries of `cookies` (sockets destroyed: their `sock_release` finds no
    /// destination to delete by any more); how many went.
    pub fn forget(&mut self, cookies: &BTreeSet<u64>) -> usize {
        let keys: Vec<SockRevKey> = self
            .map
            .keys()
            .flatten()
            .filter(|key| cookies.contains(&key.cookie))
            .collect();
        keys.iter()
            .filter(|key| self.map.remove(key).is_ok())
            .count()
    }
}

/// Destroys the connected UDP sockets in `wanted`, namespace by namespace; their cookies. The
/// namespaces that cannot be searched are skipped; if sockets were not found, one warning
/// says which namespaces were skipped and why.
pub fn destroy(wanted: &Wanted) -> Result<BTreeSet<u64>> {
    let mut destroyed = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut skipped = Skipped::default();
    let processes = fs::read_dir("/proc").context("listing /proc")?.flatten();
    for entry in processes.filter(|e| e.file_name().to_str().is_some_and(is_pid)) {
        let path = entry.path().join("ns/net");
        // Processes come and go: one gone since the listing is skipped.
        let inode = match fs::metadata(&path) {
            Ok(meta) => meta.ino(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => {
                skipped.add(&path, &format!("reading it: {err}"));
                continue;
            }
        };
        if !seen.insert(inode) {
            continue;
        }
        let netns = match fs::File::open(&path) {
            Ok(netns) => netns,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => {
                skipped.add(&path, &format!("opening it: {err}"));
                continue;
            }
        };
        let wanted = wanted.clone();
        let found = std::thread::spawn(move || in_namespace(&netns, &wanted))
            .join()
            .map_err(|_| anyhow::anyhow!("the socket destroyer panicked"))?;
        match found {
            Ok(cookies) => destroyed.extend(cookies),
            Err(err) => skipped.add(&path, &format!("{err:#}")),
        }
    }
    if destroyed.len() < wanted.values().map(BTreeSet::len).sum() {
        skipped.warn();
    }
    Ok(destroyed)
}

/// Whether a name in /proc is a process's.
fn is_pid(name: &str) -> bool {
    name.parse::<u32>().is_ok()
}

/// The network namespaces a search could not enter, told in one warning.
#[derive(Default)]
struct Skipped {
    count: usize,
    first: Option<String>,
}

impl Skipped {
    fn add(&mut self, path: &std::path::Path, why: &str) {
        self.count += 1;
        self.first
            .get_or_insert_with(|| format!("{}: {why}", path.display()));
    }

    fn warn(&self) {
        if let Some(first) = &self.first {
            warn!(
                "{} network namespaces not searched for sockets of removed backends (the first, {first}); opening another process's namespace needs CAP_SYS_PTRACE, entering it CAP_SYS_ADMIN",
                self.count
            );
        }
    }
}

/// The socket cookie of a `sock_diag` answer: two host-order u32 halves, the low one first.
fn cookie_of(id: &SocketId) -> u64 {
    let c = id.cookie;
    let low = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    let high = u32::from_ne_bytes([c[4], c[5], c[6], c[7]]);
    u64::from(high) << 32 | u64::from(low)
}

/// In a thread of its own: enters `netns` and, if its cookie is wanted, destroys its sockets;
/// their cookies.
fn in_namespace(netns: &fs::File, wanted: &Wanted) -> Result<BTreeSet<u64>> {
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
        .context("entering the namespace")?;
    let mut destroyed = BTreeSet::new();
    let Some(cookies) = wanted.get(&super::socket::netns_cookie()?) else {
        return Ok(destroyed);
    };
    for family in [AF_INET, AF_INET6] {
        let found = udp_sockets(family)
            .with_context(|| format!("listing the UDP sockets of family {family}"))?;
        for id in found
            .into_iter()
            .filter(|id| cookies.contains(&cookie_of(id)))
        {
            let cookie = cookie_of(&id);
            match destroy_one(family, id) {
                Ok(()) => {
                    destroyed.insert(cookie);
                }
                // Closed since the dump: nothing left to do.
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                    debug!(cookie, "socket gone before it was destroyed");
                    destroyed.insert(cookie);
                }
                Err(err) => warn!(
                    cookie,
                    "destroying a UDP socket: {err} (SOCK_DESTROY needs CAP_NET_ADMIN)"
                ),
            }
        }
    }
    Ok(destroyed)
}

fn diag_socket() -> Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag socket")?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

fn request(family: u8, socket_id: SocketId) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_UDP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id,
    })
}

fn send<T: NetlinkSerializable>(socket: &Socket, flags: u16, payload: T) -> Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .context("sending a sock_diag request")?;
    Ok(())
}

/// The ids (with cookies) of this namespace's connected UDP sockets of `family`.
fn udp_sockets(family: u8) -> Result<Vec<SocketId>> {
    let socket = diag_socket()?;
    let id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    // A connected UDP socket is in state ESTABLISHED.
    let mut dump = request(family, id);
    if let SockDiagMessage::InetRequest(req) = &mut dump {
        req.states = StateFlags::ESTABLISHED;
    }
    send(&socket, NLM_F_REQUEST | NLM_F_DUMP, dump)?;
    let mut ids = Vec::new();
    loop {
        let (buf, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < buf.len() {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[offset..])
                .context("reading a sock_diag answer")?;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    ids.push(response.header.socket_id);
                }
                NetlinkPayload::Done(_) => return Ok(ids),
                NetlinkPayload::Error(err) => bail!("sock_diag dump: {err:?}"),
                _ => {}
            }
            let len = message.header.length as usize;
            if len == 0 {
                break;
            }
            // NLMSG_ALIGN: messages start on 4-byte boundaries.
            offset += len.next_multiple_of(4);
        }
    }
}

/// `SOCK_DESTROY` of the UDP socket `id` (its cookie included); the kernel's error.
fn destroy_one(family: u8, id: SocketId) -> std::io::Result<()> {
    let socket = diag_socket().map_err(std::io::Error::other)?;
    send(
        &socket,
        NLM_F_REQUEST | NLM_F_ACK,
        SockDiagDestroy::new(request(family, id)),
    )
    .map_err(std::io::Error::other)?;
    let (buf, _) = socket.recv_from_full()?;
    let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buf)
        .map_err(|err| std::io::Error::other(format!("the answer to SOCK_DESTROY: {err}")))?;
    match message.payload {
        NetlinkPayload::Error(err) => match err.code {
            // A negative errno (with CONFIG_INET_DIAG_DESTROY missing: EOPNOTSUPP).
            Some(code) => Err(std::io::Error::from_raw_os_error(-code.get())),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}
