//! The HTTP(S) serving loop: accepts connections and serves the router over HTTP/1.1 (hyper),
//! with the limits that keep slow or greedy clients from holding the daemon.
//!
//! - **Connection cap** (`http.max_connections`): a semaphore permit is taken *before* `accept`,
//!   so at the cap new connections wait in the kernel's accept queue (backlog [`BACKLOG`]) until a
//!   served one closes; none is refused.
//! - **Header timeout** (`http.header_timeout`): from the moment a connection is accepted (TLS
//!   handshake included), and from the first byte of each later request on a keep-alive
//!   connection, the client has this long to send the whole request head; then the connection is
//!   closed. This cuts a client that connects and sends nothing as well as one that sends half a
//!   head and waits. (hyper's own `header_read_timeout` is off: it would also cut idle keep-alive
//!   connections after the header timeout.)
//! - **Idle timeout** (`http.idle_timeout`): a keep-alive connection with no request in flight
//!   and no request started is closed after this long.
//! - **Request body deadline** ([`BODY_TIMEOUT`]): a request's body must arrive completely
//!   within this time of its head; otherwise reading it fails (400, JSON) and the connection
//!   closes.
//! - **Write stall** ([`WRITE_STALL_TIMEOUT`]): a client that stops reading a response (an
//!   export, say) for this long is disconnected; the response body is dropped, which stops
//!   whatever was producing it.
//! - **Graceful shutdown**: stop accepting, let in-flight requests finish within
//!   [`SHUTDOWN_GRACE`], then drop what is left. Refusal counts not yet in the logbook are
//!   written before [`serve`] returns.
//!
//! Every request carries its peer address as axum's `ConnectInfo<SocketAddr>` and the server's
//! [`Limits`] as an extension, for the refusal middleware (`api::count_requests`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use super::limits::Limits;
use super::AppState;
use crate::config::Http;

/// Length of the kernel's accept queue.
pub const BACKLOG: u32 = 1024;
/// Time a request's body may take to arrive, from its head.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a client may stop reading a response before it is disconnected.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Time in-flight requests get to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Largest request head (and read buffer) per connection.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How often closed refusal windows are written to the logbook.
const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Binds the listening socket with a [`BACKLOG`]-long accept queue.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// A TLS acceptor from a PEM certificate chain and private key (rustls with ring).
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            anyhow::anyhow!(
                "http.tls_cert: cannot read a PEM certificate chain from {}: {e}",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!("http.tls_cert: {} holds no certificate", cert.display());
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        anyhow::anyhow!(
            "http.tls_key: cannot read a PEM private key from {}: {e}",
            key.display()
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)
    .with_context(|| {
        format!(
            "http.tls_cert/http.tls_key: {} and {} are not a usable certificate and key",
            cert.display(),
            key.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What every connection of one server shares.
struct Shared {
    router: axum::Router,
    limits: Arc<Limits>,
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
    idle_timeout: Duration,
    body_timeout: Duration,
    write_stall: Duration,
    /// Every open connection's timing state, so that at the connection cap an idle keep-alive
    /// connection can be closed to make room (otherwise a few hundred clients that send a
    /// cheap request now and then could hold every slot forever).
    open: Mutex<Vec<std::sync::Weak<Activity>>>,
    /// Beats while the server makes progress (the watchdog reads it, `crate::service`).
    progress: crate::service::Heartbeat,
    /// Requests in flight on every connection (the idle beat is only for a server with none).
    busy: Arc<std::sync::atomic::AtomicUsize>,
}

impl Shared {
    /// At the connection cap: closes the keep-alive connection that has been idle longest, if
    /// any is idle. Returns whether one was asked to close.
    fn reclaim_idle(&self) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|w| w.strong_count() > 0);
        let oldest = open
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .filter_map(|a| a.idle_deadline().map(|d| (d, a)))
            .min_by_key(|(d, _)| *d);
        match oldest {
            Some((_, a)) => {
                a.close_now("closed to make room for a new connection");
                true
            }
            None => false,
        }
    }
}

/// Serves `state`'s router on `listener` until `stop` resolves, then shuts down gracefully.
pub async fn serve(
    listener: TcpListener,
    http: &Http,
    tls: Option<TlsAcceptor>,
    state: Arc<AppState>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let limits = Arc::new(Limits::new());
    let shared = Arc::new(Shared {
        router: super::router(state.clone()),
        limits: limits.clone(),
        tls,
        header_timeout: http.header_timeout,
        idle_timeout: http.idle_timeout,
        body_timeout: BODY_TIMEOUT,
        write_stall: WRITE_STALL_TIMEOUT,
        open: Mutex::new(Vec::new()),
        progress: state.http_progress.clone(),
        busy: Default::default(),
    });
    let slots = Arc::new(Semaphore::new(http.max_connections.max(1)));
    let (close_tx, close_rx) = watch::channel(false);
    let (flusher_stop, mut flusher_stopped) = tokio::sync::oneshot::channel::<()>();
    let flusher = {
        let (state, limits) = (state.clone(), limits.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut flusher_stopped => break,
                }
                limits.purge();
                write_refusals(&state, limits.flush_expired()).await;
            }
        })
    };

    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    // The watchdog's view of the server (`AppState::http_progress`): it beats while the server
    // is idle and can take a connection (a free slot, no request in flight, accept working),
    // and while connections make progress (a request finished, bytes written, a connection
    // closed). A flood that fills every slot with half-sent requests still beats as the header
    // timeout cuts them; requests that never finish while nothing else moves, or an accept that
    // keeps failing, stop the beats (and the loopback probe fails too), so systemd restarts.
    let mut accept_failing = false;
    let mut idle_tick = tokio::time::interval(crate::service::HEARTBEAT_TICK);
    idle_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'accept: loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            _ = idle_tick.tick() => {
                let idle = shared.busy.load(std::sync::atomic::Ordering::Relaxed) == 0;
                if idle && !accept_failing && slots.available_permits() > 0 {
                    shared.progress.beat();
                }
                continue;
            }
            r = listener.accept() => match r {
                Ok(c) => {
                    accept_failing = false;
                    c
                }
                Err(e) => {
                    accept_failing = true;
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // A client is waiting: at the cap, an idle keep-alive connection makes room, checked
        // again while the client waits (connections go idle later too).
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => loop {
                shared.reclaim_idle();
                tokio::select! {
                    _ = &mut stop => break 'accept,
                    p = slots.clone().acquire_owned() => break p.expect("the semaphore is never closed"),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            },
        };
        while conns.try_join_next().is_some() {}
        conns.spawn(connection(
            stream,
            peer,
            permit,
            shared.clone(),
            close_rx.clone(),
        ));
    }
    drop(listener);
    let _ = close_tx.send(true);
    let open = conns.len();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = conns.len(),
            "requests still running after {SHUTDOWN_GRACE:?}; dropping them"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    tracing::info!(connections = open, "HTTP stopped");
    // Not aborted: a flush under way finishes, so no count taken from the table is lost.
    let _ = flusher_stop.send(());
    let _ = flusher.await;
    write_refusals(&state, limits.flush_all()).await;
    Ok(())
}

async fn write_refusals(state: &Arc<AppState>, entries: Vec<crate::logbook::NewEntry>) {
    for e in entries {
        if let Err(err) = state.record(e).await {
            tracing::error!(error = ?err, "could not log refused requests");
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    close: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new(&shared));
    // A closed connection (served, cut by a timeout, a failed handshake) is progress too.
    let _closed = BeatOnDrop(shared.progress.clone());
    {
        let mut open = shared.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= 4096 {
            open.retain(|w| w.strong_count() > 0);
        }
        open.push(Arc::downgrade(&activity));
    }
    let _ = match shared.tls.clone() {
        Some(acceptor) => {
            // The handshake counts against the header timeout.
            let tls = match tokio::time::timeout_at(
                activity.started + shared.header_timeout,
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            serve_io(
                Tracked::new(tls, activity.clone()),
                peer,
                activity,
                shared,
                close,
            )
            .await
        }
        None => {
            serve_io(
                Tracked::new(stream, activity.clone()),
                peer,
                activity,
                shared,
                close,
            )
            .await
        }
    };
}

/// Serves one connection; returns why the server cut it, if it did.
async fn serve_io<I>(
    io: Tracked<I>,
    peer: SocketAddr,
    activity: Arc<Activity>,
    shared: Arc<Shared>,
    mut close: watch::Receiver<bool>,
) -> Option<&'static str>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = {
        let (shared, activity) = (shared.clone(), activity.clone());
        service_fn(move |mut req: hyper::Request<Incoming>| {
            let guard = activity.request_started();
            let mut router = shared.router.clone();
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(shared.limits.clone());
            let req = req.map(|b| TimedBody::new(b, shared.body_timeout));
            async move {
                let resp = router.call(req).await?;
                Ok::<_, Infallible>(resp.map(|inner| GuardedBody {
                    inner,
                    _guard: guard,
                }))
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        if !closing && *close.borrow() {
            conn.as_mut().graceful_shutdown();
            closing = true;
        }
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return None;
            }
            why = activity.expired() => {
                tracing::debug!(%peer, "closing connection: {why}");
                return Some(why);
            }
            r = close.changed(), if !closing => {
                if r.is_err() {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Per-connection timing state: what the connection is waiting for and until when.
struct Activity {
    started: Instant,
    header_timeout: Duration,
    idle_timeout: Duration,
    write_stall: Duration,
    progress: crate::service::Heartbeat,
    busy: Arc<std::sync::atomic::AtomicUsize>,
    state: Mutex<ActivityState>,
    changed: Notify,
}

#[derive(Debug)]
struct ActivityState {
    /// Requests whose head arrived and whose response body is not finished.
    in_flight: usize,
    /// No request in flight and no byte of a next one seen.
    idle: bool,
    /// When the connection is closed unless something happens.
    deadline: Option<(Instant, &'static str)>,
    /// Since when a write of ours has been waiting for the client to read.
    write_blocked_since: Option<Instant>,
}

impl Activity {
    fn new(shared: &Shared) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            header_timeout: shared.header_timeout,
            idle_timeout: shared.idle_timeout,
            write_stall: shared.write_stall,
            progress: shared.progress.clone(),
            busy: shared.busy.clone(),
            state: Mutex::new(ActivityState {
                in_flight: 0,
                idle: false,
                deadline: Some((now + shared.header_timeout, "header timeout")),
                write_blocked_since: None,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived: on an idle connection, a new request has begun and its head is timed.
    fn read_some(&self) {
        let mut s = self.lock();
        if s.idle && s.in_flight == 0 {
            s.idle = false;
            s.deadline = Some((Instant::now() + self.header_timeout, "header timeout"));
            drop(s);
            self.changed.notify_one();
        }
    }

    /// A write of ours returned: blocked (pending) or progress (bytes taken).
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            self.progress.beat();
        }
        self.write_blocked(r.is_pending());
    }

    fn write_blocked(&self, blocked: bool) {
        let mut s = self.lock();
        match (blocked, s.write_blocked_since.is_some()) {
            (true, false) => {
                s.write_blocked_since = Some(Instant::now());
                drop(s);
                self.changed.notify_one();
            }
            (false, true) => s.write_blocked_since = None,
            _ => {}
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut s = self.lock();
        s.in_flight += 1;
        s.idle = false;
        s.deadline = None;
        InFlight(self.clone())
    }

    fn request_finished(&self) {
        self.busy.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.progress.beat();
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle = true;
            s.deadline = Some((Instant::now() + self.idle_timeout, "idle timeout"));
            drop(s);
            self.changed.notify_one();
        }
    }

    /// When an idle keep-alive connection (no request in flight, none begun) times out.
    fn idle_deadline(&self) -> Option<Instant> {
        let s = self.lock();
        (s.idle && s.in_flight == 0 && s.write_blocked_since.is_none())
            .then(|| s.deadline.map(|(t, _)| t))
            .flatten()
    }

    /// Closes an idle connection now (see [`Shared::reclaim_idle`]).
    fn close_now(&self, why: &'static str) {
        let mut s = self.lock();
        if s.idle && s.in_flight == 0 {
            s.deadline = Some((Instant::now(), why));
            drop(s);
            self.changed.notify_one();
        }
    }

    /// Resolves when the connection should be closed, with the reason.
    async fn expired(&self) -> &'static str {
        loop {
            let now = Instant::now();
            let wake = {
                let s = self.lock();
                let stall = s.write_blocked_since.map(|t| t + self.write_stall);
                if stall.is_some_and(|t| t <= now) {
                    return "the client stopped reading";
                }
                match s.deadline {
                    // An idle deadline waits while our last response is still being written.
                    Some((t, why)) if t <= now && s.write_blocked_since.is_none() => return why,
                    Some((t, _)) => Some(stall.map_or(t, |s| s.min(t)).max(now)),
                    None => stall,
                }
            };
            let wake = wake.unwrap_or(now + Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.changed.notified() => {}
            }
        }
    }
}

/// Beats a heartbeat when dropped.
struct BeatOnDrop(crate::service::Heartbeat);

impl Drop for BeatOnDrop {
    fn drop(&mut self) {
        self.0.beat();
    }
}

/// Marks a request in flight until its response body is finished (or dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The connection's IO, reporting reads and blocked writes to its [`Activity`].
struct Tracked<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> Tracked<I> {
    fn new(io: I, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.activity.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.activity.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.activity.write_blocked(r.is_pending());
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The request body must be complete by a deadline.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl TimedBody {
    fn new(inner: Incoming, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }
}

/// The error of a request body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(Duration);

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(r.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout(self.limit).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request in flight until it is finished or dropped.
struct GuardedBody {
    inner: axum::body::Body,
    _guard: InFlight,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One connection over an in-memory pipe with a 16 KiB buffer, serving `router`.
    fn connect(
        router: axum::Router,
        write_stall: Duration,
        body_timeout: Duration,
    ) -> (
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<Option<&'static str>>,
    ) {
        let shared = Arc::new(Shared {
            router,
            limits: Arc::new(Limits::new()),
            tls: None,
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            body_timeout,
            write_stall,
            open: Mutex::new(Vec::new()),
            progress: crate::service::Heartbeat::new(),
            busy: Default::default(),
        });
        let (client, server) = tokio::io::duplex(16 * 1024);
        let activity = Arc::new(Activity::new(&shared));
        let (close_tx, close_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let _keep = close_tx;
            serve_io(
                Tracked::new(server, activity.clone()),
                "127.0.0.1:1".parse().unwrap(),
                activity,
                shared,
                close_rx,
            )
            .await
        });
        (client, task)
    }

    fn big_body_router(len: usize) -> axum::Router {
        let body = Bytes::from(vec![b'x'; len]);
        axum::Router::new().route(
            "/big",
            axum::routing::get(move || {
                let b = body.clone();
                async move { b }
            }),
        )
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_after_the_write_stall_timeout() {
        let (mut client, task) = connect(
            big_body_router(4 << 20),
            Duration::from_millis(500),
            BODY_TIMEOUT,
        );
        client
            .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = client.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let t = Instant::now();
        let why = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the connection is cut")
            .unwrap();
        assert_eq!(why, Some("the client stopped reading"));
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn a_slow_but_steady_reader_gets_the_whole_response() {
        let len = 256 * 1024;
        let (mut client, task) = connect(
            big_body_router(len),
            Duration::from_millis(500),
            BODY_TIMEOUT,
        );
        client
            .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // 16 KiB every 100 ms: never stalled for 500 ms, about 1.6 s in all.
            let n = client.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let split = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        assert_eq!(got.len() - split - 4, len);
        assert_eq!(task.await.unwrap(), None, "the connection ended normally");
    }

    #[tokio::test]
    async fn a_request_body_that_does_not_arrive_in_time_fails() {
        let router = axum::Router::new().route(
            "/echo",
            axum::routing::post(|b: Bytes| async move { b.len().to_string() }),
        );
        let (mut client, _task) = connect(router, WRITE_STALL_TIMEOUT, Duration::from_millis(500));
        client
            .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        let t = Instant::now();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(text.contains("did not arrive within"), "{text}");
        assert!(t.elapsed() >= Duration::from_millis(400));
    }
}
