//! `resolve NAME`: NAME's addresses through the C library's getaddrinfo, sorted, on one line.
//! The DNS lab builds it for the musl target (`svclb_tests::musl`), so that it is musl's stub
//! resolver that reads /etc/resolv.conf and asks: A and AAAA in parallel from one socket, the
//! search list tried in order.

use std::net::ToSocketAddrs as _;

fn main() {
    let Some(name) = std::env::args().nth(1) else {
        eprintln!("usage: resolve NAME");
        std::process::exit(2);
    };
    match (name.as_str(), 0).to_socket_addrs() {
        Ok(addrs) => {
            let mut addrs: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            addrs.sort();
            addrs.dedup();
            println!("{}", addrs.join(" "));
        }
        Err(err) => {
            eprintln!("{name}: {err}");
            std::process::exit(1);
        }
    }
}
