//! Backends: answer every request with the pod's name.
//!
//! TCP: a line protocol (each line gets `NAME\n`, so one connection can ask many times; the
//! line `peer` gets `NAME PEER-ADDRESS\n`, the client address the pod sees, `peerport` the
//! same with the port, `NAME ADDRESS:PORT\n`; `big N` gets
//! `NAME ` and N bytes of `x` on one line, an answer larger than any MTU) or, when the first
//! line is an HTTP request, one HTTP response whose body is `NAME\n` (for curl).
//! UDP: every datagram gets `NAME\n` (`peer` and `peerport` as over TCP).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::netns::in_netns;

/// How often the serving threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// A connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(30);

/// Servers of one pod; they stop when this is dropped.
pub struct Backend {
    _serving: Serving,
}

/// Serving threads and the flag that stops them: dropped, it stops and joins them.
struct Serving {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            // A panicked server thread has nothing left to clean up.
            let _ = thread.join();
        }
    }
}

impl Backend {
    /// Starts TCP and UDP servers on `port` of every address in pod namespace `ns` (of both
    /// families with `dual_stack`: one socket each, IPv4 peers seen as mapped addresses).
    pub fn start(ns: &str, name: &str, port: u16, dual_stack: bool) -> Result<Self> {
        let addr = if dual_stack {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))
        } else {
            SocketAddr::from(([0, 0, 0, 0], port))
        };
        let (tcp, udp) = in_netns(ns, move || {
            let tcp = TcpListener::bind(addr).context("binding TCP")?;
            let udp = UdpSocket::bind(addr).context("binding UDP")?;
            Ok((tcp, udp))
        })
        .with_context(|| format!("starting the backend of pod {name}"))?;
        tcp.set_nonblocking(true)?;
        udp.set_read_timeout(Some(POLL))?;

        let stop = Arc::new(AtomicBool::new(false));
        let reply = Arc::new(format!("{name}\n"));
        let threads = vec![
            {
                let (stop, reply) = (stop.clone(), reply.clone());
                thread::spawn(move || serve_tcp(&tcp, &stop, &reply))
            },
            {
                let (stop, reply) = (stop.clone(), reply.clone());
                thread::spawn(move || serve_udp(&udp, &stop, &reply))
            },
        ];
        Ok(Self {
            _serving: Serving { stop, threads },
        })
    }
}

/// Waits up to `timeout` for `fd` to be readable (a connection to accept).
fn readable(fd: std::os::fd::RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) > 0 }
}

fn serve_tcp(listener: &TcpListener, stop: &Arc<AtomicBool>, reply: &Arc<String>) {
    use std::os::fd::AsRawFd as _;
    while !stop.load(Ordering::Relaxed) {
        // Accept as soon as a connection arrives (the latency bench times this server), and
        // look at the stop flag at least every POLL.
        if !readable(listener.as_raw_fd(), POLL) {
            continue;
        }
        if let Ok((stream, peer)) = listener.accept() {
            let (stop, reply) = (stop.clone(), reply.clone());
            thread::spawn(move || {
                // A client that goes away mid-answer is not the server's problem.
                let _ = serve_connection(stream, peer, &stop, &reply);
            });
        }
    }
}

/// Largest `big` answer served.
const BIG_MAX: usize = 1 << 20;

/// The answer to `request`: the name, for `peer` the name and the client's address, for
/// `big N` the name and N bytes.
/// The address the stub DNS upstream gives every name outside the cluster.
pub const STUB_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 53);

/// A datagram that is a DNS query gets a stub upstream's answer, as a recursive server
/// would give it (RA set, AA clear): NXDOMAIN under `cluster.local` (the cluster's names
/// are not its to know), [`STUB_ADDRESS`] for an A query of any other name, NODATA for other
/// types. `None` for anything else.
fn dns_stub(request: &[u8]) -> Option<Vec<u8>> {
    use hickory_proto::{
        op::{Message, MessageType, OpCode, ResponseCode},
        rr::{Name, RData, Record, RecordType, rdata::A},
    };
    let query = Message::from_vec(request).ok()?;
    if query.message_type() != MessageType::Query || query.op_code() != OpCode::Query {
        return None;
    }
    let [question] = query.queries() else {
        return None;
    };
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_query(question.clone());
    let cluster = Name::from_ascii("cluster.local.").ok()?;
    if cluster.zone_of(question.name()) {
        reply.set_response_code(ResponseCode::NXDomain);
    } else if question.query_type() == RecordType::A {
        reply.add_answer(Record::from_rdata(
            question.name().clone(),
            30,
            RData::A(A(STUB_ADDRESS)),
        ));
    }
    reply.to_vec().ok()
}

fn answer(request: &[u8], reply: &str, peer: SocketAddr) -> String {
    // The first line asks; a UDP request may carry filler after it (to be fragmented).
    let request = request
        .split(|b| *b == b'\n')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let big = request
        .strip_prefix(b"big ")
        .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok());
    if request == b"peer" {
        // An IPv4 peer of a dual-stack socket shows as ::ffff:a.b.c.d; answered as a.b.c.d.
        format!("{} {}\n", reply.trim_end(), peer.ip().to_canonical())
    } else if request == b"peerport" {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        format!("{} {peer}\n", reply.trim_end())
    } else if let Some(n) = big {
        format!("{} {}\n", reply.trim_end(), "x".repeat(n.min(BIG_MAX)))
    } else {
        reply.to_owned()
    }
}

fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    stop: &AtomicBool,
    reply: &str,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut idle = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) && idle < IDLE {
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) if line.ends_with('\n') => {
                idle = Duration::ZERO;
                if line.starts_with("GET ") || line.starts_with("HEAD ") {
                    return answer_http(&mut reader, &mut writer, reply);
                }
                writer.write_all(answer(line.as_bytes(), reply, peer).as_bytes())?;
                line.clear();
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                idle += POLL;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn answer_http(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    body: &str,
) -> std::io::Result<()> {
    let mut header = String::new();
    loop {
        header.clear();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    writer.write_all(response.as_bytes())
}

fn serve_udp(socket: &UdpSocket, stop: &AtomicBool, reply: &str) {
    // Room for the largest datagram (fragmented ones included).
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let answer =
                dns_stub(&buf[..n]).unwrap_or_else(|| answer(&buf[..n], reply, peer).into_bytes());
            // A lost answer is the client's timeout to handle, as with any UDP service.
            let _ = socket.send_to(&answer, peer);
        }
    }
}

/// A server for connection-rate and bulk benchmarks: `threads` threads pinned to one CPU,
/// each accepting one connection at a time and serving it to the end, so no thread is made
/// per connection (that would cost more than what is measured). A connection's first line is
/// answered with `ok\n`, and so is every later one, until the client closes; a first line
/// `sink` makes it read and discard everything until the client closes.
pub struct ConnServer {
    _serving: Serving,
}

impl ConnServer {
    pub fn start(ns: &str, port: u16, threads: usize, cpu: usize) -> Result<Self> {
        let listener = in_netns(ns, move || {
            let listener =
                TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).context("binding TCP")?;
            Ok(listener)
        })
        .with_context(|| format!("starting the connection server in {ns}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let (listener, stop) = (listener.try_clone()?, stop.clone());
                Ok(thread::spawn(move || {
                    if crate::cpu::pin_self(cpu).is_ok() {
                        serve_conns(&listener, &stop);
                    }
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            _serving: Serving { stop, threads },
        })
    }
}

fn serve_conns(listener: &TcpListener, stop: &AtomicBool) {
    use std::os::fd::AsRawFd as _;
    while !stop.load(Ordering::Relaxed) {
        if !readable(listener.as_raw_fd(), POLL) {
            continue;
        }
        // Another thread may have taken it: WouldBlock.
        if let Ok((stream, _)) = listener.accept() {
            // A client that resets its connection (as the rate bench's do) ends it.
            let _ = serve_conn(stream);
        }
    }
}

fn serve_conn(stream: TcpStream) -> std::io::Result<()> {
    use std::io::Read as _;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IDLE))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(());
    }
    if line.trim_end() == "sink" {
        let mut buf = vec![0u8; 1 << 17];
        while reader.read(&mut buf)? > 0 {}
        return Ok(());
    }
    loop {
        writer.write_all(b"ok\n")?;
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
    }
}
