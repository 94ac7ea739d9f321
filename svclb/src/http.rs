//! The few lines of HTTP/1.1 the agent's endpoints need: read one request's path, write one
//! response, close.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// A client that has not sent its request headers by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The path of the request on `stream`, once its headers are in; `None` if the client sends
/// nothing usable in time.
pub async fn read_path(stream: &mut TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
        match tokio::time::timeout(REQUEST_TIMEOUT, stream.read(&mut buf[n..])).await {
            Ok(Ok(read)) if read > 0 => n += read,
            _ => return None,
        }
    }
    let request = String::from_utf8_lossy(&buf[..n]);
    Some(request.split_whitespace().nth(1).unwrap_or("/").to_owned())
}

/// Writes a complete response and lets the connection close.
pub async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await
}
