//! Running the server: [`start`] serves the router on a bound listener; [`RunningServer::
//! shutdown`] drains it.
//!
//! Drain order (axum's graceful shutdown alone would wait for every SSE stream to end):
//! 1. the phase becomes draining: `/health` and new generation requests answer 503;
//! 2. in-flight requests run to completion, for at most `shutdown_timeout`;
//! 3. whatever still runs is aborted in the engine, so each stream ends with an `abort`
//!    finish (or an error event) and `[DONE]`, and non-streamed requests answer;
//! 4. the listener closes and idle connections are shut (bounded), then the engine stops.

use crate::routes::router;
use crate::state::AppState;
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
    let (close, closed) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                // A dropped sender means the handle is gone: shut down as well.
                let _ = closed.await;
            })
            .await
    });
    Ok(RunningServer {
        addr,
        state,
        close: Some(close),
        task,
    })
}

impl RunningServer {
    /// Drains (see the module docs) and stops the server and the engine.
    pub async fn shutdown(mut self) -> Result<DrainReport, ServeError> {
        let st = Arc::clone(&self.state);
        st.begin_drain();
        let deadline = Instant::now() + st.cfg.shutdown_timeout;
        let mut report = DrainReport {
            aborted: 0,
            stuck: 0,
        };
        if !st.admission.wait_idle(deadline).await {
            report.aborted = st.admission.in_flight();
            tracing::warn!(
                in_flight = report.aborted,
                "shutdown timeout reached; aborting the requests still running"
            );
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
