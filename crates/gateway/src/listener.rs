//! The TCP listener: binding (a non-loopback address only with TLS; port 0 picks a free port, which
//! a restarted gateway takes again when it can, and the bound address is written to
//! `<runtime>/gateway.addr`), TLS through rustls (ring), and the accept loop that serves HTTP/1.1
//! with upgrades (WebSockets), bounded connections and a graceful drain on shutdown.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aiventbus_rpc::config::GatewayConfig;
use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::HttpMetrics;

/// Open TCP connections at most; more are closed at once.
const MAX_CONNECTIONS: usize = 1024;
/// How long a client may take to send its request head (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open requests get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(4);

/// The configured listen address, checked: a non-loopback address needs TLS.
pub fn listen_address(config: &GatewayConfig) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = config
        .listen
        .parse()
        .with_context(|| format!("gateway.listen: {:?} is not an address", config.listen))?;
    let tls = config.tls_cert.is_some() && config.tls_key.is_some();
    if config.tls_cert.is_some() != config.tls_key.is_some() {
        bail!("gateway.tls_cert and gateway.tls_key go together: set both or neither");
    }
    if !addr.ip().is_loopback() && !tls {
        bail!(
            "refusing to listen on {addr} without TLS: a non-loopback gateway.listen needs gateway.tls_cert and \
             gateway.tls_key (or listen on 127.0.0.1)"
        );
    }
    Ok(addr)
}

/// The TLS acceptor for `gateway.tls_cert` and `gateway.tls_key`, when both are set.
pub fn tls_acceptor(config: &GatewayConfig) -> anyhow::Result<Option<TlsAcceptor>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("gateway.tls_cert: reading {}", cert.display()))?;
    if chain.is_empty() {
        bail!("gateway.tls_cert: {} holds no certificate", cert.display());
    }
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("gateway.tls_key: reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("gateway.tls_cert and gateway.tls_key do not make a usable certificate")?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// Binds `addr`. With port 0, the port recorded in `addr_file` by a previous run is tried first,
/// so a gateway restarted by init keeps its URL (open dashboards reconnect).
pub async fn bind(addr: SocketAddr, addr_file: &Path) -> io::Result<TcpListener> {
    if addr.port() == 0
        && let Some(previous) = std::fs::read_to_string(addr_file)
            .ok()
            .and_then(|text| text.trim().parse::<SocketAddr>().ok())
            .filter(|previous| previous.ip() == addr.ip())
        && let Ok(listener) = TcpListener::bind(previous).await
    {
        return Ok(listener);
    }
    TcpListener::bind(addr).await
}

/// Writes the bound address to `path` (0600).
pub fn write_addr_file(path: &Path, addr: SocketAddr) -> io::Result<()> {
    aiventbus_rpc::paths::write_private_file(path, format!("{addr}\n").as_bytes())
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish (within a
/// few seconds) and returns.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    metrics: Arc<HttpMetrics>,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off a little rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many connections; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, tls, metrics, shutdown) = (router.clone(), tls.clone(), metrics.clone(), shutdown.clone());
        tracker.spawn(async move {
            metrics.connection_opened();
            connection(stream, peer, tls, router, shutdown).await;
            metrics.connection_closed();
            drop(permit);
        });
    }
    tracker.close();
    if tokio::time::timeout(DRAIN + Duration::from_secs(1), tracker.wait())
        .await
        .is_err()
    {
        tracing::debug!("HTTP connections still open after the drain; closing them");
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
    shutdown: CancellationToken,
) {
    match tls {
        None => serve_http(stream, peer, router, shutdown).await,
        Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => serve_http(stream, peer, router, shutdown).await,
            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        },
    }
}

async fn serve_http<S>(stream: S, peer: SocketAddr, router: Router, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tower = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        hyper::service::Service::call(&tower, request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "HTTP connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, connection).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_loopback_listen_needs_tls() {
        let config = |listen: &str, tls: bool| GatewayConfig {
            listen: listen.into(),
            tls_cert: tls.then(|| "/c.pem".into()),
            tls_key: tls.then(|| "/k.pem".into()),
            ..GatewayConfig::default()
        };
        assert!(listen_address(&config("127.0.0.1:0", false)).is_ok());
        assert!(listen_address(&config("[::1]:8420", false)).is_ok());
        let error = listen_address(&config("0.0.0.0:8420", false)).unwrap_err().to_string();
        assert!(
            error.contains("without TLS") && error.contains("gateway.tls_cert"),
            "{error}"
        );
        assert!(listen_address(&config("192.168.1.2:8420", false)).is_err());
        assert!(listen_address(&config("0.0.0.0:8420", true)).is_ok());
        let half = GatewayConfig {
            tls_cert: Some("/c.pem".into()),
            ..GatewayConfig::default()
        };
        assert!(listen_address(&half).unwrap_err().to_string().contains("together"));
    }
}
