//! The gRPC echo service `flotilla.demo.v1.Echo`, served on the HTTP port: requests whose
//! `content-type` starts with `application/grpc` come here (over HTTP/2, h2c prior knowledge
//! on a plain port), every other request goes to the HTTP routes.

use std::pin::Pin;
use std::time::Duration;

use flotilla_proto::demo::v1::echo_server::{Echo, EchoServer};
use flotilla_proto::demo::v1::{CountReply, CountRequest, SayReply, SayRequest};
use futures::{Stream, StreamExt};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tonic::codegen::Service;
use tonic::{Code, Status, Streaming};

/// The most replies one `Count` call may ask for.
pub(crate) const COUNT_MAX: u32 = 100_000;
/// The longest pause between two `Count` replies, in milliseconds.
pub(crate) const COUNT_INTERVAL_MAX_MS: u32 = 60_000;

/// Whether a request is a gRPC call (`content-type: application/grpc[+proto|...]`).
pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The answer to a gRPC call under `--fail-status`: that HTTP status, and in the same headers
/// (trailers-only) the gRPC status a client would infer from it (per gRPC's HTTP-to-gRPC status
/// mapping) with `message`, so the client sees why.
pub(crate) fn failure<B: Default>(status: StatusCode, message: &str) -> Response<B> {
    let code = match status {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    let mut resp = Response::new(B::default());
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code as i32));
    // grpc-message is percent-encoded beyond printable ASCII: send only a message that needs none.
    if message
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'%')
        && let Ok(value) = HeaderValue::from_str(message)
    {
        headers.insert("grpc-message", value);
    }
    resp
}

/// The service: answers name the allocation and node that served them.
#[derive(Debug, Clone)]
pub(crate) struct EchoService {
    alloc_id: String,
    node: String,
}

impl EchoService {
    pub(crate) fn server(alloc_id: String, node: String) -> EchoServer<Self> {
        EchoServer::new(Self { alloc_id, node })
    }

    fn reply(&self, message: String) -> SayReply {
        SayReply {
            message,
            alloc_id: self.alloc_id.clone(),
            node: self.node.clone(),
        }
    }
}

/// Runs one gRPC call through the generated server (always ready, never fails as a service:
/// errors are gRPC statuses in the response).
pub(crate) async fn call(
    mut server: EchoServer<EchoService>,
    req: Request<Incoming>,
) -> Response<tonic::body::Body> {
    let Ok(()) =
        std::future::poll_fn(|cx| Service::<Request<Incoming>>::poll_ready(&mut server, cx)).await;
    let Ok(resp) = server.call(req).await;
    resp
}

type ReplyStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn say(
        &self,
        request: tonic::Request<SayRequest>,
    ) -> Result<tonic::Response<SayReply>, Status> {
        let SayRequest { message, fail_code } = request.into_inner();
        if fail_code != 0 {
            let code = i32::try_from(fail_code).map_or(Code::Unknown, Code::from);
            return Err(Status::new(
                code,
                format!(
                    "failing with code {fail_code} as asked (allocation {})",
                    self.alloc_id
                ),
            ));
        }
        Ok(tonic::Response::new(self.reply(message)))
    }

    type CountStream = ReplyStream<CountReply>;

    async fn count(
        &self,
        request: tonic::Request<CountRequest>,
    ) -> Result<tonic::Response<Self::CountStream>, Status> {
        let CountRequest { n, interval_ms } = request.into_inner();
        if n > COUNT_MAX {
            return Err(Status::invalid_argument(format!(
                "n is {n}; at most {COUNT_MAX} replies are sent"
            )));
        }
        if interval_ms > COUNT_INTERVAL_MAX_MS {
            return Err(Status::invalid_argument(format!(
                "interval_ms is {interval_ms}; at most {COUNT_INTERVAL_MAX_MS} is allowed"
            )));
        }
        let interval = Duration::from_millis(interval_ms.into());
        let alloc_id = self.alloc_id.clone();
        let replies = async_stream::stream! {
            for number in 1..=n {
                if number > 1 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                yield Ok(CountReply { number, alloc_id: alloc_id.clone() });
            }
        };
        Ok(tonic::Response::new(Box::pin(replies)))
    }

    type ChatStream = ReplyStream<SayReply>;

    async fn chat(
        &self,
        request: tonic::Request<Streaming<SayRequest>>,
    ) -> Result<tonic::Response<Self::ChatStream>, Status> {
        let me = self.clone();
        let replies = request
            .into_inner()
            .map(move |said| said.map(|said| me.reply(said.message)));
        Ok(tonic::Response::new(Box::pin(replies)))
    }
}
