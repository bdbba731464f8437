//! Running the server: [`start`] serves the router on a bound listener; [`RunningServer::
//! shutdown`] drains it.
//!
//! Drain order (axum's graceful shutdown alone would wait for every SSE stream to end):
//! 1. the phase becomes draining: `/health` and new generation requests answer 503;
//! 2. in-flight requests run to completion, for at most `shutdown_timeout`;
//! 3. whatever still runs is aborted in the engine, so each stream ends with an `abort`
//!    finish (or an error event) and `[DONE]`, and non-streamed requests answer;
//! 4. the listener closes and idle connections are shut (bounded), then the engine stops.
//!
//! Every connection must send its request headers within `header_read_timeout`.

use crate::routes::router;
use crate::state::AppState;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long aborted requests get to send their last events after an abort.
const ABORT_GRACE: Duration = Duration::from_secs(5);
/// How long connections get to close once the drain is over.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding or reading the listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("the HTTP server task failed: {0}")]
    Task(String),
}

/// What a drain found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainReport {
    /// Requests still in flight at the deadline (they were aborted).
    pub aborted: usize,
    /// Requests still in flight after the abort grace (0 unless the engine hung).
    pub stuck: usize,
}

pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    close: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Serves on `listener` until [`RunningServer::shutdown`].
pub fn start(state: Arc<AppState>, listener: TcpListener) -> Result<RunningServer, ServeError> {
    let addr = listener.local_addr()?;
    let app = router(Arc::clone(&state));
    let header_timeout = state.cfg.header_read_timeout;
    let (close, closed) = oneshot::channel::<()>();
    let task = tokio::spawn(accept_loop(listener, app, header_timeout, closed));
    Ok(RunningServer { addr, state, close: Some(close), task })
}

/// Accepts connections until `closed` fires (or its sender is dropped), then closes the
/// listener and lets the open connections finish their current response (bounded by the
/// caller). Our own loop rather than `axum::serve`: that one sets no header-read timeout, so
/// a client trickling its headers (slowloris) would hold a connection forever.
async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    mut closed: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
    loop {
        let (tcp, _peer) = tokio::select! {
            _ = &mut closed => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: transient; don't spin, don't die.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small SSE events must leave at once, not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(tcp), svc));
        tokio::spawn(async move {
            // Errors here are the client's (reset, timeout); nothing to answer.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

impl RunningServer {
    /// Drains (see the module docs) and stops the server and the engine.
    pub async fn shutdown(mut self) -> Result<DrainReport, ServeError> {
        let st = Arc::clone(&self.state);
        st.begin_drain();
        let deadline = Instant::now() + st.cfg.shutdown_timeout;
        let mut report = DrainReport { aborted: 0, stuck: 0 };
        if !st.admission.wait_idle(deadline).await {
            report.aborted = st.admission.in_flight();
            tracing::warn!(in_flight = report.aborted, "shutdown timeout reached; aborting the requests still running");
            if let Some(l) = st.loaded() {
                l.backend.abort_all();
            }
            if !st.admission.wait_idle(Instant::now() + ABORT_GRACE).await {
                report.stuck = st.admission.in_flight();
                tracing::error!(stuck = report.stuck, "requests did not end after the abort");
            }
        }
        if let Some(tx) = self.close.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(CLOSE_GRACE, &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(ServeError::Io(e)),
            Ok(Err(e)) => return Err(ServeError::Task(e.to_string())),
            Err(_) => {
                tracing::warn!("connections did not close in time; closing them");
                self.task.abort();
            }
        }
        if let Some(l) = st.loaded() {
            l.backend.shutdown();
        }
        Ok(report)
    }
}
