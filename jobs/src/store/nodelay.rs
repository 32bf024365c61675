//! `TCP_NODELAY` on the PostgreSQL pool's sockets.
//!
//! sqlx 0.9.0 stopped setting it (transact-rs/sqlx#4335; the fix, #4336, is merged but not
//! released). Without it, a statement larger than a new socket's send buffer (16 KiB on
//! Linux until it grows) leaves in two writes: the kernel holds the second until
//! PostgreSQL acknowledges the first, and PostgreSQL delays that ACK by 40 ms because it
//! is still waiting for the rest of the message. The ledger's multi-row statements (the
//! plan's INSERTs, a batch's outcome UPDATE) are that size: the plan's 250-row INSERTs took
//! 56 ms each as the worker saw them against 1.4 ms inside PostgreSQL.
//!
//! sqlx gives no handle on its socket, so after each new connection this sets the option
//! on every socket of this process connected to the database server's address; setting it
//! on one that has it already changes nothing. Linux only (it reads `/proc/self/fd`);
//! elsewhere it does nothing.

use std::net::SocketAddr;

/// Sets `TCP_NODELAY` on this process's TCP sockets connected to `host:port`; returns how
/// many it set.
pub(super) async fn set_on_sockets_to(host: &str, port: u16) -> usize {
    if host.starts_with('/') {
        // A Unix socket: no Nagle there.
        return 0;
    }
    let peers: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => addrs.collect(),
        Err(_) => return 0,
    };
    set_on_sockets_connected_to(&peers)
}

#[cfg(target_os = "linux")]
fn set_on_sockets_connected_to(peers: &[SocketAddr]) -> usize {
    descriptors()
        .filter(|fd| {
            with_socket(*fd, |socket| {
                let connected = socket
                    .peer_addr()
                    .ok()
                    .and_then(|addr| addr.as_socket())
                    .is_some_and(|peer| peers.contains(&peer));
                connected && socket.set_tcp_nodelay(true).is_ok()
            })
        })
        .count()
}

#[cfg(not(target_os = "linux"))]
fn set_on_sockets_connected_to(_peers: &[SocketAddr]) -> usize {
    0
}

/// This process's open file descriptors.
#[cfg(target_os = "linux")]
fn descriptors() -> impl Iterator<Item = std::os::fd::RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// Whether this process's TCP socket bound to local port `port` has `TCP_NODELAY`; None
/// when there is no such socket.
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn nodelay_of_local_port(port: u16) -> Option<bool> {
    descriptors()
        .filter(|fd| {
            with_socket(*fd, |socket| {
                socket
                    .local_addr()
                    .ok()
                    .and_then(|addr| addr.as_socket())
                    .is_some_and(|local| local.port() == port)
            })
        })
        .last()
        .map(|fd| with_socket(fd, |socket| socket.tcp_nodelay().unwrap_or(false)))
}

/// Runs `f` on `fd` borrowed as a socket.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // borrowing a raw descriptor; see the SAFETY note
fn with_socket(fd: std::os::fd::RawFd, f: impl FnOnce(&socket2::SockRef<'_>) -> bool) -> bool {
    // SAFETY: the descriptor is only borrowed for the few system calls `f` makes; it is
    // never closed or kept here. If another task closes it meanwhile, the calls fail with
    // EBADF, or act on whatever reused the number: a socket option call on anything but a
    // socket fails with ENOTSOCK, and `f` only changes TCP_NODELAY on a socket connected to
    // the database server, which is harmless whoever owns it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    f(&socket2::SockRef::from(&borrowed))
}
