//! How `status` (a process of its own) learns the server's count of kept
//! calico-node writes: it reads the server's `/metrics` over plain HTTP,
//! from every URL it is given (one per replica: each counts since its own
//! start), and adds them up.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::metrics::NODE_CONDITIONS_KEPT;

/// The most a `/metrics` response may hold.
const MAX_RESPONSE: usize = 8 * 1024 * 1024;

/// How long one read of `/metrics` may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The counter family as `/metrics` declares it (without `_total`).
fn family() -> &'static str {
    NODE_CONDITIONS_KEPT
        .strip_suffix("_total")
        .expect("a counter ends in _total")
}

/// The count of kept calico-node writes, as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeptCount {
    /// The sum over every server read; `None` when any could not be read
    /// (a partial sum would look like a whole one).
    pub total: Option<u64>,
    /// By the reason the write carried (`CalicoIsUp`, `CalicoIsDown`, `Other`).
    pub by_reason: BTreeMap<String, u64>,
    /// The URLs read.
    pub sources: Vec<String>,
    /// Why the count is unknown.
    pub error: Option<String>,
}

impl KeptCount {
    /// One line for `status`.
    pub fn describe(&self) -> String {
        match (self.total, &self.error) {
            (Some(total), _) => {
                let reasons: Vec<String> = self
                    .by_reason
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect();
                let servers = match self.sources.len() {
                    1 => String::new(),
                    n => format!(", {n} servers"),
                };
                if reasons.is_empty() {
                    format!("{total} since start{servers}")
                } else {
                    format!("{total} since start ({}{servers})", reasons.join(", "))
                }
            }
            (None, Some(e)) => format!("unknown ({e})"),
            (None, None) => "unknown".into(),
        }
    }
}

/// Reads the count from every URL in `urls` (none: unknown, and says how
/// to give one).
pub async fn kept(urls: &[String]) -> KeptCount {
    let mut count = KeptCount {
        sources: urls.to_vec(),
        total: Some(0),
        ..Default::default()
    };
    if urls.is_empty() {
        count.total = None;
        count.error = Some(
            "the server counts them; pass --metrics-url http://<server>:8080/metrics, e.g. after kubectl port-forward, to read it"
                .into(),
        );
        return count;
    }
    let mut errors = Vec::new();
    for url in urls {
        let read = match tokio::time::timeout(TIMEOUT, get(url)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
        };
        match read.and_then(|text| kept_counts(&text)) {
            Ok(by_reason) => {
                for (reason, n) in by_reason {
                    *count.by_reason.entry(reason).or_default() += n;
                    count.total = count.total.map(|t| t.saturating_add(n));
                }
            }
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    if !errors.is_empty() {
        count.total = None;
        count.error = Some(format!("cannot read {}", errors.join("; ")));
    }
    count
}

/// The kept-condition counts in a `/metrics` text, by reason; an error when
/// the text does not declare the counter (not this server, or an older one).
pub fn kept_counts(text: &str) -> Result<BTreeMap<String, u64>, String> {
    let declared = format!("# TYPE {} counter", family());
    if !text.lines().any(|l| l.trim_end() == declared) {
        return Err(format!("no {NODE_CONDITIONS_KEPT} in the metrics"));
    }
    let mut out = BTreeMap::new();
    let prefix = format!("{NODE_CONDITIONS_KEPT}{{");
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let reason = labels
            .split(',')
            .find_map(|l| l.strip_prefix("reason=\""))
            .and_then(|r| r.strip_suffix('"'))
            .unwrap_or("Other");
        let value: f64 = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("unreadable sample {line:?}"))?;
        *out.entry(reason.to_string()).or_default() += value as u64;
    }
    Ok(out)
}

/// `http://host:port/path` -> (`host:port`, `host`, `/path`).
fn parse_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs (the metrics port is plain HTTP)")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    if authority.is_empty() {
        return Err("no host".into());
    }
    let port_ok = |p: &str| p.parse::<u16>().map(|_| ()).map_err(|_| "bad port");
    let (addr, host) = if authority.starts_with('[') {
        // [v6] or [v6]:port
        let close = authority.find(']').ok_or("bad IPv6 host")?;
        let (host, rest) = authority.split_at(close + 1);
        match rest.strip_prefix(':') {
            Some(p) => {
                port_ok(p)?;
                (authority.to_string(), host.to_string())
            }
            None if rest.is_empty() => (format!("{authority}:80"), host.to_string()),
            None => return Err("bad IPv6 host".into()),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => {
                port_ok(p)?;
                (authority.to_string(), h.to_string())
            }
            None => (format!("{authority}:80"), authority.to_string()),
        }
    };
    Ok((addr, host, path.to_string()))
}

/// A plain HTTP/1.1 GET (one request, then the connection closes); the
/// body of a 200 response.
async fn get(url: &str) -> Result<String, String> {
    let (addr, host, path) = parse_url(url)?;
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| e.to_string())?;
    if raw.len() > MAX_RESPONSE {
        return Err(format!("response over {MAX_RESPONSE} bytes"));
    }
    body_of(&raw)
}

/// The body of a raw HTTP/1.x response, when its status is 200 (a chunked
/// body is decoded).
fn body_of(raw: &[u8]) -> Result<String, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("not an HTTP response")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "not an HTTP response")?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or("not an HTTP response")?;
    if status != "200" {
        return Err(format!("HTTP {status}"));
    }
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    String::from_utf8(body).map_err(|_| "the body is not UTF-8".into())
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk")?;
        let size_text = std::str::from_utf8(&body[..end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        body = &body[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_the_servers_own_metrics_text() {
        let (registry, m) = crate::metrics::registry();
        let text = crate::metrics::encode(&registry);
        let zero = |r: &str| (r.to_string(), 0);
        assert_eq!(
            kept_counts(&text),
            Ok([zero("CalicoIsDown"), zero("CalicoIsUp"), zero("Other")].into()),
            "declared, none yet"
        );
        m.node_condition_kept(Some("CalicoIsUp"));
        m.node_condition_kept(Some("CalicoIsDown"));
        m.node_condition_kept(Some("CalicoIsDown"));
        let text = crate::metrics::encode(&registry);
        assert_eq!(
            kept_counts(&text),
            Ok([
                ("CalicoIsDown".to_string(), 2),
                ("CalicoIsUp".to_string(), 1),
                zero("Other")
            ]
            .into())
        );
        assert!(kept_counts("# TYPE something_else counter\n").is_err());
    }

    #[test]
    fn the_count_says_what_it_is_and_when_it_is_unknown() {
        let known = KeptCount {
            total: Some(3),
            by_reason: [
                ("CalicoIsDown".into(), 1),
                ("CalicoIsUp".into(), 2),
                ("Other".into(), 0),
            ]
            .into(),
            sources: vec!["a".into(), "b".into()],
            error: None,
        };
        assert_eq!(
            known.describe(),
            "3 since start (CalicoIsDown 1, CalicoIsUp 2, 2 servers)"
        );
        let none = KeptCount {
            total: Some(0),
            sources: vec!["a".into()],
            ..Default::default()
        };
        assert_eq!(none.describe(), "0 since start");
        let unknown = KeptCount {
            error: Some("cannot read http://x: connection refused".into()),
            ..Default::default()
        };
        assert_eq!(
            unknown.describe(),
            "unknown (cannot read http://x: connection refused)"
        );
    }

    #[test]
    fn urls() {
        for (url, want) in [
            (
                "http://127.0.0.1:8080/metrics",
                Some(("127.0.0.1:8080", "127.0.0.1", "/metrics")),
            ),
            (
                "http://localhost:8080",
                Some(("localhost:8080", "localhost", "/metrics")),
            ),
            (
                "http://example/metrics",
                Some(("example:80", "example", "/metrics")),
            ),
            ("http://[::1]:8080/m", Some(("[::1]:8080", "[::1]", "/m"))),
            ("https://127.0.0.1:8080/metrics", None),
            ("http:///metrics", None),
            ("http://h:x/metrics", None),
        ] {
            let got = parse_url(url).ok();
            let want = want.map(|(a, h, p)| (a.to_string(), h.to_string(), p.to_string()));
            assert_eq!(got, want, "{url}");
        }
    }

    #[test]
    fn responses() {
        assert_eq!(
            body_of(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").as_deref(),
            Ok("ok")
        );
        assert_eq!(
            body_of(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n3;x=1\r\n!!!\r\n0\r\n\r\n")
                .as_deref(),
            Ok("ok!!!")
        );
        assert_eq!(
            body_of(b"HTTP/1.1 404 Not Found\r\n\r\n"),
            Err("HTTP 404".into())
        );
        assert!(
            body_of(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nff\r\nshort").is_err()
        );
        assert!(body_of(b"garbage").is_err());
    }

    #[tokio::test]
    async fn an_unreachable_server_leaves_the_count_unknown() {
        // A port nothing listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/metrics");
        let c = kept(std::slice::from_ref(&url)).await;
        assert_eq!(c.total, None);
        assert!(
            c.describe()
                .starts_with(&format!("unknown (cannot read {url}: ")),
            "{}",
            c.describe()
        );
        let c = kept(&[]).await;
        assert!(
            c.describe().contains("pass --metrics-url"),
            "{}",
            c.describe()
        );
    }
}
