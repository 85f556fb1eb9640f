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
    #[error("request.{0} is not a JSON object")]
    NotAnObject(&'static str),
}

/// Decodes a review body. The uid of a bad review is kept where it can be
/// read, so that the API server can match the error response.
pub fn decode(body: &[u8]) -> Result<Review, (Option<String>, DecodeError)> {
    let mut value: Value =
        serde_json::from_slice(body).map_err(|e| (None, DecodeError::Json(e)))?;
    let uid = value
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .map(String::from);
    // The objects are taken out as JSON, as the pure code reads them; only
    // the small rest goes through the typed kube-rs request.
    let mut take = |p: &str| {
        value
            .pointer_mut(p)
            .map(Value::take)
            .filter(|v| !v.is_null())
    };
    let object = take("/request/object");
    let old_object = take("/request/oldObject");
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(value).map_err(|e| (uid.clone(), DecodeError::Json(e)))?;
    if review.types.api_version != "admission.k8s.io/v1" {
        return Err((uid, DecodeError::Version(review.types.api_version)));
    }
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| (None, DecodeError::NoRequest))?;
    if request.uid.is_empty() {
        return Err((None, DecodeError::NoUid));
    }
    for (name, o) in [("object", &object), ("oldObject", &old_object)] {
        if o.as_ref().is_some_and(|o| !o.is_object()) {
            return Err((uid, DecodeError::NotAnObject(name)));
        }
    }
    Ok(Review {
        object,
        old_object,
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

/// Encodes the response review. The patch goes out as base64, as the API
/// documents `[]byte` (kube-rs would write a JSON array of numbers, which
/// the API server also accepts, at about four times the size).
pub fn encode(resp: AdmissionResponse) -> Vec<u8> {
    use base64::Engine as _;

    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Out<'a> {
        api_version: &'a str,
        kind: &'a str,
        response: Response<'a>,
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Response<'a> {
        uid: &'a str,
        allowed: bool,
        status: &'a kube::core::Status,
        #[serde(skip_serializing_if = "std::collections::HashMap::is_empty")]
        audit_annotations: &'a std::collections::HashMap<String, String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        warnings: Option<&'a Vec<String>>,
    }
    let out = Out {
        api_version: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response: Response {
            uid: &resp.uid,
            allowed: resp.allowed,
            status: &resp.result,
            audit_annotations: &resp.audit_annotations,
            warnings: resp.warnings.as_ref(),
        },
    };
    let mut bytes = serde_json::to_vec(&out).expect("an AdmissionReview encodes");
    if let Some(patch) = &resp.patch {
        // The patch is base64-encoded straight into the answer, as the last
        // member of `response` (the base64 alphabet needs no JSON escaping):
        // no copy of a patch of many kilobytes, no scan of it for escapes.
        let engine = &base64::engine::general_purpose::STANDARD;
        let closing = bytes.split_off(bytes.len() - 2);
        debug_assert_eq!(closing, b"}}", "response is Out's last member");
        let len = base64::encoded_len(patch.len(), true).expect("a patch fits in memory");
        bytes.reserve(len + 40);
        bytes.extend_from_slice(br#","patchType":"JSONPatch","patch":""#);
        let start = bytes.len();
        bytes.resize(start + len, 0);
        let written = engine
            .encode_slice(patch, &mut bytes[start..])
            .expect("sized by encoded_len");
        bytes.truncate(start + written);
        bytes.extend_from_slice(b"\"");
        bytes.extend_from_slice(&closing);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_goes_out_as_base64_json_patch() {
        let review = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","kind":{"group":"","version":"v1","kind":"ConfigMap"},"resource":{"group":"","version":"v1","resource":"configmaps"},"name":"c","namespace":"kube-system","operation":"UPDATE","userInfo":{},"object":{"metadata":{"name":"c"}},"oldObject":{"metadata":{"name":"c"}}}}"#;
        let r = decode(review).unwrap();
        assert_eq!(r.object.as_ref().unwrap()["metadata"]["name"], "c");
        let patch: json_patch::Patch =
            serde_json::from_str(r#"[{"op":"add","path":"/a","value":1}]"#).unwrap();
        let resp = AdmissionResponse::from(&r.request)
            .with_patch(patch)
            .unwrap();
        let out: Value = serde_json::from_slice(&encode(resp)).unwrap();
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(out["response"]["uid"], "u-1");
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(out["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(bytes, br#"[{"op":"add","path":"/a","value":1}]"#);
    }

    proptest::proptest! {
        /// Whatever the answer holds (warnings with quotes and newlines, a
        /// denial, a patch of any size), it encodes to one JSON review that
        /// says exactly that.
        #[test]
        fn every_answer_encodes_to_the_review_it_says(
            uid in "[a-z0-9-]{0,12}",
            allowed: bool,
            warnings in proptest::option::of(proptest::collection::vec(".{0,20}", 0..3)),
            patch in proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)),
        ) {
            let mut resp = AdmissionResponse::invalid("no");
            resp.uid = uid.clone();
            resp.allowed = allowed;
            resp.warnings = warnings.clone();
            resp.patch = patch.clone();
            let out: Value = serde_json::from_slice(&encode(resp)).unwrap();
            proptest::prop_assert_eq!(out["kind"].as_str(), Some("AdmissionReview"));
            let r = &out["response"];
            proptest::prop_assert_eq!(r["uid"].as_str(), Some(uid.as_str()));
            proptest::prop_assert_eq!(r["allowed"].as_bool(), Some(allowed));
            let got_warnings: Option<Vec<String>> = serde_json::from_value(r["warnings"].clone()).unwrap();
            proptest::prop_assert_eq!(got_warnings, warnings);
            use base64::Engine as _;
            let got_patch = r["patch"].as_str().map(|p| {
                base64::engine::general_purpose::STANDARD.decode(p).unwrap()
            });
            proptest::prop_assert_eq!(&got_patch, &patch);
            proptest::prop_assert_eq!(r["patchType"].as_str(), patch.as_ref().map(|_| "JSONPatch"));
        }
    }

    #[test]
    fn objects_that_are_not_objects_are_refused() {
        let review = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-2","kind":{"group":"","version":"v1","kind":"ConfigMap"},"resource":{"group":"","version":"v1","resource":"configmaps"},"name":"c","operation":"UPDATE","userInfo":{},"object":[1,2]}}"#;
        let (uid, err) = decode(review).unwrap_err();
        assert_eq!(uid.as_deref(), Some("u-2"));
        assert!(matches!(err, DecodeError::NotAnObject("object")));
    }
}
