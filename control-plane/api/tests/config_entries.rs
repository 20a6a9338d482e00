//! Config entries through the HTTP API: the real router over a `MemStore`, on a loopback port.

use std::sync::Arc;

use flotilla_api::{ApiState, router};
use flotilla_store::{MemStore, Store};
use serde_json::Value;

async fn start() -> (String, Arc<MemStore>) {
    let store = Arc::new(MemStore::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(ApiState {
        store: store.clone(),
        rpc_addr: addr,
        http: reqwest::Client::new(),
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), store)
}

async fn call(method: reqwest::Method, url: String, body: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

const SPLITTER: &str = r#"{"Kind":"service-splitter","Name":"web","Splits":[
    {"Weight":90,"ServiceSubset":"v1"},{"Weight":10,"ServiceSubset":"v2"}]}"#;

#[tokio::test]
async fn write_read_list_delete_with_cas_and_cross_checks() {
    use reqwest::Method;
    let (base, store) = start().await;
    let put = |body: &'static str, q: &'static str| {
        call(Method::PUT, format!("{base}/v1/config{q}"), Some(body))
    };

    // Invalid: every problem at once, with the JSON path.
    let (status, body) = put(
        r#"{"Kind":"service-splitter","Splits":[{"Weight":-5},{"Weight":50,"Bogus":1}]}"#,
        "",
    )
    .await;
    assert_eq!(status, 400);
    let text = body.as_str().unwrap();
    assert!(text.contains("Splits[1]: Bogus: unknown field"), "{text}");

    let (status, body) = put(
        r#"{"Kind":"service-splitter","Splits":[{"Weight":-5},{"Weight":50,"ServiceSubset":"x"}]}"#,
        "",
    )
    .await;
    assert_eq!(status, 400);
    let text = body.as_str().unwrap();
    assert!(text.contains("missing Name"), "{text}");
    assert!(text.contains("weight -5 is out of range"), "{text}");
    assert!(text.contains("sum to 45.00"), "{text}");

    // A splitter needs an L7 protocol and the resolver's subsets.
    let (status, body) = put(SPLITTER, "").await;
    assert_eq!(status, 400);
    assert!(
        body.as_str().unwrap().contains("its protocol is \"tcp\""),
        "{body}"
    );
    let (status, body) = put(
        r#"{"Kind":"service-defaults","Name":"web","Protocol":"http"}"#,
        "?cas=0",
    )
    .await;
    assert_eq!((status, body), (200, Value::Bool(true)));
    // cas=0 on an existing entry is refused.
    let (status, body) = put(
        r#"{"Kind":"service-defaults","Name":"web","Protocol":"http2"}"#,
        "?cas=0",
    )
    .await;
    assert_eq!((status, body), (200, Value::Bool(false)));
    let (_, body) = put(
        r#"{"Kind":"service-resolver","Name":"web","Subsets":{
            "v1":{"Filter":"Service.Tags contains \"v1\""},"v2":{"Filter":"\"v2\" in Service.Tags"}}}"#,
        "",
    )
    .await;
    assert_eq!(body, Value::Bool(true));
    let (status, body) = put(SPLITTER, "").await;
    assert_eq!((status, body), (200, Value::Bool(true)));

    // Read, list, blocking read.
    let (status, entry) = call(
        Method::GET,
        format!("{base}/v1/config/service-splitter/web"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(entry["Kind"], "service-splitter");
    assert_eq!(entry["Splits"][1]["ServiceSubset"], "v2");
    let modify = entry["ModifyIndex"].as_u64().unwrap();
    assert!(modify > 0);
    let (_, list) = call(
        Method::GET,
        format!("{base}/v1/config/service-defaults"),
        None,
    )
    .await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (status, body) = call(
        Method::GET,
        format!("{base}/v1/config/service-router/web"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        body.as_str()
            .unwrap()
            .contains("kind \"service-router\", name \"web\"")
    );
    let (status, _) = call(Method::GET, format!("{base}/v1/config/nope"), None).await;
    assert_eq!(status, 400);

    let index = store.latest_index();
    let waiter = tokio::spawn(call(
        Method::GET,
        format!("{base}/v1/config/service-defaults?index={index}&wait=10s"),
        None,
    ));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    put(
        r#"{"Kind":"service-defaults","Name":"api","Protocol":"grpc"}"#,
        "",
    )
    .await;
    let (_, list) = waiter.await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);

    // Dependents protect their resolver and defaults.
    let (status, body) = call(
        Method::DELETE,
        format!("{base}/v1/config/service-resolver/web"),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body.as_str()
            .unwrap()
            .contains("would invalidate service-splitter \"web\""),
        "{body}"
    );
    let (status, _) = put(
        r#"{"Kind":"service-defaults","Name":"web","Protocol":"tcp"}"#,
        "",
    )
    .await;
    assert_eq!(status, 400);

    // Delete with a stale cas, then the right one.
    let url = format!("{base}/v1/config/service-splitter/web");
    let (_, body) = call(Method::DELETE, format!("{url}?cas={}", modify + 100), None).await;
    assert_eq!(body, Value::Bool(false));
    let (_, body) = call(Method::DELETE, format!("{url}?cas={modify}"), None).await;
    assert_eq!(body, Value::Bool(true));
    let (status, _) = call(Method::GET, url, None).await;
    assert_eq!(status, 404);
    let (status, _) = call(
        Method::DELETE,
        format!("{base}/v1/config/service-resolver/web"),
        None,
    )
    .await;
    assert_eq!(status, 200);
}
