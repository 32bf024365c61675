//! The `smtp` provider: lettre's SMTP client over connections this module opens and pools,
//! with no TLS, STARTTLS or implicit TLS, and optional credentials. A 5xx answer to a
//! message fails its recipient; 4xx answers, network errors, timeouts and a relay that
//! refuses the session itself (greeting, STARTTLS, login) are retried.
//!
//! The connections are opened here rather than by lettre's pooled transport so that they
//! can set `TCP_NODELAY`. lettre writes a message's body and its `.` terminator as two
//! writes; with Nagle's algorithm on, the kernel holds the 5-byte terminator until the
//! relay acknowledges the body, and the relay delays that ACK (40 ms on Linux) because it
//! is waiting for the rest of the message. Every message paid those 40 ms, which capped
//! each connection at about 22 messages/s even on loopback. lettre fixed this upstream
//! (lettre/lettre#1159) after its 0.11.23 release, the one this crate builds against.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
#[allow(deprecated)] // see `ImplicitTls`
use lettre::transport::smtp::client::AsyncNetworkStream;
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::{Outgoing, ProviderError};

/// A pooled connection idle for longer than this is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How the connection to the relay is secured (`SMTP_TLS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text (a relay on loopback or a private network only).
    None,
    /// Upgrade with STARTTLS; refuse to send if the server does not offer it.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// SMTP settings.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// `SMTP_HOST`.
    pub host: String,
    /// `SMTP_PORT`.
    pub port: u16,
    /// `SMTP_USERNAME`.
    pub username: Option<String>,
    /// `SMTP_PASSWORD`.
    pub password: Option<String>,
    /// `SMTP_TLS`.
    pub tls: SmtpTls,
    /// Pooled connections kept open.
    pub pool_size: u32,
    /// Bounds connecting (TCP, greeting, TLS, login) and each message's exchange.
    pub timeout: Duration,
}

/// Sends through an SMTP relay over pooled connections.
#[derive(Clone)]
pub struct SmtpProvider {
    pool: Arc<Pool>,
}

/// The connections to one relay and what it takes to open one.
struct Pool {
    host: String,
    port: u16,
    /// `Wrapper` for implicit TLS, `Required` for STARTTLS, else `None`.
    tls: Tls,
    credentials: Option<Credentials>,
    hello: ClientId,
    timeout: Duration,
    /// Bounds the connections open at once (idle or sending) to the pool size; a relay
    /// may refuse or stall extra ones.
    permits: Semaphore,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<Parked>>,
}

struct Parked {
    connection: Connection,
    since: Instant,
}

/// One SMTP session and a second handle on its socket, to see whether the relay closed
/// it while it sat in the pool.
struct Connection {
    smtp: AsyncSmtpConnection,
    socket: socket2::Socket,
}

/// What a pooled connection's socket holds while nothing is being sent.
#[derive(Debug, PartialEq, Eq)]
enum Liveness {
    /// Nothing to read: the relay has not closed it.
    Quiet,
    /// The relay closed it, or the socket failed.
    Closed,
    /// Bytes the relay sent unasked: a `421` before closing, or a TLS record.
    Pending,
}

impl Connection {
    /// Looks at the socket without reading from it or waiting.
    fn liveness(&self) -> Liveness {
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
        // The socket is non-blocking (tokio set it), and this handle shares that.
        match self.socket.peek(&mut byte) {
            Ok(0) => Liveness::Closed,
            Ok(_) => Liveness::Pending,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Liveness::Quiet,
            Err(_) => Liveness::Closed,
        }
    }
}

impl std::fmt::Debug for SmtpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpProvider")
            .field("host", &self.pool.host)
            .field("port", &self.pool.port)
            .finish_non_exhaustive()
    }
}

/// The SMTP settings cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid SMTP configuration: {0}")]
pub struct SmtpConfigError(String);

impl SmtpProvider {
    /// Checks the settings; connections open lazily on first send.
    pub fn new(config: &SmtpConfig) -> Result<Self, SmtpConfigError> {
        let tls = match config.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Starttls | SmtpTls::Tls => {
                let params = TlsParameters::new(config.host.clone())
                    .map_err(|e| SmtpConfigError(e.to_string()))?;
                if config.tls == SmtpTls::Tls {
                    Tls::Wrapper(params)
                } else {
                    Tls::Required(params)
                }
            }
        };
        let credentials = match (&config.username, &config.password) {
            (Some(user), Some(pass)) => Some(Credentials::new(user.clone(), pass.clone())),
            _ => None,
        };
        Ok(SmtpProvider {
            pool: Arc::new(Pool {
                host: config.host.clone(),
                port: config.port,
                tls,
                credentials,
                hello: ClientId::default(),
                timeout: config.timeout,
                permits: Semaphore::new(config.pool_size.max(1) as usize),
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Sends one message.
    pub async fn send(&self, message: &Outgoing) -> Result<Option<String>, ProviderError> {
        let from = message.from.parse().map_err(|e| {
            ProviderError::Permanent(format!("invalid envelope sender '{}': {e}", message.from))
        })?;
        let to = message.to.parse().map_err(|e| {
            ProviderError::Permanent(format!("invalid envelope recipient '{}': {e}", message.to))
        })?;
        let envelope = Envelope::new(Some(from), vec![to])
            .map_err(|e| ProviderError::Permanent(e.to_string()))?;
        let pool = &self.pool;
        let _permit = pool
            .permits
            .acquire()
            .await
            .map_err(|_| transient("the SMTP provider is shutting down".into()))?;
        let mut connection = pool.checkout().await?;
        let exchange = connection.smtp.send(&envelope, &message.raw);
        match tokio::time::timeout(pool.timeout, exchange).await {
            Ok(Ok(response)) => {
                pool.park(connection);
                Ok(response.message().next().map(str::to_owned))
            }
            Ok(Err(e)) => {
                // lettre closes the connection on any error the relay or the network
                // caused; one refused before it spoke (a non-ASCII address the relay
                // cannot take) is still good.
                if !connection.smtp.has_broken() {
                    pool.park(connection);
                }
                Err(classify(&e))
            }
            // Dropped without QUIT: the relay is not answering.
            Err(_) => Err(transient(format!(
                "the SMTP relay did not finish the exchange within {:?}",
                pool.timeout
            ))),
        }
    }
}

impl Pool {
    /// An idle connection the relay has not closed, or a new one.
    ///
    /// A pooled connection is reused without a round trip when its socket has nothing to
    /// read; one the relay closed is dropped; one the relay wrote to unasked (a `421`
    /// before it closes, or any TLS record) must answer `NOOP` first, as lettre's own
    /// pool asks of every connection.
    async fn checkout(&self) -> Result<Connection, ProviderError> {
        loop {
            let parked = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            let Some(Parked {
                mut connection,
                since,
            }) = parked
            else {
                break;
            };
            if since.elapsed() > IDLE_TIMEOUT {
                self.close(connection).await;
                continue;
            }
            match connection.liveness() {
                Liveness::Quiet => return Ok(connection),
                Liveness::Closed => continue,
                Liveness::Pending => {
                    let noop = connection.smtp.test_connected();
                    if let Ok(true) = tokio::time::timeout(self.timeout, noop).await {
                        return Ok(connection);
                    }
                }
            }
        }
        match tokio::time::timeout(self.timeout, self.connect()).await {
            Ok(result) => result,
            Err(_) => Err(transient(format!(
                "connecting to the SMTP relay {}:{} took longer than {:?}",
                self.host, self.port, self.timeout
            ))),
        }
    }

    /// Opens a connection: TCP with `TCP_NODELAY`, TLS from the first byte or STARTTLS
    /// after the greeting, then the login.
    async fn connect(&self) -> Result<Connection, ProviderError> {
        let unreachable = |e: io::Error| {
            transient(format!(
                "cannot connect to the SMTP relay {}:{}: {e}",
                self.host, self.port
            ))
        };
        let socket = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(unreachable)?;
        socket.set_nodelay(true).map_err(unreachable)?;
        let handle = socket2::SockRef::from(&socket)
            .try_clone()
            .map_err(unreachable)?;
        // A refusal here (a 5xx greeting, STARTTLS missing, a bad login) is about the
        // relay or its settings, not the recipient: retried, never a recipient's failure.
        let smtp = self.handshake(socket).await.map_err(|e| {
            transient(format!(
                "the SMTP relay {}:{} refused the session: {e}",
                self.host, self.port
            ))
        })?;
        Ok(Connection {
            smtp,
            socket: handle,
        })
    }

    /// Greeting, EHLO, TLS and login on a new socket.
    async fn handshake(&self, socket: TcpStream) -> Result<AsyncSmtpConnection, SmtpError> {
        let mut connection = match &self.tls {
            Tls::Wrapper(tls) => {
                #[allow(deprecated)] // see `ImplicitTls`
                let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(socket));
                stream.upgrade_tls(tls.clone()).await?;
                AsyncSmtpConnection::connect_with_transport(
                    Box::new(ImplicitTls(stream)),
                    &self.hello,
                )
                .await?
            }
            other => {
                let mut connection =
                    AsyncSmtpConnection::connect_with_transport(Box::new(socket), &self.hello)
                        .await?;
                if let Tls::Required(tls) = other {
                    // Fails when the relay does not offer STARTTLS: never plain text.
                    connection.starttls(tls.clone(), &self.hello).await?;
                }
                connection
            }
        };
        if let Some(credentials) = &self.credentials {
            connection.auth(DEFAULT_MECHANISMS, credentials).await?;
        }
        Ok(connection)
    }

    /// Returns a connection to the pool after a send.
    fn park(&self, connection: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(Parked {
                connection,
                since: Instant::now(),
            });
        }
    }

    /// Says QUIT, without waiting longer than the timeout.
    async fn close(&self, mut connection: Connection) {
        let _ = tokio::time::timeout(self.timeout, connection.smtp.abort()).await;
    }
}

fn transient(message: String) -> ProviderError {
    ProviderError::Transient {
        message,
        retry_after: None,
    }
}

fn classify(e: &SmtpError) -> ProviderError {
    if e.is_permanent() {
        ProviderError::Permanent(e.to_string())
    } else {
        transient(e.to_string())
    }
}

/// A TLS stream from the first byte (port 465) as the tokio stream lettre's connection
/// takes. lettre 0.11 builds TLS only inside its own connect, which gives no way to set
/// `TCP_NODELAY`; its `AsyncNetworkStream` (deprecated as "not meant to be public", still
/// the type its connection wraps) can add TLS to a socket opened here, and this adapter
/// hands it back. The adapter goes once lettre releases its own fix.
#[allow(deprecated)]
#[derive(Debug)]
struct ImplicitTls(AsyncNetworkStream);

impl AsyncRead for ImplicitTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let read = ready!(futures::io::AsyncRead::poll_read(
            Pin::new(&mut self.0),
            cx,
            buf.initialize_unfilled()
        ))?;
        buf.advance(read);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ImplicitTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::io::AsyncWrite::poll_close(Pin::new(&mut self.0), cx)
    }
}

impl AsyncTokioStream for ImplicitTls {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.peer_addr()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;

    /// A minimal SMTP relay on loopback: answers every command, counts connections and
    /// messages, records each client's port, and with `close_after_message` hangs up
    /// after every message it accepted (as relays that cap messages per connection do).
    struct Relay {
        port: u16,
        connections: Arc<AtomicUsize>,
        messages: Arc<AtomicUsize>,
        client_ports: Arc<Mutex<Vec<u16>>>,
    }

    impl Relay {
        async fn start(close_after_message: bool) -> Relay {
            Relay::start_with(close_after_message, b"220 relay.test ESMTP\r\n").await
        }

        async fn start_with(close_after_message: bool, greeting: &'static [u8]) -> Relay {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let relay = Relay {
                port,
                connections: Arc::default(),
                messages: Arc::default(),
                client_ports: Arc::default(),
            };
            let (connections, messages, client_ports) = (
                relay.connections.clone(),
                relay.messages.clone(),
                relay.client_ports.clone(),
            );
            tokio::spawn(async move {
                while let Ok((socket, peer)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut ports) = client_ports.lock() {
                        ports.push(peer.port());
                    }
                    let messages = messages.clone();
                    tokio::spawn(serve(socket, messages, close_after_message, greeting));
                }
            });
            relay
        }

        fn config(&self, pool_size: u32) -> SmtpConfig {
            SmtpConfig {
                host: "127.0.0.1".into(),
                port: self.port,
                username: None,
                password: None,
                tls: SmtpTls::None,
                pool_size,
                timeout: Duration::from_secs(5),
            }
        }
    }

    async fn serve(
        socket: TcpStream,
        messages: Arc<AtomicUsize>,
        close_after_message: bool,
        greeting: &'static [u8],
    ) {
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read).lines();
        if write.write_all(greeting).await.is_err() || !greeting.starts_with(b"220") {
            return;
        }
        let mut in_data = false;
        while let Ok(Some(line)) = lines.next_line().await {
            let reply: &[u8] = if in_data {
                if line != "." {
                    continue;
                }
                in_data = false;
                messages.fetch_add(1, Ordering::SeqCst);
                b"250 2.0.0 queued\r\n"
            } else {
                match line.get(..4).map(str::to_ascii_uppercase).as_deref() {
                    Some("DATA") => {
                        in_data = true;
                        b"354 go ahead\r\n"
                    }
                    Some("QUIT") => {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    }
                    _ => b"250 ok\r\n",
                }
            };
            if write.write_all(reply).await.is_err() {
                return;
            }
            if close_after_message && reply.starts_with(b"250 2.0.0") {
                return;
            }
        }
    }

    fn message(n: usize) -> Outgoing {
        Outgoing {
            from: "news@shop.example".into(),
            to: format!("r{n}@example.com"),
            from_header: "news@shop.example".into(),
            to_header: format!("r{n}@example.com"),
            reply_to: None,
            subject: "hello".into(),
            html: "<p>hello</p>".into(),
            text: None,
            list_unsubscribe: "<https://shop.example/u>".into(),
            delivery_key: format!("k{n}"),
            raw: format!("Subject: hello\r\n\r\nmessage {n}\r\n").into_bytes(),
        }
    }

    #[tokio::test]
    async fn sends_down_one_pooled_connection_with_nagle_off() {
        let relay = Relay::start(false).await;
        let provider = SmtpProvider::new(&relay.config(1)).expect("provider");
        for n in 0..3 {
            let reply = provider.send(&message(n)).await.expect("sent");
            assert_eq!(reply.as_deref(), Some("2.0.0 queued"));
        }
        assert_eq!(relay.messages.load(Ordering::SeqCst), 3);
        assert_eq!(
            relay.connections.load(Ordering::SeqCst),
            1,
            "one pooled connection"
        );
        #[cfg(target_os = "linux")]
        {
            let port = relay.client_ports.lock().expect("ports")[0];
            assert_eq!(
                crate::store::nodelay::nodelay_of_local_port(port),
                Some(true),
                "the body and its terminator are two writes: Nagle must be off"
            );
        }
    }

    #[tokio::test]
    async fn replaces_a_connection_the_relay_closed_without_failing_a_send() {
        let relay = Relay::start(true).await;
        let provider = SmtpProvider::new(&relay.config(1)).expect("provider");
        for n in 0..3 {
            provider.send(&message(n)).await.expect("sent");
            // Let the relay's FIN arrive: the pool must notice it, not send into it.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(relay.messages.load(Ordering::SeqCst), 3);
        assert_eq!(relay.connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_relay_refusing_the_session_is_a_temporary_failure_not_the_recipients() {
        let relay = Relay::start_with(false, b"554 5.3.2 not accepting mail\r\n").await;
        let provider = SmtpProvider::new(&relay.config(1)).expect("provider");
        match provider.send(&message(0)).await {
            Err(ProviderError::Transient { message, .. }) => {
                assert!(message.contains("refused the session"), "{message}");
                assert!(message.contains("not accepting mail"), "{message}");
            }
            other => panic!("expected a temporary failure, got {other:?}"),
        }
        assert_eq!(relay.messages.load(Ordering::SeqCst), 0);
    }

    /// The TLS handshake is lettre's; what this module adds for implicit TLS is the
    /// adapter between lettre's stream and the tokio traits, carried here over plain TCP.
    #[tokio::test]
    async fn the_implicit_tls_adapter_carries_a_whole_session() {
        let relay = Relay::start(false).await;
        let socket = TcpStream::connect(("127.0.0.1", relay.port))
            .await
            .expect("connect");
        #[allow(deprecated)]
        let stream = AsyncNetworkStream::use_existing_tokio1(Box::new(socket));
        let mut smtp = AsyncSmtpConnection::connect_with_transport(
            Box::new(ImplicitTls(stream)),
            &ClientId::default(),
        )
        .await
        .expect("greeting and EHLO through the adapter");
        let envelope = Envelope::new(
            Some("news@shop.example".parse().expect("from")),
            vec!["r0@example.com".parse().expect("to")],
        )
        .expect("envelope");
        let reply = smtp
            .send(&envelope, &message(0).raw)
            .await
            .expect("sent through the adapter");
        assert_eq!(reply.message().next(), Some("2.0.0 queued"));
        smtp.quit().await.expect("QUIT");
        assert_eq!(relay.messages.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_unreachable_relay_is_a_temporary_failure() {
        let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = unused.local_addr().expect("addr").port();
        drop(unused);
        let provider = SmtpProvider::new(&SmtpConfig {
            host: "127.0.0.1".into(),
            port,
            username: None,
            password: None,
            tls: SmtpTls::None,
            pool_size: 1,
            timeout: Duration::from_secs(5),
        })
        .expect("provider");
        match provider.send(&message(0)).await {
            Err(ProviderError::Transient { message, .. }) => {
                assert!(message.contains("cannot connect"), "{message}");
            }
            other => panic!("expected a temporary failure, got {other:?}"),
        }
    }
}
