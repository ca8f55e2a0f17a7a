//! One WebSocket client of `GET /ws`, after the handshake.
//!
//! The socket's two directions are kept apart. Sending: the client is a [`Sink`] of the
//! live hub, and the hub's fan-out task writes each event's pre-framed message straight to
//! the socket (through a duplicate of its file descriptor) whenever nothing is queued for
//! this client, so an event wakes no task per client. What the socket does not take at once
//! is queued, up to `LIVE_BUFFER` messages; past that the client lags: the queue is
//! dropped, and it gets `resync` and a fresh `snapshot`. Receiving: the client's own task
//! reads frames with tungstenite over hyper's upgraded connection (pongs, `snapshot`
//! requests, close), pings every 30 s, and drains the queue when the socket has room again.
//! A socket that takes nothing for `LIVE_SEND_TIMEOUT` is closed with 1008.
//!
//! Every write happens under the client's lock, and a message is written straight away only
//! when nothing is queued before it, so frames never interleave on the wire.

use std::collections::VecDeque;
use std::io;
use std::os::fd::BorrowedFd;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures_util::StreamExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::config::Locale;
use crate::http::{AppState, Peer};
use crate::live::messages::{self, Filter};
use crate::live::{FanoutStats, Hub, Published, Sink};

/// `text` as one complete, unmasked WebSocket text frame (header and payload), as a server
/// sends it (RFC 6455, framed by tungstenite).
pub fn ws_text_frame(text: &str) -> Bytes {
    ws_frame(Frame::message(
        text.as_bytes().to_vec(),
        OpCode::Data(Data::Text),
        true,
    ))
}

/// `frame` serialized as it goes on the wire.
pub fn ws_frame(frame: Frame) -> Bytes {
    let mut out = Vec::with_capacity(frame.len());
    // Writing into a Vec cannot fail.
    let _ = frame.format(&mut out);
    out.into()
}

const PING_EVERY: Duration = super::PING_EVERY;
const PONG_TIMEOUT: Duration = Duration::from_secs(75);
/// How long a closing client gets to take its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A second handle on the socket of `peer`, for writing: a duplicate of its file
/// descriptor, registered with the runtime on its own.
///
/// Errors: the descriptor could not be duplicated (out of descriptors).
pub fn duplicate(peer: &Peer) -> io::Result<TcpStream> {
    // SAFETY: `peer.fd` is the socket of the connection whose request is being handled:
    // hyper owns it and keeps it open until the request is answered, so it is a valid,
    // open descriptor for the duration of this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(peer.fd) }.try_clone_to_owned()?;
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true)?;
    TcpStream::from_std(std)
}

/// A frame waiting for room in the socket; `origin` is set for events (latency is
/// recorded when the frame is fully written).
struct Queued {
    frame: Bytes,
    origin: Option<Instant>,
}

/// What is waiting to be written to the socket.
#[derive(Default)]
struct Out {
    /// Frames in order; the first may be partly written already.
    queue: VecDeque<Queued>,
    /// Bytes of the first frame already written.
    head_sent: usize,
    /// Some(missed) while a snapshot is due (on connect: 0; after lagging: events missed,
    /// announced with `resync`). Events offered meanwhile are covered by that snapshot
    /// and dropped.
    snapshot_due: Option<u64>,
    /// The socket failed or the client is closing: take nothing more.
    closed: bool,
}

/// The sending side of one WebSocket client.
struct Client {
    tcp: TcpStream,
    filter: Filter,
    locale: Locale,
    capacity: usize,
    stats: Arc<FanoutStats>,
    out: Mutex<Out>,
    /// Wakes the client's task: a snapshot is due or the queue needs draining.
    wake: Notify,
}

/// Why the sending side gave up.
enum Stalled {
    /// No room in the socket for `LIVE_SEND_TIMEOUT`.
    TooSlow,
    /// The socket failed.
    Failed,
}

impl Client {
    fn lock(&self) -> std::sync::MutexGuard<'_, Out> {
        // A poisoned lock only means a panic elsewhere mid-write; the queue is still whole.
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `frame` now when nothing is queued before it (as much as the socket takes),
    /// and queues the rest for the client's task.
    fn push(&self, out: &mut Out, frame: &Bytes, origin: Option<Instant>) {
        if out.closed {
            return;
        }
        if !out.queue.is_empty() {
            out.queue.push_back(Queued {
                frame: frame.clone(),
                origin,
            });
            return;
        }
        match self.tcp.try_write(frame) {
            Ok(n) if n == frame.len() => {
                if let Some(origin) = origin {
                    self.stats.record_written(origin.elapsed());
                }
                return;
            }
            Ok(n) if n > 0 => out.head_sent = n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => out.head_sent = 0,
            _ => {
                out.closed = true;
                self.wake.notify_one();
                return;
            }
        }
        out.queue.push_back(Queued {
            frame: frame.clone(),
            origin,
        });
        self.wake.notify_one();
    }

    /// Queues a control or snapshot frame behind what is already waiting.
    fn send(&self, frame: Frame) {
        let frame = ws_frame(frame);
        self.push(&mut self.lock(), &frame, None);
    }

    /// Sends a snapshot now, under the lock, so every event offered after it was taken
    /// comes after it on the wire.
    fn send_snapshot(&self, out: &mut Out, hub: &Hub) {
        let text = messages::snapshot(hub, self.locale, &self.filter);
        self.push(out, &ws_text_frame(&text), None);
    }

    /// Sends what is due (resync and snapshot) and writes the queue until it is empty,
    /// waiting for room in the socket at most `timeout` at a time.
    async fn drain(&self, hub: &Hub, timeout: Duration) -> Result<(), Stalled> {
        loop {
            {
                let mut out = self.lock();
                if let Some(missed) = out.snapshot_due.take() {
                    if missed > 0 {
                        tracing::warn!(missed, "live client fell behind; sending resync");
                        self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                        let resync = ws_text_frame(&messages::resync(missed));
                        self.push(&mut out, &resync, None);
                    }
                    self.send_snapshot(&mut out, hub);
                }
                self.write_queue(&mut out)?;
                if out.queue.is_empty() {
                    return Ok(());
                }
            }
            match tokio::time::timeout(timeout, self.tcp.writable()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Stalled::Failed),
                Err(_) => return Err(Stalled::TooSlow),
            }
        }
    }

    /// Writes queued frames until the socket is full or the queue is empty.
    fn write_queue(&self, out: &mut Out) -> Result<(), Stalled> {
        if out.closed {
            return Err(Stalled::Failed);
        }
        while let Some(head) = out.queue.front() {
            match self.tcp.try_write(&head.frame[out.head_sent..]) {
                Ok(n) if n > 0 => {
                    out.head_sent += n;
                    if out.head_sent == head.frame.len() {
                        if let Some(origin) = head.origin {
                            self.stats.record_written(origin.elapsed());
                        }
                        out.queue.pop_front();
                        out.head_sent = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                _ => {
                    out.closed = true;
                    return Err(Stalled::Failed);
                }
            }
        }
        Ok(())
    }

    /// Sends a close frame behind any partly written frame (dropping the rest of the queue)
    /// and drains it, waiting at most [`CLOSE_GRACE`] for room at a time.
    async fn close(&self, hub: &Hub, code: u16, reason: &'static str) {
        {
            let mut out = self.lock();
            if out.closed {
                return;
            }
            let keep = usize::from(out.head_sent > 0);
            out.queue.truncate(keep);
            out.snapshot_due = None;
            let frame = ws_frame(Frame::close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            })));
            self.push(&mut out, &frame, None);
        }
        let _ = self.drain(hub, CLOSE_GRACE).await;
        self.lock().closed = true;
    }
}

impl Sink for Client {
    fn offer(&self, event: &Arc<Published>) -> bool {
        let Some(rendered) = messages::render(event, self.locale, &self.filter) else {
            // Not for this client; a client that went away is detached by its own task.
            return true;
        };
        let mut out = self.lock();
        if out.closed {
            return false;
        }
        if let Some(missed) = &mut out.snapshot_due {
            if *missed > 0 {
                *missed += 1;
            }
            return true;
        }
        if out.queue.len() >= self.capacity {
            // Lagged: drop the queue but a partly written frame, and catch up with a
            // snapshot. Everything dropped counts as missed, with this event.
            let keep = usize::from(out.head_sent > 0);
            let dropped = out.queue.len() - keep;
            out.queue.truncate(keep);
            out.snapshot_due = Some(dropped as u64 + 1);
            self.wake.notify_one();
            return true;
        }
        self.push(&mut out, rendered.wire(ws_text_frame), Some(event.origin));
        true
    }

    fn gone(&self) -> bool {
        self.lock().closed
    }

    fn resync(&self) {
        // Events were lost upstream (the cluster relay reconnected): `resync` and a fresh
        // snapshot, unless a snapshot is due anyway.
        let mut out = self.lock();
        if out.closed || out.snapshot_due.is_some() {
            return;
        }
        out.snapshot_due = Some(1);
        self.wake.notify_one();
    }
}

/// The reading side of an upgraded connection, for tungstenite. tungstenite answers pings
/// and close frames by itself; those replies are dropped here, because the [`Client`] owns
/// the sending side of the socket (the client task sends its own pong and close frames).
struct ReadOnly<T>(T);

impl<T: AsyncRead + Unpin> AsyncRead for ReadOnly<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: Unpin> AsyncWrite for ReadOnly<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Detaches the client from the hub when its task ends, however it ends.
struct Attached<'a> {
    hub: &'a Hub,
    id: crate::live::SinkId,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.hub.detach(self.id);
    }
}

/// Runs one WebSocket client until it goes away, is closed for being slow or silent, its
/// credential is revoked (close 4001, checked every [`super::REVOCATION_CHECK`]), or the
/// daemon shuts down (close 1001). `upgraded`: hyper's connection after the 101 answer
/// (read from); `tcp`: the [`duplicate`] of its socket (written to); `token`: what the
/// client authenticated with.
pub async fn run(
    upgraded: Upgraded,
    tcp: TcpStream,
    state: AppState,
    filter: Filter,
    token: String,
) {
    let hub = &state.hub;
    let timeout = Duration::from_secs(state.settings.core.live_send_timeout);
    let client = Arc::new(Client {
        tcp,
        filter,
        locale: state.settings.core.ui_locale,
        capacity: hub.capacity(),
        stats: hub.stats_handle(),
        out: Mutex::new(Out {
            snapshot_due: Some(0),
            ..Out::default()
        }),
        wake: Notify::new(),
    });
    let _attached = Attached {
        hub,
        id: hub.attach(client.clone()),
    };
    // Clients send little: pongs, `snapshot`, close.
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024));
    let mut reader = WebSocketStream::from_raw_socket(
        ReadOnly(TokioIo::new(upgraded)),
        Role::Server,
        Some(config),
    )
    .await;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut last_pong = Instant::now();
    let mut recheck = tokio::time::interval_at(
        tokio::time::Instant::now() + super::REVOCATION_CHECK,
        super::REVOCATION_CHECK,
    );
    let shutdown = state.shutdown.cancelled();
    tokio::pin!(shutdown);
    client.wake.notify_one();
    let (code, reason) = loop {
        tokio::select! {
            biased;
            _ = client.wake.notified() => match client.drain(hub, timeout).await {
                Ok(()) => {}
                Err(Stalled::TooSlow) => {
                    client.stats.slow_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(reason = "too slow: send timed out", "closing a live WebSocket client");
                    break (1008, "too slow: send timed out");
                }
                Err(Stalled::Failed) => {
                    tracing::debug!("live WebSocket client's socket failed");
                    return;
                }
            },
            _ = &mut shutdown => break (1001, "shutting down"),
            _ = recheck.tick() => {
                if super::revoked(&state, &token).await {
                    break (4001, "token revoked");
                }
            }
            _ = ping.tick() => {
                if last_pong.elapsed() > PONG_TIMEOUT {
                    client.stats.slow_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(reason = "no pong", "closing a live WebSocket client");
                    break (1008, "no pong");
                }
                client.send(Frame::ping(Bytes::new()));
            }
            msg = reader.next() => match msg {
                Some(Ok(Message::Pong(_))) => last_pong = Instant::now(),
                Some(Ok(Message::Ping(data))) => {
                    last_pong = Instant::now();
                    client.send(Frame::pong(data));
                }
                Some(Ok(Message::Text(t))) if t.as_str().trim() == "snapshot" => {
                    last_pong = Instant::now();
                    client.send_snapshot(&mut client.lock(), hub);
                }
                Some(Ok(Message::Close(_))) => break (1000, ""),
                None | Some(Err(_)) => {
                    tracing::debug!("live WebSocket client went away");
                    return;
                }
                Some(Ok(_)) => last_pong = Instant::now(),
            },
        }
    };
    tracing::debug!(code, reason, "closing live WebSocket client");
    client.close(hub, code, reason).await;
}
