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
//! ```
//!
//! `bench` is the latency bench's measurement, as its other systems get it in-process: 10
//! unmeasured connections, then up to COUNT within MS ms of connect, one request, one answer,
//! close (a line `c NANOSECONDS` each, `f` for a failure), then requests over one connection
//! for a second (`rps REQUESTS-PER-SECOND`).
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

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: svclb-lab-client tcp|udp|udp-unconnected|udp-session|tcp-session|bench ADDR [COUNT [MS]]";
    let (mode, addr) = match (args.first(), args.get(1)) {
        (Some(mode), Some(addr)) => (mode.as_str(), addr),
        _ => return Err(usage.into()),
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
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
        _ => return Err(usage.into()),
    }
    Ok(())
}
