//! The one error type of the HTTP layer, and its spec form:
//! `{"errors":[{"code":"…","message":"…","detail":…}]}`.
//!
//! Every lower layer's error is turned into an [`ApiError`] here, so the
//! spec's codes and statuses are decided in one place.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::commands::Rejection;
use crate::log::SubmitError;
use crate::manifest::ManifestError;
use crate::oci::{DigestError, NameError};

/// The spec's error codes (distribution-spec, "Error Codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// From the extensions document, not the main table.
    ExtensionUnknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::ExtensionUnknown => "EXTENSION_UNKNOWN",
        }
    }

    /// The status a code gets unless a handler says otherwise.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown
            | ErrorCode::ExtensionUnknown => StatusCode::NOT_FOUND,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An error answer: a spec code, or an internal failure (500, generic
/// message; the detail goes to the log, never to the client).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Option<ErrorCode>,
    pub message: String,
    /// Rarely present, so boxed: keeps `Result<_, ApiError>` small.
    extra: Option<Box<Extra>>,
}

#[derive(Debug, Default)]
struct Extra {
    detail: Value,
    headers: HeaderMap,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: code.status(),
            code: Some(code),
            message: message.into(),
            extra: None,
        }
    }

    /// A server-side failure. `context` is logged, not sent.
    pub fn internal(context: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %context, "internal error");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: None,
            message: "internal server error".into(),
            extra: None,
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    pub fn with_detail(mut self, detail: Value) -> ApiError {
        self.extra.get_or_insert_default().detail = detail;
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: &str) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.extra.get_or_insert_default().headers.insert(name, v);
        }
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code.map(|c| c.as_str()).unwrap_or("UNKNOWN");
        let extra = self.extra.map(|e| *e).unwrap_or_default();
        let mut error = json!({ "code": code, "message": self.message });
        if !extra.detail.is_null() {
            error["detail"] = extra.detail;
        }
        let body = json!({ "errors": [error] }).to_string();
        let mut response = (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        response.headers_mut().extend(extra.headers);
        response
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> ApiError {
        match e {
            NameError::Tag => ApiError::new(ErrorCode::ManifestInvalid, e.to_string()),
            _ => ApiError::new(ErrorCode::NameInvalid, e.to_string()),
        }
    }
}

impl From<DigestError> for ApiError {
    fn from(e: DigestError) -> ApiError {
        ApiError::new(ErrorCode::DigestInvalid, e.to_string())
    }
}

impl From<ManifestError> for ApiError {
    fn from(e: ManifestError) -> ApiError {
        ApiError::new(ErrorCode::ManifestInvalid, e.to_string())
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> ApiError {
        match e {
            SubmitError::Rejected(r) => r.into(),
            SubmitError::Storage(reason) => ApiError::internal(reason),
            SubmitError::Stopped => {
                ApiError::new(ErrorCode::TooManyRequests, "the registry is shutting down")
                    .with_status(StatusCode::SERVICE_UNAVAILABLE)
            }
            SubmitError::NotReplicated(reason) => ApiError::new(ErrorCode::TooManyRequests, reason)
                .with_status(StatusCode::SERVICE_UNAVAILABLE),
            SubmitError::Follower(reason) => ApiError::new(ErrorCode::Unsupported, reason),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> ApiError {
        let message = r.to_string();
        match r {
            Rejection::MissingReferences { blobs, manifests } => ApiError::new(
                ErrorCode::ManifestBlobUnknown,
                "manifest references unknown content",
            )
            .with_detail(json!({ "blobs": blobs, "manifests": manifests })),
            Rejection::ManifestUnknown => ApiError::new(ErrorCode::ManifestUnknown, message),
            Rejection::TagUnknown => ApiError::new(ErrorCode::ManifestUnknown, message),
            Rejection::BlobUnknown | Rejection::MountSourceMissing => {
                ApiError::new(ErrorCode::BlobUnknown, message)
            }
            Rejection::UploadUnknown | Rejection::UploadRepoMismatch => {
                ApiError::new(ErrorCode::BlobUploadUnknown, message)
            }
            Rejection::UploadOffset { .. } | Rejection::PartOutOfOrder { .. } => {
                ApiError::new(ErrorCode::BlobUploadInvalid, message)
                    .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
            }
            Rejection::UploadExists => ApiError::internal(message),
        }
    }
}

impl From<crate::blobs::object::ObjectError> for ApiError {
    fn from(e: crate::blobs::object::ObjectError) -> ApiError {
        use crate::blobs::object::ObjectError;
        match e {
            ObjectError::NotFound(key) => {
                tracing::error!(%key, "a blob in the state has no object in the store");
                ApiError::new(ErrorCode::BlobUnknown, "blob unknown to registry")
            }
            ObjectError::Unavailable(_) => ApiError::new(
                ErrorCode::TooManyRequests,
                "the blob store is unavailable, try again later",
            )
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .with_header(axum::http::header::RETRY_AFTER, "5"),
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> ApiError {
        ApiError::internal(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorCode; 14] = [
        ErrorCode::BlobUnknown,
        ErrorCode::BlobUploadInvalid,
        ErrorCode::BlobUploadUnknown,
        ErrorCode::DigestInvalid,
        ErrorCode::ManifestBlobUnknown,
        ErrorCode::ManifestInvalid,
        ErrorCode::ManifestUnknown,
        ErrorCode::NameInvalid,
        ErrorCode::NameUnknown,
        ErrorCode::SizeInvalid,
        ErrorCode::Unauthorized,
        ErrorCode::Denied,
        ErrorCode::Unsupported,
        ErrorCode::TooManyRequests,
    ];

    /// The spec's table, spelled exactly as the spec spells it.
    #[test]
    fn codes_are_the_spec_codes() {
        let spec = [
            "BLOB_UNKNOWN",
            "BLOB_UPLOAD_INVALID",
            "BLOB_UPLOAD_UNKNOWN",
            "DIGEST_INVALID",
            "MANIFEST_BLOB_UNKNOWN",
            "MANIFEST_INVALID",
            "MANIFEST_UNKNOWN",
            "NAME_INVALID",
            "NAME_UNKNOWN",
            "SIZE_INVALID",
            "UNAUTHORIZED",
            "DENIED",
            "UNSUPPORTED",
            "TOOMANYREQUESTS",
        ];
        let ours: Vec<&str> = ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(ours, spec);
        for c in ALL {
            assert!(c
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_'));
            assert!(c.status().is_client_error(), "{c:?}");
        }
    }

    #[test]
    fn body_form() {
        let r = ApiError::new(ErrorCode::NameInvalid, "bad name").into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            r.headers()[axum::http::header::CONTENT_TYPE],
            "application/json"
        );
    }
}
