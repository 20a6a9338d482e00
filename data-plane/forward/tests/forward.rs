//! flotilla-forward over real sockets on 127.0.0.1.

mod common;

use std::time::Duration;

use common::{CHUNK, receive, send, setup};
use flotilla_forward::{Ktls, Method, Mode, TCP_AVAILABLE_ULP, detect_ktls, forward_tcp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// A failure guard only: every wait below ends on a condition long before it.
const GUARD: Duration = Duration::from_secs(5);
/// A guard for the 64 MiB transfers in an unoptimised test build.
const BULK_GUARD: Duration = Duration::from_secs(120);

/// 64 MiB each way, both ways at once, checksums compared at the other end.
async fn bulk_both_ways(mode: Mode) -> Method {
    const CHUNKS: usize = 64;
    let s = setup(mode).await;
    let (client_r, client_w) = s.client.into_split();
    let (server_r, server_w) = s.server.into_split();
    let up = tokio::spawn(send(client_w, 1, CHUNKS));
    let down = tokio::spawn(send(server_w, 2, CHUNKS));
    let up_seen = tokio::spawn(receive(server_r, CHUNKS));
    let down_seen = tokio::spawn(receive(client_r, CHUNKS));
    let all = async {
        let sent_up = up.await.unwrap();
        let sent_down = down.await.unwrap();
        assert_eq!(
            up_seen.await.unwrap(),
            sent_up,
            "client -> server bytes differ"
        );
        assert_eq!(
            down_seen.await.unwrap(),
            sent_down,
            "server -> client bytes differ"
        );
        s.forward.await.unwrap().unwrap()
    };
    let forwarded = timeout(BULK_GUARD, all).await.expect("bulk transfer hung");
    assert_eq!(forwarded.a_to_b, (CHUNKS * CHUNK) as u64);
    assert_eq!(forwarded.b_to_a, (CHUNKS * CHUNK) as u64);
    forwarded.method
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_moves_64_mib_each_way() {
    assert_eq!(bulk_both_ways(Mode::Auto).await, Method::Splice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_only_moves_64_mib_each_way() {
    assert_eq!(bulk_both_ways(Mode::CopyOnly).await, Method::Copy);
}

/// The client half-closes; the server reads to EOF, replies and closes; the client gets the
/// reply.
async fn half_close(mode: Mode, method: Method) {
    let mut s = setup(mode).await;
    let run = async {
        s.client.write_all(b"request body").await.unwrap();
        s.client.shutdown().await.unwrap();

        let mut request = Vec::new();
        s.server.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"request body");
        s.server.write_all(b"reply to: ").await.unwrap();
        s.server.write_all(&request).await.unwrap();
        drop(s.server);

        let mut reply = Vec::new();
        s.client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply to: request body");
        s.forward.await.unwrap().unwrap()
    };
    let forwarded = timeout(GUARD, run).await.expect("half-close hung");
    assert_eq!(forwarded.a_to_b, 12);
    assert_eq!(forwarded.b_to_a, 22);
    assert_eq!(forwarded.method, method);
}

#[tokio::test]
async fn half_close_is_propagated_splice() {
    half_close(Mode::Auto, Method::Splice).await;
}

#[tokio::test]
async fn half_close_is_propagated_copy() {
    half_close(Mode::CopyOnly, Method::Copy).await;
}

/// The server half-closes first and the client keeps sending afterwards.
#[tokio::test]
async fn half_close_from_the_server_side() {
    let mut s = setup(Mode::Auto).await;
    let run = async {
        s.server.write_all(b"banner").await.unwrap();
        s.server.shutdown().await.unwrap();
        let mut banner = Vec::new();
        s.client.read_to_end(&mut banner).await.unwrap();
        assert_eq!(banner, b"banner");
        s.client.write_all(b"after eof").await.unwrap();
        s.client.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"after eof");
        s.forward.await.unwrap().unwrap()
    };
    let forwarded = timeout(GUARD, run).await.expect("half-close hung");
    assert_eq!((forwarded.a_to_b, forwarded.b_to_a), (9, 6));
}

/// Waits for the forward to end after a reset; it must, whatever its result.
async fn ends_promptly(
    forward: tokio::task::JoinHandle<std::io::Result<flotilla_forward::Forwarded>>,
) {
    let result = timeout(GUARD, forward)
        .await
        .expect("forward_tcp did not return after a reset")
        .unwrap();
    // A reset is an error for the forward (like tokio::io::copy_bidirectional).
    assert!(result.is_err(), "{result:?}");
}

/// Waits until `sock` sees the end of the stream (EOF or reset), reading what is left.
async fn sees_end(sock: &mut TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    timeout(GUARD, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the other side was not closed");
}

#[tokio::test]
async fn client_reset_ends_the_forward() {
    for mode in [Mode::Auto, Mode::CopyOnly] {
        let mut s = setup(mode).await;
        s.client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        s.server.read_exact(&mut buf).await.unwrap();
        s.client.set_zero_linger().unwrap();
        drop(s.client);
        ends_promptly(s.forward).await;
        sees_end(&mut s.server).await;
    }
}

#[tokio::test]
async fn server_reset_ends_the_forward() {
    for mode in [Mode::Auto, Mode::CopyOnly] {
        let mut s = setup(mode).await;
        s.server.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        s.client.read_exact(&mut buf).await.unwrap();
        s.server.set_zero_linger().unwrap();
        drop(s.server);
        ends_promptly(s.forward).await;
        sees_end(&mut s.client).await;
    }
}

/// The client half-closes, the forwarder passes the EOF on and that direction is done; the
/// other direction now waits only on the server (which never answers). The client then
/// resets: only the error watch on the client socket can notice, and it must.
#[tokio::test]
async fn client_reset_after_half_close_ends_the_forward() {
    for mode in [Mode::Auto, Mode::CopyOnly] {
        let mut s = setup(mode).await;
        s.client.write_all(b"request").await.unwrap();
        s.client.shutdown().await.unwrap();
        let mut request = Vec::new();
        timeout(GUARD, s.server.read_to_end(&mut request))
            .await
            .expect("EOF not forwarded")
            .unwrap();
        assert_eq!(request, b"request");
        // client -> server is finished; server -> client waits for the server.
        s.client.set_zero_linger().unwrap();
        drop(s.client);
        ends_promptly(s.forward).await;
        // The forwarder closed its side: the server's reply has nowhere to go.
        let mut buf = [0u8; 1];
        let closed = timeout(GUARD, async {
            loop {
                if s.server.write_all(b"late reply").await.is_err() {
                    break;
                }
                if matches!(s.server.read(&mut buf).await, Ok(0) | Err(_)) {
                    break;
                }
            }
        });
        closed.await.expect("the server side was not closed");
    }
}

/// The client resets while the forwarder is writing a large request to a server that does
/// not read it.
#[tokio::test]
async fn client_reset_while_server_does_not_read_ends_the_forward() {
    for mode in [Mode::Auto, Mode::CopyOnly] {
        let s = setup(mode).await;
        let (client, server) = (s.client, s.server);
        // Queue more than the client's send buffer holds, without blocking.
        let chunk = vec![7u8; CHUNK];
        let mut queued = 0;
        while queued < 8 * CHUNK {
            client.writable().await.unwrap();
            match client.try_write(&chunk) {
                Ok(n) => queued += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Full: some of it has reached the server, or will.
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        // Wait until bytes are at the server, so the forwarder is between the two.
        server.readable().await.unwrap();
        client.set_zero_linger().unwrap();
        drop(client);
        ends_promptly(s.forward).await;
        drop(server);
    }
}

/// A listener whose accepted connections are forwarded to `to`, in `mode`.
async fn forwarder(mode: Mode, to: std::net::SocketAddr) -> std::net::SocketAddr {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (a, _) = front.accept().await.unwrap();
            tokio::spawn(async move {
                let b = TcpStream::connect(to).await.unwrap();
                forward_tcp(a, b, mode).await
            });
        }
    });
    addr
}

/// An upstream that resets right after accept: the client sees its connection end.
#[tokio::test]
async fn reset_right_after_accept() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = upstream.accept().await.unwrap();
            s.set_zero_linger().unwrap();
            drop(s);
        }
    });
    let addr = forwarder(Mode::Auto, to).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    // The request may or may not get in before the reset reaches the client.
    let _ = client.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
    sees_end(&mut client).await;
}

/// The buffered copy for any streams (TLS legs): counts and half-close, in memory.
#[tokio::test]
async fn forward_streams_copies_both_ways_with_half_close() {
    let (mut client, mut a) = tokio::io::duplex(4096);
    let (mut b, mut server) = tokio::io::duplex(4096);
    let forward =
        tokio::spawn(async move { flotilla_forward::forward_streams(&mut a, &mut b).await });
    let big = vec![3u8; 1 << 20];
    let run = async {
        let up = async {
            client.write_all(&big).await.unwrap();
            client.shutdown().await.unwrap();
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).await.unwrap();
            reply
        };
        let down = async {
            let mut request = Vec::new();
            server.read_to_end(&mut request).await.unwrap();
            server.write_all(b"ok").await.unwrap();
            server.shutdown().await.unwrap();
            request.len()
        };
        let (reply, got) = tokio::join!(up, down);
        assert_eq!(reply, b"ok");
        assert_eq!(got, 1 << 20);
        forward.await.unwrap().unwrap()
    };
    let counts = timeout(GUARD, run).await.expect("forward_streams hung");
    assert_eq!(counts, (1 << 20, 2));
}

#[test]
fn ktls_detection_matches_the_kernel_list() {
    let detected = detect_ktls();
    match std::fs::read_to_string(TCP_AVAILABLE_ULP) {
        Ok(list) if list.split_whitespace().any(|ulp| ulp == "tls") => {
            assert_eq!(detected, Ktls::Available);
        }
        Ok(list) => match detected {
            Ktls::Unavailable(reason) => {
                assert!(reason.contains("kernel TLS ULP not loaded"), "{reason}");
                assert!(reason.contains(TCP_AVAILABLE_ULP), "{reason}");
                assert!(reason.contains(list.trim()), "{reason} vs {list:?}");
            }
            Ktls::Available => panic!("{TCP_AVAILABLE_ULP} lists {list:?}, without tls"),
        },
        Err(_) => assert!(matches!(detected, Ktls::Unavailable(_)), "{detected:?}"),
    }
}
