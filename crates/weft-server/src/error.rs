//! Errors in OpenAI's JSON shape: `{"error": {"message", "type", "param", "code"}}`, with the
//! HTTP status a client expects.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use weft_engine::EngineError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            param: None,
        }
    }

    /// 400 for a request field out of range or of the wrong kind.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param.to_owned()),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                "service_unavailable_error"
            }
            s if s.is_server_error() => "internal_server_error",
            _ => "invalid_request_error",
        }
    }

    /// The JSON body (also sent as an SSE event when a stream fails midway).
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind(),
                "param": self.param,
                "code": self.status.as_u16(),
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::QueueFull { .. } | EngineError::Stopped => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            EngineError::ContextOverflow { tokens, ctx_size } => ApiError::invalid(
                "messages",
                format!(
                    "This model's maximum context length is {ctx_size} tokens. However, your \
                     request has {tokens} input tokens. Please reduce the length of the input."
                ),
            ),
            EngineError::Sampling(s) => ApiError::bad_request(s.to_string()),
            EngineError::TooManyRequests { count, limit } => ApiError::invalid(
                "n",
                format!(
                    "this request asks for {count} completions (n x prompts) but the server \
                     queues at most {limit} at a time"
                ),
            ),
            EngineError::EmptyPrompt | EngineError::TokenOutOfRange { .. } => {
                ApiError::invalid("prompt", e.to_string())
            }
            EngineError::InvalidMedia(_) => ApiError::invalid("messages", e.to_string()),
            EngineError::TextTooShort { .. } | EngineError::Config(_) | EngineError::Batch(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}
