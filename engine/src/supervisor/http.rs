//! The `http` component: the salvo server. The listening socket and the serving task
//! outlive a crash of the actor (they live in a slot shared across restarts), so a
//! restarted actor adopts the running server instead of fighting for the port; a
//! clean stop drains connections within the shutdown timeout. With `HTTPS_ENABLED` the
//! same server also listens with TLS (rustls) on `HTTPS_PORT`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mailing_api::AppState;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use salvo::Server;
use salvo::conn::rustls::{Keycert, RustlsConfig};
use salvo::conn::{Acceptor, Listener, TcpListener};
use salvo::server::ServerHandle;
use tokio::sync::Mutex;
use tracing::info;

use super::ComponentMsg;

/// The registered name of this component.
pub const NAME: &str = "http";

/// A server that is serving.
pub struct RunningServer {
    handle: ServerHandle,
    join: tokio::task::JoinHandle<()>,
    stopping: Arc<AtomicBool>,
    /// The bound address.
    pub addr: SocketAddr,
}

/// Shared across restarts of the actor.
pub type ServerSlot = Arc<Mutex<Option<RunningServer>>>;

/// Arguments of the HTTP component.
#[derive(Clone)]
pub struct HttpArgs {
    /// `HTTP_HOST:HTTP_PORT`.
    pub addr: String,
    /// What handlers share.
    pub state: Arc<AppState>,
    /// The HTTPS listener, when `HTTPS_ENABLED`.
    pub tls: Option<crate::config::TlsListener>,
    /// The running server, if any.
    pub slot: ServerSlot,
    /// How long a stop waits for open requests.
    pub shutdown_timeout: Duration,
}

/// The HTTP component.
#[derive(Debug, Clone, Copy)]
pub struct HttpServer;

/// Starts serving on a bound acceptor; the first holding is the plain-HTTP address.
fn serve<A: Acceptor + Send + 'static>(
    acceptor: A,
    args: &HttpArgs,
) -> Result<RunningServer, ActorProcessingErr> {
    let addr = acceptor
        .holdings()
        .first()
        .and_then(|h| h.local_addr.clone().into_std())
        .ok_or("the listener has no local address")?;
    let server = Server::new(acceptor);
    let handle = server.handle();
    let stopping = Arc::new(AtomicBool::new(false));
    let service = mailing_api::service(args.state.clone());
    let flag = stopping.clone();
    let join = tokio::spawn(async move {
        server.serve(service).await;
        if !flag.load(Ordering::SeqCst)
            && let Some(cell) = ractor::registry::where_is(NAME)
        {
            let _ = cell.send_message(ComponentMsg::Exited("the HTTP server stopped".into()));
        }
    });
    Ok(RunningServer {
        handle,
        join,
        stopping,
        addr,
    })
}

impl Actor for HttpServer {
    type Msg = ComponentMsg;
    type State = HttpArgs;
    type Arguments = HttpArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<ComponentMsg>,
        args: HttpArgs,
    ) -> Result<HttpArgs, ActorProcessingErr> {
        let mut slot = args.slot.lock().await;
        if let Some(running) = slot.as_ref()
            && !running.join.is_finished()
        {
            info!(addr = %running.addr, "HTTP server adopted by restarted component");
            drop(slot);
            return Ok(args);
        }
        let plain = TcpListener::new(args.addr.clone());
        let running = match &args.tls {
            None => {
                let acceptor = plain
                    .try_bind()
                    .await
                    .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
                serve(acceptor, &args)?
            }
            Some(tls) => {
                let keycert = Keycert::new()
                    .cert_from_path(&tls.cert_file)
                    .map_err(|e| format!("SSL_CERT_FILE {:?}: {e}", tls.cert_file.display()))?
                    .key_from_path(&tls.key_file)
                    .map_err(|e| format!("SSL_KEY_FILE {:?}: {e}", tls.key_file.display()))?;
                let acceptor = plain
                    .join(TcpListener::new(tls.addr.clone()).rustls(RustlsConfig::new(keycert)))
                    .try_bind()
                    .await
                    .map_err(|e| {
                        format!(
                            "cannot listen on {} and with TLS on {} (is the certificate and key \
                             PEM that belong together?): {e}",
                            args.addr, tls.addr
                        )
                    })?;
                info!(addr = %tls.addr, "Listening with TLS");
                serve(acceptor, &args)?
            }
        };
        info!(addr = %running.addr, "Listening");
        *slot = Some(running);
        drop(slot);
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<ComponentMsg>,
        msg: ComponentMsg,
        _args: &mut HttpArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ComponentMsg::Crash => panic!("fault injection: the http component was told to crash"),
            ComponentMsg::Exited(reason) => Err(reason.into()),
            ComponentMsg::Tick => Ok(()),
        }
    }

    async fn post_stop(
        &self,
        _me: ActorRef<ComponentMsg>,
        args: &mut HttpArgs,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(running) = args.slot.lock().await.take() {
            running.stopping.store(true, Ordering::SeqCst);
            running.handle.stop_graceful(args.shutdown_timeout);
            let _ =
                tokio::time::timeout(args.shutdown_timeout + Duration::from_secs(1), running.join)
                    .await;
            info!("HTTP server stopped");
        }
        Ok(())
    }
}
