//! Clients: ask a service who answers, over TCP and UDP, always with a timeout.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Protocol, Socket, Type};

use svclb_common::http;

use crate::netns::in_netns;

/// How long a lab client waits for an answer that should come.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// One TCP connection: connect, ask once, read the name, close.
pub fn tcp_ask(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let mut session = TcpSession::connect(addr, timeout)?;
    session.ask()
}

/// One UDP exchange.
pub fn udp_ask(addr: SocketAddr, timeout: Duration) -> Result<String> {
    udp_ask_from(0, addr, b"who\n", timeout)
}

/// One UDP exchange from local port `port` (0: any), sending `request`.
pub fn udp_ask_from(
    port: u16,
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Result<String> {
    let socket = UdpSocket::bind((unspecified(addr), port))
        .with_context(|| format!("binding UDP port {port}"))?;
    socket.set_read_timeout(Some(timeout))?;
    socket
        .send_to(request, addr)
        .with_context(|| format!("sending to {addr}"))?;
    // Room for the largest datagram (a fragmented answer too).
    let mut buf = vec![0u8; 65_536];
    let (n, from) = socket
        .recv_from(&mut buf)
        .with_context(|| format!("no UDP answer from {addr} within {timeout:?}"))?;
    if from != addr {
        bail!("UDP answer came from {from}, not from {addr} (reverse NAT missing)");
    }
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

/// The unspecified address of `addr`'s family: what a client binds to.
fn unspecified(addr: SocketAddr) -> std::net::IpAddr {
    if addr.is_ipv6() {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    }
}

/// One UDP exchange of datagrams bigger than one packet both ways (sent and answered in
/// fragments): a request of `size` bytes of filler asking for an answer of `size` bytes; the
/// name of the backend that answered all of it.
pub fn udp_ask_big(addr: SocketAddr, size: usize, timeout: Duration) -> Result<String> {
    let mut request = format!("big {size}\n").into_bytes();
    request.resize(request.len() + size, b'y');
    big_answer(&udp_ask_from(0, addr, &request, timeout)?, size)
}

/// The name in an answer to `big SIZE`, if the rest of it is SIZE bytes of `x`.
fn big_answer(answer: &str, size: usize) -> Result<String> {
    let (name, body) = answer.split_once(' ').context("no name in the answer")?;
    if body.len() != size || body.bytes().any(|b| b != b'x') {
        bail!("{name} answered {} bytes, not {size}", body.len());
    }
    Ok(name.to_owned())
}

/// `count` [`udp_ask_big`] exchanges from namespace `ns`.
pub fn udp_ask_big_many(
    ns: &str,
    addr: SocketAddr,
    size: usize,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Result<String>>> {
    ask_many(ns, count, move || udp_ask_big(addr, size, timeout))
}

/// A long-lived TCP connection that can ask many times.
pub struct TcpSession {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl TcpSession {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        Self::from_stream(stream, timeout)
    }

    /// Connects from local port `port`: a test that must know no other flow of this client
    /// used the port picks one outside the ephemeral range.
    pub fn connect_from(port: u16, addr: SocketAddr, timeout: Duration) -> Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket
            .bind(&SocketAddr::new(unspecified(addr), port).into())
            .with_context(|| format!("binding TCP port {port}"))?;
        socket
            .connect_timeout(&addr.into(), timeout)
            .with_context(|| format!("connecting to {addr} from port {port}"))?;
        Self::from_stream(socket.into(), timeout)
    }

    fn from_stream(stream: TcpStream, timeout: Duration) -> Result<Self> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        // One small request, then wait for the answer: nothing to gain from Nagle's delay.
        stream.set_nodelay(true)?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self { stream, reader })
    }

    /// Connects from inside namespace `ns`.
    pub fn connect_in(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<Self> {
        in_netns(ns, move || Self::connect(addr, timeout))
    }

    pub fn ask(&mut self) -> Result<String> {
        self.request(b"who\n")
    }

    /// Asks for the backend's name and the client address it sees: `NAME ADDRESS`.
    pub fn ask_peer(&mut self) -> Result<String> {
        self.request(b"peer\n")
    }

    /// Asks for an answer of `size` bytes (more than one MTU); the name of the backend that
    /// sent all of it.
    pub fn ask_big(&mut self, size: usize) -> Result<String> {
        big_answer(&self.request(format!("big {size}\n").as_bytes())?, size)
    }

    fn request(&mut self, line: &[u8]) -> Result<String> {
        self.stream.write_all(line).context("sending a request")?;
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .context("reading the answer")?;
        if n == 0 {
            bail!("connection closed before an answer");
        }
        Ok(line.trim().to_owned())
    }
}

/// Runs `ask` `count` times, one after the other, in namespace `ns`: the name each answer
/// carried, or the error met.
fn ask_many(
    ns: &str,
    count: usize,
    ask: impl Fn() -> Result<String> + Send + 'static,
) -> Result<Vec<Result<String>>> {
    in_netns(ns, move || Ok((0..count).map(|_| ask()).collect()))
}

/// `count` TCP connections from namespace `ns`.
pub fn tcp_ask_many(
    ns: &str,
    addr: SocketAddr,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Result<String>>> {
    ask_many(ns, count, move || tcp_ask(addr, timeout))
}

/// `count` UDP exchanges from namespace `ns`, each from a new socket (a new flow).
pub fn udp_ask_many(
    ns: &str,
    addr: SocketAddr,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Result<String>>> {
    ask_many(ns, count, move || udp_ask(addr, timeout))
}

/// How many answers named each backend; failures are counted under `error: ...`.
pub fn tally(results: &[Result<String>]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for result in results {
        let key = match result {
            Ok(name) => name.clone(),
            Err(err) => format!("error: {err:#}"),
        };
        *out.entry(key).or_default() += 1;
    }
    out
}

/// Which nodes the answering pods of a [`tally`] run on ("n1", "n2"): a pod's name starts
/// with its node's.
pub fn nodes_of(answers: &BTreeMap<String, usize>) -> BTreeSet<String> {
    answers
        .keys()
        .map(|name| name.split('-').next().unwrap_or_default().to_owned())
        .collect()
}

/// `ip:port` as a socket address; panics on a malformed literal (tests only pass constants).
pub fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an IP address literal"), port)
}

/// GETs `/healthz` from `addr` (a health-check node port): the status code and body.
pub fn http_get(addr: SocketAddr) -> Result<(u16, String)> {
    http_get_path(addr, "/healthz").map(|r| (r.status, r.body))
}

/// GETs `path` from `addr` (in the calling thread's namespace).
pub fn http_get_path(addr: SocketAddr, path: &str) -> Result<http::Response> {
    http::get_blocking(addr, path, TIMEOUT)
}

/// POSTs the JSON `body` to `path` at `addr` (in the calling thread's namespace).
pub fn http_post_json(addr: SocketAddr, path: &str, body: &str) -> Result<http::Response> {
    http::request_blocking(
        addr,
        http::Method::POST,
        path,
        Some(body.to_owned()),
        TIMEOUT,
    )
}

/// From namespace `ns`, `n` connections to `addr`, each asking for a `size`-byte answer: who
/// answered, or why not.
pub fn ask_big_many(
    ns: &str,
    addr: SocketAddr,
    n: usize,
    size: usize,
) -> Result<Vec<Result<String>>> {
    in_netns(ns, move || {
        Ok((0..n)
            .map(|_| {
                let mut session = TcpSession::connect(addr, TIMEOUT)?;
                session.ask_big(size)
            })
            .collect())
    })
}

/// One answer of `svclb-lab-client` (see `Lab::run_client`).
#[derive(Debug)]
pub struct Reply {
    /// The backend that answered.
    pub backend: String,
    /// The client address the backend saw.
    pub seen: SocketAddr,
    /// The peer the client's socket reports.
    pub peer: SocketAddr,
    /// The client socket's own address.
    pub local: SocketAddr,
}

/// Parses one line of `svclb-lab-client`; an `ERR` line is an error.
pub fn parse_reply(line: &str) -> Result<Reply> {
    if line.starts_with("ERR") {
        bail!("{line}");
    }
    let fields: Vec<&str> = line.split('\t').collect();
    let (answer, peer, local) = match fields[..] {
        [answer, peer, local] => (answer, peer, local),
        _ => bail!("not a client line: {line:?}"),
    };
    let (backend, seen) = answer
        .split_once(' ')
        .with_context(|| format!("no peer in {answer:?}"))?;
    Ok(Reply {
        backend: backend.to_owned(),
        seen: seen.parse()?,
        peer: peer.parse()?,
        local: local.parse()?,
    })
}

/// Parses every line; the first `ERR` line is the error.
pub fn replies(lines: &[String]) -> Result<Vec<Reply>> {
    lines.iter().map(|l| parse_reply(l)).collect()
}

/// The backends that answered.
pub fn backends(replies: &[Reply]) -> BTreeSet<String> {
    replies.iter().map(|r| r.backend.clone()).collect()
}
