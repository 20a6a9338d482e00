//! No fd leaks: many short forwarded connections, and forwards dropped mid-transfer, leave
//! the process with the fds it had. Alone in its test binary, so that no other test opens
//! fds meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::{CHUNK, fd_count, listener, setup};
use flotilla_forward::{Method, Mode, forward_tcp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::timeout;

const CONNECTIONS: usize = 200;

/// Waits (yielding, not sleeping a fixed time) until the fd count is back to `baseline`.
async fn fds_back_to(baseline: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = fd_count();
        if now <= baseline {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{now} fds open, {baseline} before: leaked"
        );
        // Closing is done by tasks being dropped on the runtime: let them run.
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fd_leaks() {
    let baseline = fd_count();

    // 1. Many short connections, concurrently: request, half-close, echoed reply, close.
    {
        let upstream = listener();
        let to = upstream.local_addr().unwrap();
        let front = listener();
        let addr = front.local_addr().unwrap();
        let mut servers = JoinSet::new();
        servers.spawn(async move {
            let mut echoes = JoinSet::new();
            for _ in 0..CONNECTIONS {
                let (mut s, _) = upstream.accept().await.unwrap();
                echoes.spawn(async move {
                    let mut request = Vec::new();
                    s.read_to_end(&mut request).await.unwrap();
                    s.write_all(&request).await.unwrap();
                });
            }
            echoes.join_all().await;
        });
        let mut forwards = JoinSet::new();
        servers.spawn(async move {
            for _ in 0..CONNECTIONS {
                let (a, _) = front.accept().await.unwrap();
                forwards.spawn(async move {
                    let b = TcpStream::connect(to).await.unwrap();
                    forward_tcp(a, b, Mode::Auto).await.unwrap()
                });
            }
            for forwarded in forwards.join_all().await {
                assert_eq!(forwarded.method, Method::Splice);
                assert_eq!(forwarded.a_to_b, forwarded.b_to_a);
            }
        });
        let mut clients = JoinSet::new();
        for i in 0..CONNECTIONS {
            clients.spawn(async move {
                let mut c = TcpStream::connect(addr).await.unwrap();
                let request = format!("request number {i}");
                c.write_all(request.as_bytes()).await.unwrap();
                c.shutdown().await.unwrap();
                let mut reply = Vec::new();
                c.read_to_end(&mut reply).await.unwrap();
                assert_eq!(reply, request.as_bytes());
            });
        }
        timeout(Duration::from_secs(60), async {
            clients.join_all().await;
            servers.join_all().await;
        })
        .await
        .expect("short connections hung");
    }
    fds_back_to(baseline).await;

    // 2. Forwards dropped mid-transfer (the proxy shutting a connection down): the future
    // owns the sockets and the pipes, so aborting it closes them all.
    for mode in [Mode::Auto, Mode::CopyOnly] {
        let mut s = setup(mode).await;
        let chunk = vec![1u8; CHUNK];
        s.client.write_all(&chunk).await.unwrap();
        let mut buf = vec![0u8; 4096];
        s.server.read_exact(&mut buf).await.unwrap();
        s.forward.abort();
        assert!(s.forward.await.unwrap_err().is_cancelled());
        // Both peers see their end of the forwarder closed.
        timeout(Duration::from_secs(5), async {
            while !matches!(s.server.read(&mut buf).await, Ok(0) | Err(_)) {}
            while !matches!(s.client.read(&mut buf).await, Ok(0) | Err(_)) {}
        })
        .await
        .expect("an aborted forward left a socket open");
    }
    fds_back_to(baseline).await;
}
