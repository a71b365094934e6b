//! [`call`]: one HTTP call to another service, its failure told apart by whether the service
//! may have acted, as `Oncely::run` needs it to decide between releasing a key and holding it.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oncely::{BoxError, OutcomeUnknown};

/// What a service answered with a success status.
pub struct Answer {
    /// The response's headers.
    pub headers: hyper::HeaderMap,
    /// The response's body.
    pub body: Vec<u8>,
}

/// Sends `request` and answers its response if the status is a success.
///
/// Once the request may have reached the service (no answer, a lost connection, a 5xx), the
/// error is an [`OutcomeUnknown`]: the caller's claim is then held until its lease ends rather
/// than released as if nothing happened. Only a refused connection or a 4xx is a plain error.
pub async fn call(request: hyper::Request<Full<Bytes>>) -> Result<Answer, BoxError> {
    let uri = request.uri().clone();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(error) if error.is_connect() => return Err(error.into()),
        Err(error) => return Err(OutcomeUnknown::new(error).into()),
    };
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(body) => body.to_bytes().to_vec(),
        Err(error) => return Err(OutcomeUnknown::new(error).into()),
    };
    if parts.status.is_success() {
        return Ok(Answer {
            headers: parts.headers,
            body,
        });
    }
    let answer = format!(
        "{uri} answered {}: {}",
        parts.status,
        String::from_utf8_lossy(&body)
    );
    Err(if parts.status.is_server_error() {
        OutcomeUnknown::new(answer).into()
    } else {
        answer.into()
    })
}
