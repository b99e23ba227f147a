//! Walks the wire format with the generated table and builds Go-`encoding/json`-shaped values.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Map, Number, Value};

use crate::gofmt;
use crate::schema::{Card, Msg, Ty, F, INLINE, OMITEMPTY, POINTER};
use crate::table::{KINDS, MESSAGES};
use crate::wire::{Reader, Val, WireErr};
use crate::{ProtoError, CONTENT_TYPE, MAGIC};

/// Deeper than any real object (Pod specs reach about 12); bounds recursion on hostile input.
const MAX_DEPTH: usize = 64;

/// Decodes a whole protobuf request body (`k8s\0` + `runtime.Unknown`) into the object's JSON,
/// with `kind` and `apiVersion` taken from the envelope's typeMeta.
///
/// An envelope whose `contentType` is `application/json` carries JSON in `raw`: that JSON is
/// returned as is.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let rest = body
        .strip_prefix(MAGIC.as_slice())
        .ok_or(ProtoError::MissingMagic)?;
    let mut d = Decoder {
        path: vec![Seg::Key("<envelope>")],
        depth: 0,
    };
    let env = d.envelope(rest)?;
    if !env.content_encoding.is_empty() {
        return Err(ProtoError::UnsupportedContentEncoding(env.content_encoding));
    }
    match env.content_type.as_str() {
        "" | CONTENT_TYPE => decode_object(&env.api_version, &env.kind, env.raw),
        ct if ct == "application/json" || ct.starts_with("application/json;") => {
            serde_json::from_slice(env.raw).map_err(|e| ProtoError::EmbeddedJson {
                path: "<envelope>.raw".into(),
                message: e.to_string(),
            })
        }
        _ => Err(ProtoError::UnsupportedContentType(env.content_type)),
    }
}

/// Decodes one object's protobuf encoding (the envelope's `raw`), given its apiVersion and kind.
pub fn decode_object(api_version: &str, kind: &str, raw: &[u8]) -> Result<Value, ProtoError> {
    if api_version.is_empty() || kind.is_empty() {
        return Err(ProtoError::MissingTypeMeta);
    }
    let idx = find_kind(api_version, kind).ok_or_else(|| ProtoError::UnknownKind {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
    })?;
    let mut out = Map::new();
    out.insert("kind".into(), Value::String(kind.to_string()));
    out.insert("apiVersion".into(), Value::String(api_version.to_string()));
    let mut d = Decoder {
        path: Vec::new(),
        depth: 0,
    };
    d.message(idx, raw, &mut out)?;
    Ok(Value::Object(out))
}

pub(crate) fn find_kind(api_version: &str, kind: &str) -> Option<u16> {
    KINDS
        .binary_search_by(|(av, k, _)| (*av, *k).cmp(&(api_version, kind)))
        .ok()
        .and_then(|i| KINDS.get(i))
        .map(|(_, _, idx)| *idx)
}

struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
    content_type: String,
}

enum Seg {
    Key(&'static str),
    Index(usize),
    MapKey(String),
}

struct Decoder {
    path: Vec<Seg>,
    depth: usize,
}

fn lossy(b: &[u8]) -> String {
    // Go's decoder does not check UTF-8 and encoding/json writes U+FFFD for bad bytes: same here.
    String::from_utf8_lossy(b).into_owned()
}

fn b64(b: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(b))
}

impl Decoder {
    fn path(&self) -> String {
        let mut s = String::new();
        for seg in &self.path {
            match seg {
                Seg::Key(k) => {
                    s.push('.');
                    s.push_str(k);
                }
                Seg::Index(i) => s.push_str(&format!("[{i}]")),
                Seg::MapKey(k) => s.push_str(&format!("[{k:?}]")),
            }
        }
        if s.is_empty() {
            s.push('.');
        }
        s
    }

    fn malformed(&self, e: WireErr) -> ProtoError {
        ProtoError::Malformed {
            path: self.path(),
            offset: e.offset,
            what: e.what,
        }
    }

    fn invalid(&self, what: impl Into<String>) -> ProtoError {
        ProtoError::InvalidValue {
            path: self.path(),
            what: what.into(),
        }
    }

    fn wrong(&self, tag: u32, v: &Val<'_>, expected: &'static str) -> ProtoError {
        ProtoError::WrongWireType {
            path: self.path(),
            tag,
            got: v.wire_type(),
            expected,
        }
    }

    /// Iterates a message's fields, mapping wire errors to [`ProtoError::Malformed`] at the current path.
    fn fields<'a>(
        &mut self,
        buf: &'a [u8],
        mut f: impl FnMut(&mut Self, u32, Val<'a>) -> Result<(), ProtoError>,
    ) -> Result<(), ProtoError> {
        let mut r = Reader::new(buf);
        while let Some((tag, v)) = r.next_field().map_err(|e| self.malformed(e))? {
            f(self, tag, v)?;
        }
        Ok(())
    }

    fn bytes_of<'a>(&self, tag: u32, v: Val<'a>) -> Result<&'a [u8], ProtoError> {
        match v {
            Val::Bytes(b) => Ok(b),
            other => Err(self.wrong(tag, &other, "2 (length-delimited)")),
        }
    }

    fn varint_of(&self, tag: u32, v: Val<'_>) -> Result<u64, ProtoError> {
        match v {
            Val::Varint(x) => Ok(x),
            other => Err(self.wrong(tag, &other, "0 (varint)")),
        }
    }

    fn envelope<'a>(&mut self, buf: &'a [u8]) -> Result<Envelope<'a>, ProtoError> {
        let mut env = Envelope {
            api_version: String::new(),
            kind: String::new(),
            raw: &[],
            content_encoding: String::new(),
            content_type: String::new(),
        };
        self.fields(buf, |d, tag, v| {
            match tag {
                1 => {
                    let tm = d.bytes_of(tag, v)?;
                    d.path.push(Seg::Key("typeMeta"));
                    d.fields(tm, |d, tag, v| {
                        match tag {
                            1 => env.api_version = lossy(d.bytes_of(tag, v)?),
                            2 => env.kind = lossy(d.bytes_of(tag, v)?),
                            _ => {}
                        }
                        Ok(())
                    })?;
                    d.path.pop();
                }
                2 => env.raw = d.bytes_of(tag, v)?,
                3 => env.content_encoding = lossy(d.bytes_of(tag, v)?),
                4 => env.content_type = lossy(d.bytes_of(tag, v)?),
                _ => {}
            }
            Ok(())
        })?;
        Ok(env)
    }

    fn enter(&mut self) -> Result<(), ProtoError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ProtoError::TooDeep {
                path: self.path(),
                limit: MAX_DEPTH,
            });
        }
        Ok(())
    }

    /// Decodes message `idx` from `buf` into `out` (which may be a parent object, for inline fields).
    fn message(
        &mut self,
        idx: u16,
        buf: &[u8],
        out: &mut Map<String, Value>,
    ) -> Result<(), ProtoError> {
        let msg: &Msg = MESSAGES
            .get(usize::from(idx))
            .ok_or_else(|| self.invalid(format!("schema has no message #{idx}")))?;
        self.enter()?;
        let mut vals: Vec<Vec<Val<'_>>> = vec![Vec::new(); msg.fields.len()];
        self.fields(buf, |d, tag, v| {
            // Fields the schema does not know are skipped, as Go's generated Unmarshal does.
            if let Some(i) = msg.fields.iter().position(|f| f.tag == tag) {
                d.check_wire(&msg.fields[i], tag, &v)?;
                if let Some(slot) = vals.get_mut(i) {
                    slot.push(v);
                }
            }
            Ok(())
        })?;
        for (f, vs) in msg.fields.iter().zip(&vals) {
            let inline = f.flags & INLINE != 0;
            if !inline {
                self.path.push(Seg::Key(f.json));
            }
            self.field(f, vs, out)?;
            if !inline {
                self.path.pop();
            }
        }
        self.depth -= 1;
        Ok(())
    }

    fn check_wire(&self, f: &F, tag: u32, v: &Val<'_>) -> Result<(), ProtoError> {
        let wt = v.wire_type();
        let (ok, expected) = match (f.card, f.ty) {
            (Card::Map, _) => (wt == 2, "2 (length-delimited)"),
            (Card::One, Ty::Int32 | Ty::Int64 | Ty::Bool) => (wt == 0, "0 (varint)"),
            (Card::One, Ty::Double) => (wt == 1, "1 (64-bit)"),
            (Card::Repeated, Ty::Int32 | Ty::Int64 | Ty::Bool) => {
                (wt == 0 || wt == 2, "0 or packed 2")
            }
            (Card::Repeated, Ty::Double) => (wt == 1 || wt == 2, "1 or packed 2"),
            _ => (wt == 2, "2 (length-delimited)"),
        };
        if ok {
            Ok(())
        } else {
            let mut path = self.path();
            if path == "." {
                path.clear();
            }
            path.push('.');
            path.push_str(f.json);
            Err(ProtoError::WrongWireType {
                path,
                tag,
                got: wt,
                expected,
            })
        }
    }

    fn field(
        &mut self,
        f: &F,
        vs: &[Val<'_>],
        out: &mut Map<String, Value>,
    ) -> Result<(), ProtoError> {
        let omit = f.flags & OMITEMPTY != 0;
        let ptr = f.flags & POINTER != 0;
        match f.card {
            Card::One => {
                if f.flags & INLINE != 0 {
                    if let Ty::Msg(i) = f.ty {
                        let buf = concat(vs);
                        return self.message(i, &buf, out);
                    }
                }
                let scalar = matches!(
                    f.ty,
                    Ty::String | Ty::Int32 | Ty::Int64 | Ty::Bool | Ty::Double
                );
                if vs.is_empty() && (ptr || f.ty == Ty::Bytes) {
                    // A nil pointer or nil []byte.
                    if !omit {
                        out.insert(f.json.to_string(), Value::Null);
                    }
                    return Ok(());
                }
                let v = match f.ty {
                    // Proto semantics: the last scalar wins, repeated messages merge (= concatenate).
                    _ if scalar => match vs.last() {
                        Some(v) => self.value(f.ty, 0, *v)?,
                        None => zero(f.ty),
                    },
                    _ => {
                        let buf = concat(vs);
                        self.value(f.ty, 0, Val::Bytes(&buf))?
                    }
                };
                let empty = match &v {
                    Value::String(s) => s.is_empty(),
                    Value::Number(n) => n.as_f64() == Some(0.0),
                    Value::Bool(b) => !b,
                    _ => false,
                };
                // encoding/json omitempty: zero scalars and empty []byte of value (non-pointer) fields.
                if omit && empty && ((scalar && !ptr) || f.ty == Ty::Bytes) {
                    return Ok(());
                }
                out.insert(f.json.to_string(), v);
            }
            Card::Repeated => {
                let mut items = Vec::new();
                for v in vs {
                    match (*v, f.ty) {
                        (Val::Bytes(b), Ty::Int32 | Ty::Int64 | Ty::Bool | Ty::Double) => {
                            // Packed numbers.
                            let mut r = Reader::new(b);
                            while !r.at_end() {
                                let x = if f.ty == Ty::Double {
                                    Val::Fixed64(r.fixed64().map_err(|e| self.malformed(e))?)
                                } else {
                                    Val::Varint(r.varint().map_err(|e| self.malformed(e))?)
                                };
                                self.path.push(Seg::Index(items.len()));
                                let item = self.value(f.ty, 0, x);
                                self.path.pop();
                                items.push(item?);
                            }
                        }
                        (v, ty) => {
                            self.path.push(Seg::Index(items.len()));
                            let item = self.value(ty, 0, v);
                            self.path.pop();
                            items.push(item?);
                        }
                    }
                }
                if items.is_empty() {
                    if !omit {
                        out.insert(f.json.to_string(), Value::Null);
                    }
                } else {
                    out.insert(f.json.to_string(), Value::Array(items));
                }
            }
            Card::Map => {
                let mut m = BTreeMap::new();
                for v in vs {
                    let entry = self.bytes_of(f.tag, *v)?;
                    let (mut key, mut val) = (Vec::new(), Vec::new());
                    self.fields(entry, |d, tag, v| {
                        match tag {
                            1 => key.push(d.bytes_of(tag, v)?),
                            2 => val.push(v),
                            _ => {}
                        }
                        Ok(())
                    })?;
                    let key = lossy(key.last().copied().unwrap_or_default());
                    self.path.push(Seg::MapKey(key.clone()));
                    let value = match val.last() {
                        None => zero_or_decode(self, f.ty),
                        Some(v) => {
                            let ok = match f.ty {
                                Ty::Int32 | Ty::Int64 | Ty::Bool => v.wire_type() == 0,
                                Ty::Double => v.wire_type() == 1,
                                _ => v.wire_type() == 2,
                            };
                            if ok {
                                self.value(f.ty, 2, *v)
                            } else {
                                Err(self.wrong(2, v, "the map value's wire type"))
                            }
                        }
                    };
                    self.path.pop();
                    m.insert(key, value?);
                }
                if m.is_empty() {
                    if !omit {
                        out.insert(f.json.to_string(), Value::Null);
                    }
                } else {
                    // encoding/json sorts map keys.
                    out.insert(f.json.to_string(), Value::Object(m.into_iter().collect()));
                }
            }
        }
        Ok(())
    }

    /// One value of type `ty` from one wire value (whose wire type was already checked).
    fn value(&mut self, ty: Ty, tag: u32, v: Val<'_>) -> Result<Value, ProtoError> {
        Ok(match ty {
            Ty::String => Value::String(lossy(self.bytes_of(tag, v)?)),
            Ty::Bytes => b64(self.bytes_of(tag, v)?),
            // Go's generated decoder accumulates int32 varints into an int32: the low 32 bits.
            Ty::Int32 => Value::from(self.varint_of(tag, v)? as u32 as i32),
            Ty::Int64 => Value::from(self.varint_of(tag, v)? as i64),
            Ty::Bool => Value::Bool(self.varint_of(tag, v)? != 0),
            Ty::Double => {
                let bits = match v {
                    Val::Fixed64(x) => x,
                    other => return Err(self.wrong(tag, &other, "1 (64-bit)")),
                };
                let f = f64::from_bits(bits);
                // Go prints integral floats without a fraction ("2", not "2.0"): keep them integers.
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    return Ok(Value::from(f as i64));
                }
                Value::Number(
                    Number::from_f64(f)
                        .ok_or_else(|| self.invalid(format!("{f} has no JSON form")))?,
                )
            }
            Ty::Msg(i) => {
                let b = self.bytes_of(tag, v)?;
                let mut m = Map::new();
                self.message(i, b, &mut m)?;
                Value::Object(m)
            }
            special => {
                let b = self.bytes_of(tag, v)?;
                self.special(special, b)?
            }
        })
    }

    /// The JSON form of the messages that marshal themselves (metav1.Time and friends).
    fn special(&mut self, ty: Ty, buf: &[u8]) -> Result<Value, ProtoError> {
        self.enter()?;
        let v = self.special_inner(ty, buf);
        self.depth -= 1;
        v
    }

    fn special_inner(&mut self, ty: Ty, buf: &[u8]) -> Result<Value, ProtoError> {
        match ty {
            Ty::Time | Ty::MicroTime => {
                if buf.is_empty() {
                    return Ok(Value::Null); // zero time
                }
                let (mut secs, mut nanos) = (0i64, 0i64);
                self.fields(buf, |d, tag, v| {
                    match tag {
                        1 => secs = d.varint_of(tag, v)? as i64,
                        2 => nanos = i64::from(d.varint_of(tag, v)? as u32 as i32),
                        _ => {}
                    }
                    Ok(())
                })?;
                let total = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
                if total == i128::from(gofmt::GO_ZERO_UNIX) * 1_000_000_000 {
                    return Ok(Value::Null); // time.Time{}.IsZero()
                }
                gofmt::rfc3339(secs, nanos, ty == Ty::MicroTime)
                    .map(Value::String)
                    .ok_or_else(|| {
                        self.invalid(format!("time {secs}s {nanos}ns is outside years 0-9999"))
                    })
            }
            Ty::Duration => {
                let mut ns = 0i64;
                self.fields(buf, |d, tag, v| {
                    if tag == 1 {
                        ns = d.varint_of(tag, v)? as i64;
                    }
                    Ok(())
                })?;
                Ok(Value::String(gofmt::duration(ns)))
            }
            Ty::IntOrString => {
                let (mut kind, mut int, mut s) = (0i64, 0i32, String::new());
                self.fields(buf, |d, tag, v| {
                    match tag {
                        1 => kind = d.varint_of(tag, v)? as i64,
                        2 => int = d.varint_of(tag, v)? as u32 as i32,
                        3 => s = lossy(d.bytes_of(tag, v)?),
                        _ => {}
                    }
                    Ok(())
                })?;
                match kind {
                    0 => Ok(Value::from(int)),
                    1 => Ok(Value::String(s)),
                    k => Err(self.invalid(format!("IntOrString type {k} (0 = int, 1 = string)"))),
                }
            }
            Ty::Quantity => {
                let mut s = String::new();
                self.fields(buf, |d, tag, v| {
                    if tag == 1 {
                        s = lossy(d.bytes_of(tag, v)?);
                    }
                    Ok(())
                })?;
                if s.is_empty() {
                    s.push('0'); // the zero Quantity marshals as "0"
                }
                Ok(Value::String(s))
            }
            Ty::RawExtension | Ty::FieldsV1 => {
                let mut raw: Option<&[u8]> = None;
                self.fields(buf, |d, tag, v| {
                    if tag == 1 {
                        raw = Some(d.bytes_of(tag, v)?);
                    }
                    Ok(())
                })?;
                match raw {
                    None => Ok(Value::Null),
                    Some([]) => Ok(Value::Null),
                    Some(r) if ty == Ty::RawExtension && r.starts_with(MAGIC) => {
                        let mut inner = Decoder {
                            path: Vec::new(),
                            depth: self.depth,
                        };
                        let env = inner.envelope(&r[MAGIC.len()..])?;
                        let idx = find_kind(&env.api_version, &env.kind).ok_or_else(|| {
                            ProtoError::UnknownKind {
                                api_version: env.api_version.clone(),
                                kind: env.kind.clone(),
                            }
                        })?;
                        let mut out = Map::new();
                        out.insert("kind".into(), Value::String(env.kind.clone()));
                        out.insert("apiVersion".into(), Value::String(env.api_version.clone()));
                        self.message(idx, env.raw, &mut out)?;
                        Ok(Value::Object(out))
                    }
                    Some(r) => serde_json::from_slice(r).map_err(|e| ProtoError::EmbeddedJson {
                        path: self.path(),
                        message: e.to_string(),
                    }),
                }
            }
            Ty::StringList => {
                let mut items = Vec::new();
                self.fields(buf, |d, tag, v| {
                    if tag == 1 {
                        items.push(Value::String(lossy(d.bytes_of(tag, v)?)));
                    }
                    Ok(())
                })?;
                Ok(if items.is_empty() {
                    Value::Null
                } else {
                    Value::Array(items)
                })
            }
            other => Err(self.invalid(format!("{other:?} is not a self-marshalling type"))),
        }
    }
}

/// The zero value of a map value that was absent in its entry: Go decodes it as the zero value.
fn zero_or_decode(d: &mut Decoder, ty: Ty) -> Result<Value, ProtoError> {
    match ty {
        Ty::Msg(i) => {
            let mut m = Map::new();
            d.message(i, &[], &mut m)?;
            Ok(Value::Object(m))
        }
        Ty::Bytes => Ok(Value::String(String::new())),
        Ty::String | Ty::Int32 | Ty::Int64 | Ty::Bool | Ty::Double => Ok(zero(ty)),
        special => d.special(special, &[]),
    }
}

fn zero(ty: Ty) -> Value {
    match ty {
        Ty::String => Value::String(String::new()),
        Ty::Int32 | Ty::Int64 | Ty::Double => Value::from(0),
        Ty::Bool => Value::Bool(false),
        _ => Value::Null,
    }
}

fn concat<'a>(vs: &[Val<'a>]) -> Cow<'a, [u8]> {
    match vs {
        [] => Cow::Borrowed(&[]),
        [Val::Bytes(b)] => Cow::Borrowed(b),
        _ => {
            let mut out = Vec::new();
            for v in vs {
                if let Val::Bytes(b) = v {
                    out.extend_from_slice(b);
                }
            }
            Cow::Owned(out)
        }
    }
}
