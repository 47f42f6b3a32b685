//! The one place where errors become HTTP statuses. Bodies are plain text, as the OpenFaaS
//! gateway's are (Go's `http.Error`), and always say what to do.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fjord_core::SpecError;
use fjord_runtime_api::RuntimeError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// No or wrong credentials: answered with `WWW-Authenticate: Basic realm="Restricted"`.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials whose scope does not cover the request.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    TooManyRequests(String),
    /// Too many failed authentications from one client address; it may retry after this
    /// many seconds.
    #[error(
        "too many failed authentication attempts from your address or for this user: try again in {retry_after} s"
    )]
    AuthRateLimited { retry_after: u64 },
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    GatewayTimeout(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests(_) | ApiError::AuthRateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<fjord_control::ControlError> for ApiError {
    fn from(e: fjord_control::ControlError) -> Self {
        use fjord_control::ControlError;
        match e {
            ControlError::BadRequest(m) => ApiError::BadRequest(m),
            ControlError::NotFound(m) => ApiError::NotFound(m),
            ControlError::Forbidden(m) => ApiError::Forbidden(m),
            ControlError::Conflict(m) => ApiError::Conflict(m),
            ControlError::Upstream(m) => ApiError::BadGateway(m),
            ControlError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<fjord_core::names::NameError> for ApiError {
    fn from(e: fjord_core::names::NameError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Invalid(p) => ApiError::BadRequest(p),
            RuntimeError::NotFound(n) => ApiError::NotFound(format!("function {n} not found")),
            RuntimeError::Io(e) => ApiError::Internal(format!("runtime error: {e}")),
        }
    }
}

impl From<fjord_store::StoreError> for ApiError {
    fn from(e: fjord_store::StoreError) -> Self {
        ApiError::Internal(format!("state store error: {e}"))
    }
}

impl From<fjord_queue::QueueError> for ApiError {
    fn from(e: fjord_queue::QueueError) -> Self {
        use fjord_queue::QueueError;
        match e {
            QueueError::Duplicate(id) => ApiError::Conflict(format!(
                "async call {id} already exists: send a new X-Call-Id (or none, to get a generated one)"
            )),
            QueueError::Closed => {
                ApiError::Unavailable("the async queue is shutting down; retry shortly".into())
            }
            QueueError::Storage(e) => ApiError::Internal(format!("async queue: {e}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            ApiError::AuthRateLimited { retry_after } => Some(HeaderValue::from(*retry_after)),
            _ if status == StatusCode::SERVICE_UNAVAILABLE
                || status == StatusCode::TOO_MANY_REQUESTS =>
            {
                Some(HeaderValue::from_static("1"))
            }
            _ => None,
        };
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(%status, "{self}");
        }
        let mut body = self.to_string();
        body.push('\n');
        let mut r = (status, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(v) = retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body was never read, so the connection cannot carry another
            // request: say so, or a client would reuse it and fail its next request.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNAUTHORIZED {
            // As OpenFaaS: clients (and browsers) know to offer credentials.
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Restricted\""),
            );
        }
        r
    }
}
