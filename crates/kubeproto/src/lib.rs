//! Decodes Kubernetes protobuf request bodies into the JSON kube-apiserver would see. No I/O.
//!
//! kubectl and client-go send typed objects as `Content-Type: application/vnd.kubernetes.protobuf`:
//! the 4-byte magic `k8s\0`, then a `runtime.Unknown` message
//! `{typeMeta(1){apiVersion(1), kind(2)}, raw(2), contentEncoding(3), contentType(4)}` whose `raw` is the
//! object's own protobuf encoding. Start from [`decode`].
//!
//! The output follows Go's `encoding/json` applied to the Go object kube-apiserver would decode:
//! JSON names from the Go struct tags (`clusterIP`, `podCIDR`, `externalIPs`), fields in Go struct
//! order, `omitempty` honoured for value fields (so `"hostNetwork": false` sent by every Go client
//! disappears), zero values kept for pointer fields (`"replicas": 0` stays), non-pointer structs always
//! emitted (`"status": {}`, `"creationTimestamp": null`), map keys sorted, `bytes` as base64, and the
//! special types: `metav1.Time`/`MicroTime` → RFC 3339, `IntOrString` → number or string,
//! `Quantity` → string, `metav1.Duration` → `"5m0s"`, `RawExtension`/`FieldsV1` → embedded JSON.
//! `kubectl create ... --dry-run=client -o json` prints the same JSON for the same object.
//!
//! The wire schema is a generated table (`table.rs`, written by `scripts/gen-kubeproto.py` from
//! k8s-pb 0.9.0, the OpenAPI document and the Go type metadata in kubectl's binary); [`kinds`] lists
//! what it covers. Unknown fields are skipped like Go's decoder does; unknown kinds, wrong wire types
//! and malformed bytes are a [`ProtoError`], never a panic.

mod decode;
mod gofmt;
mod schema;
#[rustfmt::skip]
mod table;
mod wire;

pub use decode::{decode, decode_object};

/// The 4 bytes every Kubernetes protobuf body starts with.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// The media type of Kubernetes protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Every (apiVersion, kind) [`decode`] knows, sorted.
pub fn kinds() -> impl Iterator<Item = (&'static str, &'static str)> {
    table::KINDS.iter().map(|(av, k, _)| (*av, *k))
}

/// Whether [`decode`] knows this (apiVersion, kind).
pub fn is_supported(api_version: &str, kind: &str) -> bool {
    decode::find_kind(api_version, kind).is_some()
}

/// Why a body could not be decoded. `path` is where in the object, like `.spec.template.spec.containers[0]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The body does not start with `k8s\0`.
    #[error("not a Kubernetes protobuf body: missing the k8s\\0 magic prefix")]
    MissingMagic,
    /// The envelope has no typeMeta apiVersion or kind.
    #[error("protobuf envelope (runtime.Unknown) has no apiVersion/kind")]
    MissingTypeMeta,
    /// No schema for this apiVersion and kind.
    #[error("no protobuf schema for apiVersion {api_version:?} kind {kind:?}")]
    UnknownKind {
        /// From the envelope's typeMeta.
        api_version: String,
        /// From the envelope's typeMeta.
        kind: String,
    },
    /// `contentEncoding` is set (e.g. gzip); Kubernetes never sets it.
    #[error("unsupported protobuf envelope contentEncoding {0:?}")]
    UnsupportedContentEncoding(String),
    /// `contentType` names something other than protobuf or JSON.
    #[error("unsupported protobuf envelope contentType {0:?}")]
    UnsupportedContentType(String),
    /// The bytes are not valid protobuf at this point.
    #[error("malformed protobuf at {path} (byte {offset}): {what}")]
    Malformed {
        /// Where in the object.
        path: String,
        /// Byte offset in the message being read.
        offset: usize,
        /// What was wrong.
        what: &'static str,
    },
    /// A known field arrived with a wire type its schema does not allow.
    #[error("field {path} (tag {tag}) has wire type {got}, expected {expected}")]
    WrongWireType {
        /// Where in the object.
        path: String,
        /// The field number.
        tag: u32,
        /// The wire type on the wire.
        got: u8,
        /// The wire type(s) the schema allows.
        expected: &'static str,
    },
    /// A value that has no JSON form (IntOrString type 7, a NaN double, a year past 9999 ...).
    #[error("invalid value at {path}: {what}")]
    InvalidValue {
        /// Where in the object.
        path: String,
        /// What was wrong.
        what: String,
    },
    /// Embedded JSON (RawExtension, FieldsV1, a JSON envelope) does not parse.
    #[error("invalid embedded JSON at {path}: {message}")]
    EmbeddedJson {
        /// Where in the object.
        path: String,
        /// serde_json's message (kept as text so the error stays `Clone + PartialEq`).
        message: String,
    },
    /// Nesting deeper than any Kubernetes object (a hostile body).
    #[error("protobuf nested deeper than {limit} at {path}")]
    TooDeep {
        /// Where in the object.
        path: String,
        /// The limit.
        limit: usize,
    },
}
