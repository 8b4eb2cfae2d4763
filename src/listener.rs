//! Listening sockets: bound with socket2 (SO_REUSEADDR, IPV6_V6ONLY, backlog), non-blocking and
//! close-on-exec, ready to be registered with mio.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};

/// Binds and listens on `address`. The socket is non-blocking; accepted sockets are not.
pub fn bind_tcp(address: SocketAddr, backlog: u32) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&address.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// The address a socket is bound to, as an IP socket address.
pub fn local_address(socket: &Socket) -> io::Result<SocketAddr> {
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))
}
