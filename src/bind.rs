//! Listening sockets: bound with socket2 (SO_REUSEADDR, IPV6_V6ONLY, backlog; UNIX paths with
//! their mode, a stale socket file replaced), non-blocking and close-on-exec, ready for mio.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use socket2::{Domain, SockAddr, Socket, Type};

// Every socket is made non-blocking by socket(2) itself (SOCK_NONBLOCK), and close-on-exec
// (socket2 always adds SOCK_CLOEXEC): no fcntl calls after, two syscalls less per listener.

fn ip_socket(address: SocketAddr, kind: Type) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), kind.nonblocking(), None)?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&address.into())?;
    Ok(socket)
}

fn listen(socket: Socket, backlog: u32) -> io::Result<Socket> {
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket)
}

/// A TCP listener. The socket is non-blocking; sockets accepted from it are not.
pub fn bind_tcp(address: SocketAddr, backlog: u32) -> io::Result<Socket> {
    listen(ip_socket(address, Type::STREAM)?, backlog)
}

/// A UDP socket, non-blocking.
pub fn bind_udp(address: SocketAddr) -> io::Result<Socket> {
    ip_socket(address, Type::DGRAM)
}

/// A UNIX stream listener at `path` with permissions `mode`. A socket file nobody listens on
/// any more is replaced; one in use, or a file of another kind, is an error.
pub fn bind_unix(path: &Path, mode: u32, backlog: u32) -> io::Result<Socket> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        // Non-blocking: a listener with a full backlog would otherwise hold the whole loop.
        // Only "refused" proves nobody listens any more.
        let probe = Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None)?;
        match probe.connect(&SockAddr::unix(path)?) {
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path)?;
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process listens on this socket",
                ));
            }
        }
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None)?;
    socket.bind(&SockAddr::unix(path)?)?;
    // Before listen(2), so no client ever connects through wider permissions.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    listen(socket, backlog)
}

/// The address a socket is bound to, as an IP socket address.
pub fn local_address(socket: &Socket) -> io::Result<SocketAddr> {
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))
}
