//! A fake HTTP API for the CLI's tests: canned JSON answers to GETs by path, on a loopback
//! port. Each path answers its documents in order, repeating the last one, so a test can
//! script how a deployment progresses across blocking queries.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Routes = Arc<Mutex<HashMap<String, VecDeque<Value>>>>;

/// Serve `routes` (path without query → answers); returns the base URL.
pub async fn serve(routes: Vec<(String, Vec<Value>)>) -> String {
    let routes: Routes = Arc::new(Mutex::new(
        routes
            .into_iter()
            .map(|(p, answers)| (p, answers.into()))
            .collect(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut index = 0u64;
        while let Ok((mut conn, _)) = listener.accept().await {
            index += 1;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let target = head.split_whitespace().nth(1).unwrap_or_default();
            let path = target.split('?').next().unwrap_or_default();
            let answer = {
                let mut routes = routes.lock().unwrap();
                routes.get_mut(path).and_then(|q| {
                    if q.len() > 1 {
                        q.pop_front()
                    } else {
                        q.front().cloned()
                    }
                })
            };
            let (status, body) = match answer {
                Some(v) => ("200 OK", v.to_string()),
                None => ("404 Not Found", format!("no fake answer for {path}")),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nx-nomad-index: {index}\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
        }
    });
    format!("http://{addr}")
}
