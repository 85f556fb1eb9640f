//! Admission review decoding and encoding (`admission.k8s.io/v1`), on the
//! kube-rs admission types. Bad input gets a clear error response, never a
//! panic.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;

/// The largest review body read (two objects of at most ~1.5 MiB each, with
/// room to spare), as controller-runtime's webhook server does.
pub const MAX_BODY_BYTES: usize = 7 * 1024 * 1024;

/// What the webhook needs of one review.
#[derive(Debug)]
pub struct Review {
    pub request: AdmissionRequest<DynamicObject>,
    pub object: Option<Value>,
    pub old_object: Option<Value>,
}

impl Review {
    pub fn kind(&self) -> &str {
        &self.request.kind.kind
    }

    pub fn namespaced_name(&self) -> String {
        match &self.request.namespace {
            Some(ns) if !ns.is_empty() => format!("{ns}/{}", self.request.name),
            _ => self.request.name.clone(),
        }
    }

    pub fn operation(&self) -> &'static str {
        match self.request.operation {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the body is not a JSON AdmissionReview: {0}")]
    Json(serde_json::Error),
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("unsupported AdmissionReview apiVersion {0:?}: only admission.k8s.io/v1 is served")]
    Version(String),
    #[error("the request has no uid")]
    NoUid,
}

/// Decodes a review body. The uid of a bad review is kept where it can be
/// read, so that the API server can match the error response.
pub fn decode(body: &[u8]) -> Result<Review, (Option<String>, DecodeError)> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).map_err(|e| {
        let uid = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
            v.pointer("/request/uid")
                .and_then(Value::as_str)
                .map(String::from)
        });
        (uid, DecodeError::Json(e))
    })?;
    if review.types.api_version != "admission.k8s.io/v1" {
        let uid = review.request.as_ref().map(|r| r.uid.clone());
        return Err((uid, DecodeError::Version(review.types.api_version)));
    }
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| (None, DecodeError::NoRequest))?;
    if request.uid.is_empty() {
        return Err((None, DecodeError::NoUid));
    }
    let to_value = |o: &Option<DynamicObject>| {
        o.as_ref()
            .map(|o| serde_json::to_value(o).expect("a decoded object encodes"))
    };
    Ok(Review {
        object: to_value(&request.object),
        old_object: to_value(&request.old_object),
        request,
    })
}

/// An error response for a review that could not be judged: `allowed: false`
/// with code 400 and the reason, and the uid where known.
pub fn error_response(uid: Option<String>, message: &str) -> AdmissionResponse {
    let mut resp = AdmissionResponse::invalid(format!("overlay-switch-webhook: {message}"));
    resp.result.code = 400;
    if let Some(uid) = uid {
        resp.uid = uid;
    }
    resp
}

pub fn encode(resp: AdmissionResponse) -> Vec<u8> {
    serde_json::to_vec(&resp.into_review()).expect("an AdmissionReview encodes")
}
