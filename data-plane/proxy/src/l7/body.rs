//! A response body that holds guards (in-flight counts, circuit-breaker slots) until it ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// `B`, plus `G` dropped when the body is finished or dropped.
pub struct Guarded<B, G> {
    inner: B,
    guards: Option<G>,
}

impl<B, G> Guarded<B, G> {
    /// Wraps `inner`, keeping `guards` alive as long as the body streams.
    pub fn new(inner: B, guards: G) -> Self {
        Guarded {
            inner,
            guards: Some(guards),
        }
    }
}

impl<B, G> Body for Guarded<B, G>
where
    B: Body<Data = Bytes> + Unpin,
    G: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = &polled {
            this.guards = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
