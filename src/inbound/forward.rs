//! Forward: the innermost service of the inbound chain, which hands each call to the
//! app over the pooled connections of [`Upstream`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};

use crate::body::{RequestBody, ResponseBody};
use crate::upstream::Upstream;

/// Forwards the call to the app.
#[derive(Clone)]
pub struct Forward {
    upstream: Arc<Upstream>,
}

impl Forward {
    pub fn new(upstream: Arc<Upstream>) -> Self {
        Forward { upstream }
    }
}

impl tower::Service<Request<RequestBody>> for Forward {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let upstream = self.upstream.clone();
        Box::pin(async move { Ok(upstream.forward(request).await) })
    }
}
