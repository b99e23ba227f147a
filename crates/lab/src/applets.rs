//! Small servers that answer like the images the seed scenarios use, for the lab's stand-in
//! images (a real cluster pulls the real images). Standard library only, one thread per
//! connection, `Connection: close`.
//!
//! * [`whoami_main`]: like `traefik/whoami` on :80 (`--port`, `WHOAMI_PORT_NUMBER`):
//!   `Hostname: h`, one `IP: a` per interface address, `RemoteAddr: ip:port`, then the request
//!   line and headers.
//! * [`echo_server_main`]: like `jmalloc/echo-server` on :8080 (`PORT`):
//!   `Request served by h`, a blank line, `HTTP/1.1 GET /`, a blank line, the headers, the body.
//! * [`pause_main`]: the sandbox's pid 1: reaps children, exits on SIGTERM/SIGINT.
//!
//! The `dari-applet` binary of this crate dispatches on its file name or first argument
//! (`dari-applet whoami`), so one file in an image serves all three.
//!
//! ```text
//! curl -s POD:80/        # Hostname: whoami-xyz\nIP: 127.0.0.1\nIP: 10.244.1.5\nRemoteAddr: 10.244.2.3:41234\nGET / HTTP/1.1\n...
//! curl -s POD:8080/x     # Request served by echo-abc\n\nHTTP/1.1 GET /x\n\nHost: ...
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// A parsed HTTP/1 request head plus body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Request target.
    pub uri: String,
    /// `HTTP/1.1`.
    pub proto: String,
    /// Headers in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

/// Reads one request; `Ok(None)` on a clean EOF before any byte.
pub fn read_request(r: &mut impl BufRead) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let method = parts.next().unwrap_or_default().to_string();
    let uri = parts.next().unwrap_or_default().to_string();
    let proto = parts.next().unwrap_or("HTTP/1.0").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        if headers.len() > 200 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "too many headers"));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(16 << 20);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Some(Request { method, uri, proto, headers, body }))
}

/// The host name (`/proc/sys/kernel/hostname`, then `$HOSTNAME`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Every address of every interface, IPv4 first (whoami's `IP:` lines).
pub fn interface_ips() -> Vec<String> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(addr) = a.address else { continue };
            if let Some(s) = addr.as_sockaddr_in() {
                v4.push(s.ip().to_string());
            } else if let Some(s) = addr.as_sockaddr_in6() {
                v6.push(s.ip().to_string());
            }
        }
    }
    v4.extend(v6);
    v4
}

/// The whoami body for `req` from `remote` (pure: host and IPs are passed in).
pub fn whoami_body(host: &str, ips: &[String], remote: SocketAddr, req: &Request) -> String {
    let mut o = format!("Hostname: {host}\n");
    for ip in ips {
        o.push_str(&format!("IP: {ip}\n"));
    }
    o.push_str(&format!("RemoteAddr: {remote}\n"));
    o.push_str(&format!("{} {} {}\n", req.method, req.uri, req.proto));
    for (k, v) in &req.headers {
        o.push_str(&format!("{k}: {v}\n"));
    }
    o.push('\n');
    o
}

/// The echo-server body for `req` (pure).
pub fn echo_body(host: &str, req: &Request) -> Vec<u8> {
    let mut o = format!("Request served by {host}\n\n{} {} {}\n\n", req.proto, req.method, req.uri);
    let mut hs = req.headers.clone();
    hs.sort();
    for (k, v) in hs {
        o.push_str(&format!("{k}: {v}\n"));
    }
    let mut b = o.into_bytes();
    if !req.body.is_empty() {
        b.push(b'\n');
        b.extend_from_slice(&req.body);
    }
    b
}

fn respond(s: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}

/// Serves `handler` on `listener` forever, one thread per connection.
pub fn serve(listener: TcpListener, handler: fn(SocketAddr, &Request) -> Vec<u8>) -> std::io::Result<()> {
    loop {
        let (mut s, peer) = listener.accept()?;
        let peer = unmap(peer);
        std::thread::spawn(move || {
            let Ok(r) = s.try_clone() else { return };
            let mut br = BufReader::new(r);
            if let Ok(Some(req)) = read_request(&mut br) {
                let body = handler(peer, &req);
                let _ = respond(&mut s, &body);
            }
        });
    }
}

/// `[::ffff:a.b.c.d]:p` (an IPv4 client of a dual-stack socket) → `a.b.c.d:p`, as Go prints it.
pub fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => a,
        },
        v4 => v4,
    }
}

fn whoami_handler(peer: SocketAddr, req: &Request) -> Vec<u8> {
    whoami_body(&hostname(), &interface_ips(), peer, req).into_bytes()
}

fn echo_handler(_peer: SocketAddr, req: &Request) -> Vec<u8> {
    echo_body(&hostname(), req)
}

fn listen(port: u16) -> std::io::Result<TcpListener> {
    // Dual-stack when the pod has IPv6, plain IPv4 otherwise.
    TcpListener::bind(("::", port)).or_else(|_| TcpListener::bind(("0.0.0.0", port)))
}

fn port_from(args: &[String], env: &str, default: u16) -> u16 {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--port" || a == "-port" {
            if let Some(p) = it.next().and_then(|p| p.parse().ok()) {
                return p;
            }
        } else if let Some(p) = a.strip_prefix("--port=").and_then(|p| p.parse().ok()) {
            return p;
        }
    }
    std::env::var(env).ok().and_then(|p| p.parse().ok()).unwrap_or(default)
}

/// `whoami [--port N]` (default 80, or `WHOAMI_PORT_NUMBER`). Returns the exit code.
pub fn whoami_main(args: &[String]) -> i32 {
    let port = port_from(args, "WHOAMI_PORT_NUMBER", 80);
    run_server("whoami", port, whoami_handler)
}

/// `echo-server` (port from `PORT`, default 8080). Returns the exit code.
pub fn echo_server_main(args: &[String]) -> i32 {
    let port = port_from(args, "PORT", 8080);
    run_server("echo-server", port, echo_handler)
}

fn run_server(name: &str, port: u16, h: fn(SocketAddr, &Request) -> Vec<u8>) -> i32 {
    match listen(port) {
        Ok(l) => {
            eprintln!("{name}: listening on :{port} (dari lab stand-in)");
            if let Err(e) = serve(l, h) {
                eprintln!("{name}: {e}");
            }
            1
        }
        Err(e) => {
            eprintln!("{name}: listen on :{port}: {e}");
            1
        }
    }
}

/// The sandbox process: blocks SIGTERM/SIGINT/SIGCHLD and waits for them; reaps children,
/// exits 0 on TERM/INT.
pub fn pause_main() -> i32 {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGCHLD);
    if set.thread_block().is_err() {
        return 1;
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                while let Ok(st) = nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                    if st == nix::sys::wait::WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            Ok(_) => return 0,
            Err(_) => return 1,
        }
    }
}

/// Multi-call entry: the applet is the file name of `argv[0]` (`whoami`, `echo-server`, `pause`)
/// or else `argv[1]`. Returns the exit code.
pub fn applet_main(argv: &[String]) -> i32 {
    let base = argv.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_string()).unwrap_or_default();
    let (name, rest) = match base.as_str() {
        "whoami" | "echo-server" | "pause" => (base.clone(), argv.get(1..).unwrap_or(&[]).to_vec()),
        _ => (argv.get(1).cloned().unwrap_or_default(), argv.get(2..).unwrap_or(&[]).to_vec()),
    };
    match name.as_str() {
        "whoami" => whoami_main(&rest),
        "echo-server" => echo_server_main(&rest),
        "pause" => pause_main(),
        other => {
            eprintln!("unknown applet {other:?}: use whoami, echo-server or pause");
            2
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Read;

    fn req() -> Request {
        let raw = b"GET /x?y=1 HTTP/1.1\r\nHost: a.com\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
        read_request(&mut &raw[..]).unwrap().unwrap()
    }

    #[test]
    fn whoami_format() {
        let ips = vec!["127.0.0.1".to_string(), "10.244.1.5".to_string()];
        let b = whoami_body("webpod1", &ips, "10.244.2.3:41234".parse().unwrap(), &req());
        assert_eq!(
            b,
            "Hostname: webpod1\nIP: 127.0.0.1\nIP: 10.244.1.5\nRemoteAddr: 10.244.2.3:41234\nGET /x?y=1 HTTP/1.1\nHost: a.com\nUser-Agent: curl/7.88.1\nAccept: */*\n\n"
        );
    }

    #[test]
    fn echo_format() {
        let b = String::from_utf8(echo_body("nginx1-deployment-1", &req())).unwrap();
        assert_eq!(b, "Request served by nginx1-deployment-1\n\nHTTP/1.1 GET /x?y=1\n\nAccept: */*\nHost: a.com\nUser-Agent: curl/7.88.1\n");
    }

    #[test]
    fn mapped_addresses_print_as_ipv4() {
        assert_eq!(unmap("[::ffff:172.31.0.11]:33324".parse().unwrap()).to_string(), "172.31.0.11:33324");
        assert_eq!(unmap("[fe80::1]:80".parse().unwrap()).to_string(), "[fe80::1]:80");
    }

    #[test]
    fn body_is_read() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcEXTRA";
        assert_eq!(read_request(&mut &raw[..]).unwrap().unwrap().body, b"abc");
        assert_eq!(read_request(&mut &b""[..]).unwrap(), None);
    }

    #[test]
    fn serves_over_tcp() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || serve(l, whoami_handler));
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("IP: 127.0.0.1\n"), "{out}");
        assert!(out.contains(&format!("RemoteAddr: {}\n", s.local_addr().unwrap())), "{out}");
    }
}
