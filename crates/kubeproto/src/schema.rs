//! The shape of the generated table (`table.rs`, written by `scripts/gen-kubeproto.py`).

/// One protobuf message with its fields in Go struct order (which is the JSON output order).
#[derive(Debug)]
pub(crate) struct Msg {
    /// k8s-pb module path and name, e.g. `api.apps.v1.Deployment` (for tests and debugging).
    #[allow(dead_code)]
    pub(crate) name: &'static str,
    pub(crate) fields: &'static [F],
}

/// One field: its tag, its JSON name and how Go's `encoding/json` treats it.
#[derive(Debug)]
pub(crate) struct F {
    pub(crate) tag: u32,
    /// The JSON name (Go `json:"..."` tag); empty for `,inline` fields.
    pub(crate) json: &'static str,
    pub(crate) ty: Ty,
    pub(crate) card: Card,
    /// [`OMITEMPTY`] | [`POINTER`] | [`INLINE`].
    pub(crate) flags: u8,
}

/// Go `json:",omitempty"`.
pub(crate) const OMITEMPTY: u8 = 1;
/// The Go field is a pointer (nil when absent on the wire, zero values kept when present).
pub(crate) const POINTER: u8 = 2;
/// Go `json:",inline"`: the message's fields go into the parent object.
pub(crate) const INLINE: u8 = 4;

/// Field or map value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    String,
    Int32,
    Int64,
    Bool,
    Double,
    Bytes,
    /// Index into `MESSAGES`.
    Msg(u16),
    /// metav1.Time {seconds=1, nanos=2} → RFC 3339, seconds precision; zero → null.
    Time,
    /// metav1.MicroTime → RFC 3339 with microseconds; zero → null.
    MicroTime,
    /// metav1.Duration {duration=1 (ns)} → Go duration string (no served kind uses it yet).
    #[allow(dead_code)]
    Duration,
    /// metav1.FieldsV1 {raw=1} → embedded JSON.
    FieldsV1,
    /// intstr.IntOrString {type=1, intVal=2, strVal=3} → number or string.
    IntOrString,
    /// resource.Quantity {string=1} → string.
    Quantity,
    /// runtime.RawExtension {raw=1} → embedded JSON (or a nested `k8s\0` object).
    RawExtension,
    /// A Go named `[]string` wrapped as {repeated string items = 1} (ExtraValue) → array.
    StringList,
}

/// Cardinality: singular, repeated, or `map<string, ty>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Card {
    One,
    Repeated,
    Map,
}
