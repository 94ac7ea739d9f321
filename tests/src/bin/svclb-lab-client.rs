//! A lab client run as its own process, so it can be moved into a lab's cgroup (where the
//! socket hooks are) and a network namespace before it opens a socket. It asks a backend
//! `peerport` (the answer: `NAME CLIENT-ADDRESS:PORT`, as the backend saw it) and prints, per request, the
//! answer, the peer address the socket reports (`getpeername`, or for unconnected UDP the
//! datagram's source) and the socket's own address, tab-separated:
//! `n1-pod1 10.244.1.2:40000<TAB>10.96.0.10:80<TAB>10.244.1.2:40000`. A failed request
//! prints `ERR <error kind>: <error>`.
//!
//! ```text
//! svclb-lab-client tcp ADDR [COUNT]           one TCP connection per request
//! svclb-lab-client udp ADDR [COUNT]           one connected UDP socket per request
//! svclb-lab-client udp-unconnected ADDR [COUNT]   one socket, sendto/recvfrom per request
//! svclb-lab-client udp-session ADDR COUNT MS  one connected socket asking every MS ms; on
//!                                             an error, a new socket (as a DNS client would)
//! svclb-lab-client tcp-session ADDR COUNT MS  one TCP connection asking every MS ms
//! svclb-lab-client bench ADDR COUNT MS        the latency bench's round (below)
//! svclb-lab-client cps ADDR SECONDS THREADS CPU   connections per second (below)
//! svclb-lab-client bulk ADDR SECONDS CPU      one stream's throughput (below)
//! svclb-lab-client dns ADDR NAME TYPE         one DNS query over a connected UDP socket
//! svclb-lab-client dns-load ADDR NAME SEARCH THREADS COUNT SECONDS [CPU]   glibc's lookups
//! ```
//!
//! `dns-load` makes up to COUNT lookups of NAME, for at most SECONDS, over THREADS threads,
//! one at a time each, as glibc's `getaddrinfo` does by default with a resolv.conf whose
//! search list is SEARCH (comma-separated; `-`: none) and `options ndots:5`: for each name it
//! tries in turn, an A and an AAAA query sent back to back on one connected UDP socket (each
//! thread keeps its socket), then both answers, until one has records. A lookup that finds
//! none, or whose answers take over a second, fails. With CPU, it runs pinned to that CPU.
//! It prints `dns-load LOOKUPS FAILED P50-NS P99-NS MAX-NS ELAPSED-NS`.
//!
//! `resolve RESOLV-CONF NAME` (the address argument's place) resolves NAME with glibc's
//! `getaddrinfo`, reading RESOLV-CONF as its `/etc/resolv.conf` (bind-mounted over it in a
//! mount namespace of the process's own): the addresses, sorted, space-separated, or `ERR`.
//!
//! `dns` prints the reply as `RCODE FLAGS ANSWERS AUTHORITIES`: flags `aa`/`tc`/`ra` joined
//! with commas (`-` for none), the answers as `NAME TTL DATA` joined with `; `, the number of
//! authority records; a reply that is not DNS prints `NOTDNS` and its text.
//!
//! `bench` is the latency bench's measurement, as its other systems get it in-process: 10
//! unmeasured connections, then up to COUNT within MS ms of connect, one request, one answer,
//! close (a line `c NANOSECONDS` each, `f` for a failure), then requests over one connection
//! for a second (`rps REQUESTS-PER-SECOND`).
//!
//! `cps` and `bulk` are the east-west saturation bench's, against a
//! `svclb_tests::server::ConnServer`, the process pinned to CPU: THREADS threads each open a
//! connection, ask one line, read the answer and close it with a reset (SO_LINGER 0, so no
//! TIME_WAIT holds the client's ports), again and again for SECONDS (`cps CONNECTIONS FAILED
//! NANOSECONDS`); `bulk` writes to one connection for SECONDS (`bulk BYTES NANOSECONDS`).
//!
//! ```text
//! ```

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn tcp(addr: SocketAddr) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    ask_tcp(&stream)
}

fn ask_tcp(mut stream: &TcpStream) -> std::io::Result<String> {
    stream.write_all(b"peerport\n")?;
    let mut line = String::new();
    // One answer per request and nothing unasked: no read-ahead is lost between requests.
    let mut byte = [0u8; 1];
    while !line.ends_with('\n') {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        line.push(char::from(byte[0]));
    }
    Ok(format!(
        "{}\t{}\t{}",
        line.trim_end(),
        stream.peer_addr()?,
        stream.local_addr()?
    ))
}

fn unbound(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = if addr.is_ipv4() {
        UdpSocket::bind("0.0.0.0:0")?
    } else {
        UdpSocket::bind("[::]:0")?
    };
    socket.set_read_timeout(Some(TIMEOUT))?;
    Ok(socket)
}

fn ask_connected(socket: &UdpSocket) -> std::io::Result<String> {
    socket.send(b"peerport")?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf)?;
    Ok(format!(
        "{}\t{}\t{}",
        String::from_utf8_lossy(&buf[..n]).trim_end(),
        socket.peer_addr()?,
        socket.local_addr()?
    ))
}

fn udp(addr: SocketAddr) -> std::io::Result<String> {
    let socket = unbound(addr)?;
    socket.connect(addr)?;
    ask_connected(&socket)
}

fn udp_unconnected(socket: &UdpSocket, addr: SocketAddr) -> std::io::Result<String> {
    socket.send_to(b"peerport", addr)?;
    let mut buf = [0u8; 512];
    let (n, from) = socket.recv_from(&mut buf)?;
    Ok(format!(
        "{}\t{from}\t{}",
        String::from_utf8_lossy(&buf[..n]).trim_end(),
        socket.local_addr()?
    ))
}

fn bench(addr: SocketAddr, count: usize, limit: Duration) {
    use svclb_tests::client::{TcpSession, tcp_ask};
    for _ in 0..10 {
        let _ = tcp_ask(addr, TIMEOUT);
    }
    let started = Instant::now();
    for _ in 0..count {
        if started.elapsed() > limit {
            break;
        }
        let one = Instant::now();
        match tcp_ask(addr, TIMEOUT) {
            Ok(_) => println!("c {}", one.elapsed().as_nanos()),
            Err(_) => println!("f"),
        }
    }
    let Ok(mut session) = TcpSession::connect(addr, TIMEOUT) else {
        println!("rps 0");
        return;
    };
    let started = Instant::now();
    let mut done = 0u32;
    while done < 100_000 && started.elapsed() < Duration::from_secs(1) {
        if session.ask().is_err() {
            break;
        }
        done += 1;
    }
    println!("rps {}", f64::from(done) / started.elapsed().as_secs_f64());
}

/// One connection of the rate bench: connect, one line, its answer, a reset.
fn one_connection(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    let reset = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &reset)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(b"x\n")?;
    let mut answer = [0u8; 3];
    stream.read_exact(&mut answer)?;
    if &answer != b"ok\n" {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    Ok(())
}

fn cps(addr: SocketAddr, seconds: u64, threads: usize) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let (done, failed) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(move || {
                    let (mut done, mut failed) = (0u64, 0u64);
                    while Instant::now() < deadline {
                        match one_connection(addr) {
                            Ok(()) => done += 1,
                            Err(_) => failed += 1,
                        }
                    }
                    (done, failed)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or((0, 0)))
            .fold((0, 0), |(d, f), (d1, f1)| (d + d1, f + f1))
    });
    println!("cps {done} {failed} {}", started.elapsed().as_nanos());
}

fn bulk(addr: SocketAddr, seconds: u64) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.write_all(b"sink\n")?;
    let chunk = vec![b'x'; 1 << 17];
    let started = Instant::now();
    let mut bytes = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        stream.write_all(&chunk)?;
        bytes += chunk.len() as u64;
    }
    println!("bulk {bytes} {}", started.elapsed().as_nanos());
    Ok(())
}

fn udp_session(addr: SocketAddr, count: usize, every: Duration) {
    let mut socket = None;
    for _ in 0..count {
        let result = match socket.take() {
            Some(s) => Ok(s),
            None => unbound(addr).and_then(|s| s.connect(addr).map(|()| s)),
        }
        .and_then(|s| {
            let answer = ask_connected(&s)?;
            socket = Some(s);
            Ok(answer)
        });
        print(result);
        let _ = std::io::stdout().flush();
        std::thread::sleep(every);
    }
}

fn print(result: std::io::Result<String>) {
    match result {
        Ok(line) => println!("{line}"),
        Err(err) => println!("ERR {:?}: {err}", err.kind()),
    }
}

/// One DNS query for `name`/`qtype` to `addr`, as a stub resolver sends it (a connected UDP
/// socket, recursion desired); the reply as one line (see the module docs).
fn dns(addr: SocketAddr, name: &str, qtype: &str) -> std::io::Result<String> {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RecordType},
    };
    use std::str::FromStr as _;
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let name = Name::from_ascii(name).map_err(|e| invalid(e.to_string()))?;
    let qtype = RecordType::from_str(qtype).map_err(|e| invalid(e.to_string()))?;
    let mut query = Message::new();
    query
        .set_id(std::process::id() as u16)
        .set_recursion_desired(true)
        .add_query(Query::query(name, qtype));
    let socket = unbound(addr)?;
    socket.connect(addr)?;
    socket.send(&query.to_vec().map_err(|e| invalid(e.to_string()))?)?;
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf)?;
    let Ok(reply) = Message::from_vec(&buf[..n]) else {
        return Ok(format!(
            "NOTDNS {}",
            String::from_utf8_lossy(&buf[..n]).trim()
        ));
    };
    let flags: Vec<&str> = [
        (reply.authoritative(), "aa"),
        (reply.truncated(), "tc"),
        (reply.recursion_available(), "ra"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect();
    let answers: Vec<String> = reply
        .answers()
        .iter()
        .map(|rr| format!("{} {} {}", rr.name(), rr.ttl(), rr.data()))
        .collect();
    Ok(format!(
        "{:?}\t{}\t{}\t{}",
        reply.response_code(),
        if flags.is_empty() {
            "-".into()
        } else {
            flags.join(",")
        },
        answers.join("; "),
        reply.name_servers().len()
    ))
}

/// The names a resolver with search list `search` and `ndots:5` (kubelet's) tries for
/// `name`, in order.
fn candidates(name: &str, search: &[&str]) -> Vec<String> {
    if name.ends_with('.') {
        return vec![name.to_owned()];
    }
    let searched = search.iter().map(|suffix| format!("{name}.{suffix}."));
    if name.matches('.').count() >= 5 {
        std::iter::once(format!("{name}."))
            .chain(searched)
            .collect()
    } else {
        searched
            .chain(std::iter::once(format!("{name}.")))
            .collect()
    }
}

/// One lookup as glibc's `getaddrinfo` makes it by default, on connected UDP socket `socket`:
/// for each name in turn, an A and an AAAA query sent back to back, then both answers, until
/// one has records. Whether one had; an error when an answer takes over the socket's timeout.
fn lookup(
    socket: &UdpSocket,
    names: &[hickory_proto::rr::Name],
    next_id: &mut u16,
) -> std::io::Result<bool> {
    use hickory_proto::{
        op::{Message, Query},
        rr::RecordType,
    };
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let mut buf = [0u8; 1500];
    for name in names {
        let mut ids = Vec::new();
        for qtype in [RecordType::A, RecordType::AAAA] {
            *next_id = next_id.wrapping_add(1);
            let mut query = Message::new();
            query
                .set_id(*next_id)
                .set_recursion_desired(true)
                .add_query(Query::query(name.clone(), qtype));
            socket.send(&query.to_vec().map_err(|e| invalid(e.to_string()))?)?;
            ids.push(*next_id);
        }
        let mut found = false;
        while !ids.is_empty() {
            let n = socket.recv(&mut buf)?;
            if n >= 12 {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                if ids.contains(&id) {
                    ids.retain(|want| *want != id);
                    // NOERROR with answers.
                    found |= buf[3] & 0x0f == 0 && buf[6..8] != [0, 0];
                }
            }
        }
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One thread's share of `dns-load`: the lookups' durations in ns, and how many failed.
fn dns_load_thread(
    addr: SocketAddr,
    names: &[hickory_proto::rr::Name],
    count: usize,
    until: Instant,
) -> std::io::Result<(Vec<u64>, u64)> {
    let socket = unbound(addr)?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    let (mut took, mut failed) = (Vec::with_capacity(count.min(1 << 20)), 0);
    let mut next_id = 0;
    while took.len() + (failed as usize) < count && Instant::now() < until {
        let started = Instant::now();
        match lookup(&socket, names, &mut next_id) {
            Ok(true) => took.push(started.elapsed().as_nanos() as u64),
            Ok(false) | Err(_) => failed += 1,
        }
    }
    Ok((took, failed))
}

/// `dns-load`: see the module docs.
fn dns_load(
    addr: SocketAddr,
    name: &str,
    search: &[&str],
    threads: usize,
    count: usize,
    seconds: u64,
) -> Result<(), String> {
    let names = candidates(name, search)
        .iter()
        .map(|n| hickory_proto::rr::Name::from_ascii(n).map_err(|e| format!("{n}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let per_thread = count.div_ceil(threads.max(1));
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let results: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| dns_load_thread(addr, &names, per_thread, until)))
            .collect();
        workers.into_iter().map(|w| w.join()).collect()
    });
    let elapsed = started.elapsed().as_nanos();
    let (mut took, mut failed) = (Vec::new(), 0);
    for result in results {
        match result {
            Ok(Ok((t, f))) => {
                took.extend(t);
                failed += f;
            }
            _ => failed += per_thread as u64,
        }
    }
    took.sort_unstable();
    let at =
        |q: f64| took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1)));
    let (p50, p99, max) = (at(0.5), at(0.99), took.last());
    let show = |v: Option<&u64>| v.copied().unwrap_or(0);
    println!(
        "dns-load {} {failed} {} {} {} {elapsed}",
        took.len(),
        show(p50),
        show(p99),
        show(max)
    );
    Ok(())
}

/// `resolve`: NAME through glibc with `resolv_conf` as its resolver configuration.
fn resolve(resolv_conf: &str, name: &str) -> std::io::Result<String> {
    use nix::{
        mount::{MsFlags, mount},
        sched::{CloneFlags, unshare},
    };
    use std::net::ToSocketAddrs as _;
    let io = |e: nix::Error| std::io::Error::from_raw_os_error(e as i32);
    unshare(CloneFlags::CLONE_NEWNS).map_err(io)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(io)?;
    mount(
        Some(resolv_conf),
        "/etc/resolv.conf",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(io)?;
    let mut addrs: Vec<String> = (name, 0)
        .to_socket_addrs()?
        .map(|a| a.ip().to_string())
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs.join(" "))
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let (Some("resolve"), Some(conf), Some(name)) =
        (args.first().map(String::as_str), args.get(1), args.get(2))
    {
        print(resolve(conf, name));
        return Ok(());
    }
    let usage = "usage: svclb-lab-client tcp|udp|udp-unconnected|udp-session|tcp-session|bench|cps|bulk ADDR [COUNT [MS [CPU]]], or dns ADDR NAME TYPE, or dns-load ADDR NAME SEARCH THREADS COUNT SECONDS [CPU], or resolve RESOLV-CONF NAME";
    let (mode, addr) = match (args.first(), args.get(1)) {
        (Some(mode), Some(addr)) => (mode.as_str(), addr),
        _ => return Err(usage.into()),
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    if mode == "dns" {
        let (Some(name), Some(qtype)) = (args.get(2), args.get(3)) else {
            return Err(usage.into());
        };
        print(dns(addr, name, qtype));
        return Ok(());
    }
    if mode == "dns-load" {
        let parse = |i: usize| args.get(i).and_then(|v| v.parse::<usize>().ok());
        let (Some(name), Some(search), Some(threads), Some(count), Some(seconds)) =
            (args.get(2), args.get(3), parse(4), parse(5), parse(6))
        else {
            return Err(usage.into());
        };
        let search: Vec<&str> = search
            .split(',')
            .filter(|s| !s.is_empty() && *s != "-")
            .collect();
        if let Some(cpu) = parse(7) {
            svclb_tests::cpu::pin_self(cpu).map_err(|e| e.to_string())?;
        }
        // Bounded: at most 64 threads, 1,000,000 lookups and 60 s, each answer at most 1 s.
        return dns_load(
            addr,
            name,
            &search,
            threads.min(64),
            count.min(1_000_000),
            (seconds as u64).min(60),
        );
    }
    let count: usize = match args.get(2) {
        Some(n) => n.parse().map_err(|e| format!("COUNT {n}: {e}"))?,
        None => 1,
    };
    // Bounded: at most 10,000 requests.
    let count = count.min(10_000);
    let ms = |default: u64| args.get(3).and_then(|m| m.parse().ok()).unwrap_or(default);
    match mode {
        "tcp" => (0..count).for_each(|_| print(tcp(addr))),
        "udp" => (0..count).for_each(|_| print(udp(addr))),
        "udp-unconnected" => {
            let socket = unbound(addr).map_err(|e| e.to_string())?;
            (0..count).for_each(|_| print(udp_unconnected(&socket, addr)));
        }
        "tcp-session" => {
            let stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(Some(TIMEOUT))
                .map_err(|e| e.to_string())?;
            for _ in 0..count {
                print(ask_tcp(&stream));
                std::io::stdout().flush().map_err(|e| e.to_string())?;
                std::thread::sleep(Duration::from_millis(ms(100)));
            }
        }
        "udp-session" => udp_session(addr, count, Duration::from_millis(ms(100))),
        "bench" => bench(addr, count, Duration::from_millis(ms(20_000))),
        // Bounded: at most 60 s, 256 threads.
        "cps" => {
            let cpu: usize = args.get(4).and_then(|c| c.parse().ok()).ok_or(usage)?;
            svclb_tests::cpu::pin_self(cpu).map_err(|e| e.to_string())?;
            cps(addr, (count as u64).min(60), ms(64).min(256) as usize);
        }
        "bulk" => {
            let cpu: usize = args.get(3).and_then(|c| c.parse().ok()).ok_or(usage)?;
            svclb_tests::cpu::pin_self(cpu).map_err(|e| e.to_string())?;
            bulk(addr, (count as u64).min(60)).map_err(|e| e.to_string())?;
        }
        _ => return Err(usage.into()),
    }
    Ok(())
}
