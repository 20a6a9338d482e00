use std::time::Duration;

use anyhow::{Context, anyhow};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A path segment with `/` and other reserved characters escaped (periodic and dispatched
/// children have ids like `report/periodic-1700000000`).
pub fn seg(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A small client for the v1 HTTP API.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(address: &str) -> anyhow::Result<Self> {
        let mut base = address.trim_end_matches('/').to_string();
        if !base.contains("://") {
            base = format!("http://{base}");
        }
        if !base.starts_with("http://") {
            return Err(anyhow!(
                "--address {address:?}: only http:// addresses are supported"
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        Ok(Self { base, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn check(
        &self,
        path: &str,
        resp: reqwest::Response,
    ) -> anyhow::Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(anyhow!("{} {path}: {}: {}", "API", status, body.trim_end()))
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow!("cannot reach the API at {}: {e}", self.base)
    }

    /// GET a JSON document; with `index`, a blocking query that returns when the state passes it
    /// (or after 30 s). Returns the body and the `X-Nomad-Index`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        index: Option<u64>,
    ) -> anyhow::Result<(T, u64)> {
        self.get_wait(path, index, Duration::from_secs(30)).await
    }

    /// [`Client::get`] with the longest a blocking query may wait.
    pub async fn get_wait<T: DeserializeOwned>(
        &self,
        path: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> anyhow::Result<(T, u64)> {
        let mut req = self.http.get(self.url(path));
        if let Some(i) = index {
            let wait = format!("{}ms", wait.as_millis().max(1));
            req = req.query(&[("index", i.to_string()), ("wait", wait)]);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let resp = self.check(path, resp).await?;
        let index = resp
            .headers()
            .get("x-nomad-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = resp
            .json()
            .await
            .with_context(|| format!("decoding the answer of {path}"))?;
        Ok((body, index))
    }

    /// Sends `req` (built for `path`), checks the status and decodes the JSON answer.
    async fn send_json<T: DeserializeOwned>(
        &self,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let resp = self.check(path, resp).await?;
        resp.json()
            .await
            .with_context(|| format!("decoding the answer of {path}"))
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send_json(path, self.http.post(self.url(path)).json(body))
            .await
    }

    /// PUT a JSON body with query parameters.
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: &B,
    ) -> anyhow::Result<T> {
        self.send_json(path, self.http.put(self.url(path)).query(query).json(body))
            .await
    }

    /// GET a JSON document with query parameters.
    pub async fn get_query<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        self.send_json(path, self.http.get(self.url(path)).query(query))
            .await
    }

    pub async fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        self.send_json(path, self.http.delete(self.url(path)).query(query))
            .await
    }

    /// A raw streaming GET (logs).
    pub async fn stream(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<reqwest::Response> {
        let resp = self
            .http
            .get(self.url(path))
            .query(query)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.check(path, resp).await
    }
}
