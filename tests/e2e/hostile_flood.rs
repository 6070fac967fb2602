//! 10,000 parallel connections against a real `idbridge serve` process: it stays up, refuses
//! beyond its connection cap (503 with Retry-After, or a close when even refusing is at its
//! bound), serves again afterwards, and its open file descriptors return to where they were.
//! No timing assertion: every wait is on a condition, with a generous ceiling.
#![allow(clippy::unwrap_used)] // test helpers

use std::time::{Duration, Instant};

use super::serve_support::start;

/// Connections opened at once.
const FLOOD: usize = 10_000;
/// The server's `max_connections` (its default).
const MAX: usize = 1024;
/// tokio's listen backlog: connections the kernel completes before the server accepts them.
const BACKLOG: usize = 1024;
/// Ceiling of every wait (a hang guard, never asserted as a duration).
const CEILING: Duration = Duration::from_secs(120);

/// What one connection saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Served,
    Busy,
    Closed,
    Other(String),
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_parallel_connections() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    raise_nofile(FLOOD + 4096);
    // Held connections wait for their request far longer than the flood takes.
    let mut s = start("header_read_timeout_secs = 600\nidle_timeout_secs = 600").await;
    let addr = s.addr();
    let pid = s.child.id().unwrap();
    let get = |s: &super::serve_support::Served| {
        let http = s.http.clone();
        let url = format!("{}/", s.url);
        async move {
            http.get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(get(&s).await, 200);
    let baseline = open_fds(pid);

    // Every connection opened before any sends a byte.
    let conns = futures::future::join_all((0..FLOOD).map(|_| async move {
        let started = Instant::now();
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(c) => return c,
                // A full accept queue or a SYN flood guard: try again (bounded).
                Err(e) if started.elapsed() < CEILING => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot connect within the ceiling: {e}"),
            }
        }
    }))
    .await;
    assert_eq!(conns.len(), FLOOD);
    assert!(s.child_alive(), "the server died under the flood");

    // Then each asks for `/` and reads until the server closes.
    let seen = tokio::time::timeout(
        CEILING,
        futures::future::join_all(conns.into_iter().map(|mut c| async move {
            let _ = c
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out).await;
            let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
            match text.lines().next() {
                None => Seen::Closed,
                Some(l) if l.starts_with("http/1.1 200") => Seen::Served,
                Some(l) if l.starts_with("http/1.1 503") && text.contains("retry-after:") => {
                    Seen::Busy
                }
                Some(_) => Seen::Other(text),
            }
        })),
    )
    .await
    .expect("every connection was answered or closed (hang guard)");
    let count = |k: &Seen| seen.iter().filter(|x| *x == k).count();
    let (served, busy, closed) = (
        count(&Seen::Served),
        count(&Seen::Busy),
        count(&Seen::Closed),
    );
    println!("{FLOOD} connections: {served} served, {busy} refused with 503, {closed} closed");
    let other: Vec<_> = seen
        .iter()
        .filter(|x| matches!(x, Seen::Other(_)))
        .take(3)
        .collect();
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert!(served >= 1, "nothing was served");
    // Held connections take at most MAX permits until their request comes, which is after
    // every connect returned; beyond those, only connections the kernel had completed but the
    // server not yet accepted (its accept queue and its SYN queue) can still get a permit.
    let queued = BACKLOG.min(sysctl("net/core/somaxconn", BACKLOG))
        + 1
        + sysctl("net/ipv4/tcp_max_syn_backlog", 4096);
    assert!(
        served <= MAX + queued,
        "{served} served: more than the cap ({MAX}) plus what the kernel can queue ({queued})"
    );
    assert_eq!(served + busy + closed, FLOOD);
    assert!(
        busy >= 1,
        "no connection was refused with 503 + Retry-After"
    );

    // Afterwards: alive, serving, and back to its file descriptors of before.
    assert!(s.child_alive(), "the server died");
    let started = Instant::now();
    while get(&s).await != 200 {
        assert!(
            started.elapsed() < CEILING,
            "the server does not serve again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    loop {
        let now = open_fds(pid);
        if now <= baseline {
            break;
        }
        assert!(
            started.elapsed() < CEILING,
            "the server holds {now} file descriptors, {baseline} before the flood"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A number from /proc/sys, or `default`.
#[cfg(target_os = "linux")]
fn sysctl(name: &str, default: usize) -> usize {
    std::fs::read_to_string(format!("/proc/sys/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// Open file descriptors of process `pid`.
#[cfg(target_os = "linux")]
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (the server, spawned after,
/// inherits it); fails clearly when the hard limit is below `need`.
#[cfg(target_os = "linux")]
fn raise_nofile(need: usize) {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get().unwrap();
    assert!(
        hard >= need as u64,
        "this test opens {FLOOD} connections and needs RLIMIT_NOFILE of at least {need}; the \
         hard limit here is {hard} (raise it, e.g. `ulimit -Hn 20000` as root or in \
         /etc/security/limits.conf)"
    );
    if soft < hard {
        Resource::NOFILE.set(hard, hard).unwrap();
    }
}
