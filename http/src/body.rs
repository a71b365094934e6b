//! [`Body`]: the body the layer hands to the inner service and back to the client.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

/// A request or response body as the layer passes it on: either bytes it buffered (a request
/// it fingerprinted, a response it stored or replays, a problem), or the original stream,
/// possibly behind a prefix the layer already read (a response over the storage limit).
///
/// It implements [`http_body::Body`] with the inner body's error type, so it fits wherever
/// the inner body did: axum's `Router` accepts it as a request body, and hyper serves it as a
/// response body.
pub struct Body<B: http_body::Body> {
    kind: Kind<B>,
}

enum Kind<B: http_body::Body> {
    Buffered {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Stream {
        prefix: Option<Bytes>,
        inner: Pin<Box<B>>,
    },
    Failed {
        prefix: Option<Bytes>,
        error: Option<B::Error>,
    },
}

// No field is ever pinned in place: the inner body is boxed.
impl<B: http_body::Body> Unpin for Body<B> {}

impl<B: http_body::Body> Body<B> {
    /// Buffered bytes, then the trailers if any.
    pub fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Body {
            kind: Kind::Buffered {
                data: Some(data),
                trailers,
            },
        }
    }

    /// The original body, untouched.
    pub fn stream(inner: B) -> Self {
        Self::prefixed(Bytes::new(), inner)
    }

    /// `prefix` (already read from `inner`), then the rest of `inner`.
    pub fn prefixed(prefix: Bytes, inner: B) -> Self {
        Self::prefixed_pinned(prefix, Box::pin(inner))
    }

    pub(crate) fn prefixed_pinned(prefix: Bytes, inner: Pin<Box<B>>) -> Self {
        Body {
            kind: Kind::Stream {
                prefix: Some(prefix),
                inner,
            },
        }
    }

    /// `prefix` (read before the inner body failed), then the inner body's error.
    pub(crate) fn failed(prefix: Bytes, error: B::Error) -> Self {
        Body {
            kind: Kind::Failed {
                prefix: Some(prefix),
                error: Some(error),
            },
        }
    }
}

fn non_empty(data: Option<Bytes>) -> Option<Bytes> {
    data.filter(|d| !d.is_empty())
}

impl<B> http_body::Body for Body<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Buffered { data, trailers } => {
                if let Some(data) = non_empty(data.take()) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            Kind::Stream { prefix, inner } => {
                if let Some(data) = non_empty(prefix.take()) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                inner.as_mut().poll_frame(cx)
            }
            Kind::Failed { prefix, error } => {
                if let Some(data) = non_empty(prefix.take()) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(error.take().map(Err))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered { data, trailers } => {
                data.as_ref().is_none_or(Bytes::is_empty) && trailers.is_none()
            }
            Kind::Stream { prefix, inner } => {
                prefix.as_ref().is_none_or(Bytes::is_empty) && inner.is_end_stream()
            }
            Kind::Failed { prefix, error } => {
                prefix.as_ref().is_none_or(Bytes::is_empty) && error.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Stream { prefix, inner } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let hint = inner.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower().saturating_add(extra));
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper.saturating_add(extra));
                }
                out
            }
            Kind::Failed { .. } => SizeHint::default(),
        }
    }
}

impl<B: http_body::Body> fmt::Debug for Body<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Buffered { .. } => "Buffered",
            Kind::Stream { .. } => "Stream",
            Kind::Failed { .. } => "Failed",
        };
        f.debug_struct("Body").field("kind", &kind).finish()
    }
}

/// What reading a body up to a limit gave.
pub(crate) enum Collected<B: http_body::Body> {
    /// The whole body, within the limit.
    Complete {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// More than the limit: what was read, and the rest still unread.
    TooLarge { prefix: Bytes, rest: Pin<Box<B>> },
    /// The body failed after `prefix`.
    Failed { prefix: Bytes, error: B::Error },
}

/// Reads `body` to its end if it fits in `limit` bytes; never reads more than one frame past it.
pub(crate) async fn collect_limited<B>(mut body: Pin<Box<B>>, limit: usize) -> Collected<B>
where
    B: http_body::Body<Data = Bytes>,
{
    use http_body_util::BodyExt;

    if body.size_hint().lower() > limit as u64 {
        return Collected::TooLarge {
            prefix: Bytes::new(),
            rest: body,
        };
    }
    let mut data = bytes::BytesMut::new();
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                return Collected::Failed {
                    prefix: data.freeze(),
                    error,
                };
            }
        };
        match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if data.len() > limit {
                    return Collected::TooLarge {
                        prefix: data.freeze(),
                        rest: body,
                    };
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.get_or_insert_with(HeaderMap::new).extend(t);
                }
            }
        }
    }
    Collected::Complete {
        data: data.freeze(),
        trailers,
    }
}
