//! What one client may take from the webhook server: connections (in all
//! and per peer address), time (TLS handshake, request head, body, age of a
//! connection), HTTP/2 streams and reset floods, and the memory of request
//! bodies in flight. Without these, stalled or idle clients could keep both
//! replicas out of memory or out of file descriptors, and then every Calico
//! update fails (`failurePolicy: Fail`).
//!
//! The body limit, [`crate::server::admission::MAX_BODY_BYTES`] (7 MiB):
//! kube-apiserver accepts request bodies up to 3 MiB
//! (`MaxRequestBodyBytes`, k8s.io/apiserver `pkg/server/config.go`), and an
//! AdmissionReview carries the object and the old object, each at most
//! that as JSON, plus the review's own fields.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits of one server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections in all; more are closed at once.
    pub max_connections: usize,
    /// Open connections from one peer address.
    pub max_connections_per_peer: usize,
    pub handshake_timeout: Duration,
    /// For a request's head, also while an HTTP/1.1 connection is idle
    /// between requests (an idle connection is closed after it).
    pub header_read_timeout: Duration,
    /// For a request's body, from its first byte to its last.
    pub body_read_timeout: Duration,
    /// A connection older than this is closed gracefully (requests in
    /// flight finish; the client opens a new one): bounds idle HTTP/2.
    pub max_connection_age: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            max_connections_per_peer: 128,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(600),
            max_streams: 32,
        }
    }
}

/// Request body bytes held in memory at once, by every request of the
/// process together (a review parsed into JSON values takes about 18 times
/// its size): one body of the largest size, or hundreds of usual ones.
pub const BODY_BUDGET_BYTES: usize = 8 * 1024 * 1024;

fn budget() -> &'static Arc<Semaphore> {
    static BUDGET: OnceLock<Arc<Semaphore>> = OnceLock::new();
    BUDGET.get_or_init(|| Arc::new(Semaphore::new(BODY_BUDGET_BYTES)))
}

/// A request body, with its share of the body budget (given back when
/// this is dropped, after the review is answered).
#[derive(Debug)]
pub struct HeldBody {
    pub bytes: Bytes,
    _permit: Option<OwnedSemaphorePermit>,
}

impl std::ops::Deref for HeldBody {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is over the limit of {0} bytes")]
    TooLarge(usize),
    #[error("the request body did not arrive within {0:?}")]
    Timeout(Duration),
    #[error("the server is busy reading other reviews; try again")]
    Busy,
    #[error("cannot read the request body: {0}")]
    Read(String),
}

/// Reads `body` (at most `limit` bytes, within `timeout`), after taking its
/// share of the process's body budget: the length it declares
/// (`Content-Length`, which kube-apiserver always sends), or `limit` when it
/// declares none. The whole share is taken at once, so bodies read together
/// never each hold part of the budget while waiting for the rest; a client
/// that stalls holds its share only until `timeout`.
pub async fn read_body(
    body: Body,
    declared: Option<u64>,
    limit: usize,
    timeout: Duration,
) -> Result<HeldBody, BodyError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let share = match declared {
        Some(n) if n > limit as u64 => return Err(BodyError::TooLarge(limit)),
        Some(n) => n as usize,
        None => limit,
    };
    let permit = match u32::try_from(share) {
        Ok(0) => None,
        Ok(n) => Some(
            tokio::time::timeout_at(deadline, budget().clone().acquire_many_owned(n))
                .await
                .map_err(|_| BodyError::Busy)?
                .map_err(|_| BodyError::Busy)?,
        ),
        Err(_) => return Err(BodyError::TooLarge(limit)),
    };
    let mut body = body;
    let mut buf: Vec<u8> = Vec::with_capacity(share.min(64 * 1024));
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::Timeout(timeout)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Read(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buf.len() + data.len() > share {
            return Err(BodyError::TooLarge(share));
        }
        buf.extend_from_slice(&data);
    }
    Ok(HeldBody {
        bytes: Bytes::from(buf),
        _permit: permit,
    })
}

/// Open connections per peer address.
#[derive(Debug, Default)]
pub struct Peers {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection of a peer (counted until dropped).
#[derive(Debug)]
pub struct PeerConnection {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Peers {
    /// Counts a new connection from `ip`, unless it has `max` open already.
    pub fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PeerConnection> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerConnection {
            peers: self.clone(),
            ip,
        })
    }

    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for PeerConnection {
    fn drop(&mut self) {
        let mut open = self.peers.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit (a
/// container's soft limit is often 1,024, which the connections of a busy
/// API server and our watches could reach). Returns (before, after).
pub fn raise_open_files_limit() -> Option<(u64, u64)> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let before = current.current?;
    let target = current.maximum.unwrap_or(1 << 20);
    if target <= before {
        return Some((before, before));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: current.maximum,
        },
    )
    .ok()?;
    Some((before, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let (_, after) = raise_open_files_limit().expect("readable limits");
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(now.current, Some(after));
        assert!(now.maximum.is_none_or(|m| m == after));
    }

    #[test]
    fn a_peer_is_held_to_its_share_and_gets_it_back() {
        let peers = Arc::new(Peers::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| peers.enter(a, 3).unwrap()).collect();
        assert!(peers.enter(a, 3).is_none(), "a's fourth");
        let other = peers.enter(b, 3).expect("b has its own share");
        drop(held);
        assert_eq!(peers.open(a), 0);
        assert!(peers.enter(a, 3).is_some());
        drop(other);
        assert_eq!(peers.open(b), 0);
    }

    #[tokio::test]
    async fn a_body_is_read_within_its_limits_and_gives_its_budget_back() {
        let before = budget().available_permits();
        let held = read_body(
            Body::from(vec![b'x'; 1000]),
            Some(1000),
            2000,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(held.len(), 1000);
        assert!(budget().available_permits() <= before - 1000);
        drop(held);
        assert!(matches!(
            read_body(
                Body::from(vec![b'x'; 3000]),
                None,
                2000,
                Duration::from_secs(5)
            )
            .await,
            Err(BodyError::TooLarge(2000))
        ));
        assert!(
            matches!(
                read_body(
                    Body::from(vec![b'x'; 10]),
                    Some(3000),
                    2000,
                    Duration::from_secs(5)
                )
                .await,
                Err(BodyError::TooLarge(2000))
            ),
            "a declared length over the limit is refused before reading"
        );
        // A body that never ends: refused at the deadline, holding nothing after.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
        tx.send(Ok(Bytes::from_static(b"{\"a\":"))).await.unwrap();
        let stalled = Body::from_stream(tokio_stream_of(rx));
        assert!(matches!(
            read_body(stalled, None, 2000, Duration::from_millis(200)).await,
            Err(BodyError::Timeout(_))
        ));
        drop(tx);
    }

    fn tokio_stream_of(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
