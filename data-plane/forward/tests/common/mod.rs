//! Shared helpers: a forwarder between a client and a server socket on 127.0.0.1.

#![allow(dead_code)]

use std::io;

use flotilla_forward::{Forwarded, Mode, forward_tcp};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// `client` <-> forwarder <-> `server`, with the forwarder running in its own task.
pub struct Setup {
    pub client: TcpStream,
    pub server: TcpStream,
    pub forward: JoinHandle<io::Result<Forwarded>>,
}

pub async fn setup(mode: Mode) -> Setup {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    // connect() completes through the backlog, before accept().
    let client = TcpStream::connect(front.local_addr().unwrap())
        .await
        .unwrap();
    let (a, _) = front.accept().await.unwrap();
    let b = TcpStream::connect(upstream.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = upstream.accept().await.unwrap();
    let forward = tokio::spawn(forward_tcp(a, b, mode));
    Setup {
        client,
        server,
        forward,
    }
}

/// A listener on 127.0.0.1 with room in its accept queue for a burst of connections
/// (`TcpListener::bind` uses a backlog of 128: a burst past it drops SYNs, and the retries
/// come a second later).
pub fn listener() -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(1024).unwrap()
}

/// A deterministic byte stream (xorshift64*), 8 bytes at a time.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_exact_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            word.copy_from_slice(&self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
    }
}

/// An order-sensitive checksum over whole 8-byte words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksum(u64);

impl Checksum {
    pub fn new() -> Checksum {
        Checksum(0xCBF2_9CE4_8422_2325)
    }

    pub fn update(&mut self, buf: &[u8]) {
        assert_eq!(buf.len() % 8, 0);
        for word in buf.chunks_exact(8) {
            let w = u64::from_le_bytes(word.try_into().unwrap());
            self.0 = (self.0 ^ w).wrapping_mul(0x100_0000_01B3).rotate_left(29);
        }
    }
}

pub const CHUNK: usize = 1 << 20;

/// Writes `chunks` MiB of `Pattern::new(seed)`, then shuts down; returns the checksum sent.
pub async fn send(mut w: impl AsyncWrite + Unpin, seed: u64, chunks: usize) -> Checksum {
    let mut pattern = Pattern::new(seed);
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; CHUNK];
    for _ in 0..chunks {
        pattern.fill(&mut buf);
        sum.update(&buf);
        w.write_all(&buf).await.unwrap();
    }
    w.shutdown().await.unwrap();
    sum
}

/// Reads exactly `chunks` MiB and then EOF; returns the checksum received.
pub async fn receive(mut r: impl AsyncRead + Unpin, chunks: usize) -> Checksum {
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; CHUNK];
    for i in 0..chunks {
        r.read_exact(&mut buf)
            .await
            .unwrap_or_else(|e| panic!("chunk {i} of {chunks}: {e}"));
        sum.update(&buf);
    }
    assert_eq!(r.read(&mut buf).await.unwrap(), 0, "more than expected");
    sum
}

/// The number of open fds of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}
