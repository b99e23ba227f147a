//! Label selectors (`-l app=web,tier!=db,env in (a,b),!legacy`) and field selectors
//! (`--field-selector spec.nodeName=n1`), parsed and matched as apimachinery does.

use serde_json::{Map, Value};

/// A selector that could not be parsed or is not supported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// Label selector syntax or key/value validity (`unable to parse requirement: ...`).
    #[error("{message}")]
    Label {
        /// Upstream-style message.
        message: String,
    },
    /// Field selector syntax (`invalid selector: ...`).
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    Field {
        /// The whole selector.
        selector: String,
        /// The term that did not parse.
        term: String,
    },
    /// A field the resource does not index (kube-apiserver answers 400 with this message).
    #[error("field label not supported: {field}")]
    FieldNotSupported {
        /// The field path.
        field: String,
    },
}

/// Operator of one label requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `a=b` (and `matchLabels`).
    Equals,
    /// `a==b`.
    DoubleEquals,
    /// `a!=b` (also matches objects without the label).
    NotEquals,
    /// `a in (b,c)`.
    In,
    /// `a notin (b,c)` (also matches objects without the label).
    NotIn,
    /// `a`.
    Exists,
    /// `!a`.
    DoesNotExist,
    /// `a>1` (integer comparison).
    Gt,
    /// `a<1`.
    Lt,
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Label key.
    pub key: String,
    /// Operator.
    pub op: Operator,
    /// Values (one for `=`, `!=`, `>`, `<`; sorted set for `in`/`notin`; empty for (does not) exist).
    pub values: Vec<String>,
}

impl Requirement {
    fn matches(&self, labels: &Map<String, Value>) -> bool {
        let val = labels.get(&self.key).map(label_str);
        match self.op {
            Operator::In | Operator::Equals | Operator::DoubleEquals => {
                val.is_some_and(|v| self.values.contains(&v))
            }
            Operator::NotIn | Operator::NotEquals => val.is_none_or(|v| !self.values.contains(&v)),
            Operator::Exists => val.is_some(),
            Operator::DoesNotExist => val.is_none(),
            Operator::Gt | Operator::Lt => {
                let (Some(v), Some(want)) = (val, self.values.first()) else {
                    return false;
                };
                let (Ok(v), Ok(want)) = (v.parse::<i64>(), want.parse::<i64>()) else {
                    return false;
                };
                if self.op == Operator::Gt {
                    v > want
                } else {
                    v < want
                }
            }
        }
    }
}

fn label_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A parsed label selector: all requirements must hold. Empty matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    /// Requirements, ANDed.
    pub requirements: Vec<Requirement>,
    /// `true` for a `metav1.LabelSelector` that selects nothing (none here; reserved for `null`).
    pub nothing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Eq,
    DoubleEq,
    NotEq,
    Not,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
    In,
    NotIn,
    End,
}

impl Tok {
    fn text(&self) -> String {
        match self {
            Tok::Ident(s) => s.clone(),
            Tok::Eq => "=".into(),
            Tok::DoubleEq => "==".into(),
            Tok::NotEq => "!=".into(),
            Tok::Not => "!".into(),
            Tok::Gt => ">".into(),
            Tok::Lt => "<".into(),
            Tok::Open => "(".into(),
            Tok::Close => ")".into(),
            Tok::Comma => ",".into(),
            Tok::In => "in".into(),
            Tok::NotIn => "notin".into(),
            Tok::End => "".into(),
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

fn lex(s: &str) -> Vec<Tok> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if is_special(c) {
            let next = chars.get(i + 1).copied();
            let (t, n) = match (c, next) {
                ('=', Some('=')) => (Tok::DoubleEq, 2),
                ('!', Some('=')) => (Tok::NotEq, 2),
                ('=', _) => (Tok::Eq, 1),
                ('!', _) => (Tok::Not, 1),
                ('(', _) => (Tok::Open, 1),
                (')', _) => (Tok::Close, 1),
                (',', _) => (Tok::Comma, 1),
                ('>', _) => (Tok::Gt, 1),
                _ => (Tok::Lt, 1),
            };
            out.push(t);
            i += n;
            continue;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && !is_special(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        out.push(match word.as_str() {
            "in" => Tok::In,
            "notin" => Tok::NotIn,
            _ => Tok::Ident(word),
        });
    }
    out.push(Tok::End);
    out
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        self.toks.get(self.pos).unwrap_or(&Tok::End)
    }
    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }
}

fn perr(message: String) -> SelectorError {
    SelectorError::Label { message }
}

impl LabelSelector {
    /// Everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Whether it has no requirements (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty() && !self.nothing
    }

    /// Parses the string form (`labelSelector=` query parameter).
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut p = Parser {
            toks: lex(s),
            pos: 0,
        };
        let mut reqs = Vec::new();
        loop {
            match p.peek().clone() {
                Tok::End => break,
                Tok::Ident(_) | Tok::Not => {
                    reqs.push(parse_requirement(&mut p)?);
                    match p.next() {
                        Tok::End => break,
                        Tok::Comma => {
                            if matches!(p.peek(), Tok::End) {
                                return Err(perr(
                                    "found '', expected: identifier after ','".into(),
                                ));
                            }
                        }
                        t => {
                            return Err(perr(format!(
                                "found '{}', expected: ',' or 'end of string'",
                                t.text()
                            )))
                        }
                    }
                }
                t => {
                    return Err(perr(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        t.text()
                    )))
                }
            }
        }
        Ok(Self {
            requirements: reqs,
            nothing: false,
        })
    }

    /// Builds from a `metav1.LabelSelector` JSON (`matchLabels` + `matchExpressions`), as
    /// controllers use it. `null`/absent or `{}` selects everything.
    pub fn from_match_labels_expressions(sel: &Value) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in ml {
                let v = label_str(v);
                validate_key(k)?;
                validate_value(k, &v)?;
                reqs.push(Requirement {
                    key: k.clone(),
                    op: Operator::Equals,
                    values: vec![v],
                });
            }
        }
        for e in sel
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = e
                .get("key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            validate_key(&key)?;
            let values: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(label_str)
                .collect();
            let op = match e
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default()
            {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(perr(format!(
                        "{other:?} is not a valid label selector operator"
                    )))
                }
            };
            reqs.push(new_requirement(key, op, values)?);
        }
        Ok(Self {
            requirements: reqs,
            nothing: false,
        })
    }

    /// Whether a label map (`metadata.labels`, or a `Value` object/null) matches.
    pub fn matches<L: AsLabels + ?Sized>(&self, labels: &L) -> bool {
        if self.nothing {
            return false;
        }
        let empty = Map::new();
        let labels = labels.as_labels().unwrap_or(&empty);
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether an object's `metadata.labels` match.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(obj.pointer("/metadata/labels").unwrap_or(&Value::Null))
    }
}

/// Things that can be read as a label map.
pub trait AsLabels {
    /// The map, if any (`None` = no labels).
    fn as_labels(&self) -> Option<&Map<String, Value>>;
}

impl AsLabels for Map<String, Value> {
    fn as_labels(&self) -> Option<&Map<String, Value>> {
        Some(self)
    }
}

impl AsLabels for Value {
    fn as_labels(&self) -> Option<&Map<String, Value>> {
        self.as_object()
    }
}

impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r.op {
                Operator::Equals => format!("{}={}", r.key, r.values.join("")),
                Operator::DoubleEquals => format!("{}=={}", r.key, r.values.join("")),
                Operator::NotEquals => format!("{}!={}", r.key, r.values.join("")),
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
                Operator::Gt => format!(
                    "{}>{}",
                    r.key,
                    r.values.first().map(String::as_str).unwrap_or("")
                ),
                Operator::Lt => format!(
                    "{}<{}",
                    r.key,
                    r.values.first().map(String::as_str).unwrap_or("")
                ),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

fn parse_requirement(p: &mut Parser) -> Result<Requirement, SelectorError> {
    let mut op = None;
    if matches!(p.peek(), Tok::Not) {
        p.next();
        op = Some(Operator::DoesNotExist);
    }
    let key = match p.next() {
        Tok::Ident(k) => k,
        t => return Err(perr(format!("found '{}', expected: identifier", t.text()))),
    };
    validate_key(&key)?;
    if op == Some(Operator::DoesNotExist) {
        return new_requirement(key, Operator::DoesNotExist, vec![]);
    }
    if matches!(p.peek(), Tok::End | Tok::Comma) {
        return new_requirement(key, Operator::Exists, vec![]);
    }
    let (op, set) = match p.next() {
        Tok::In => (Operator::In, true),
        Tok::NotIn => (Operator::NotIn, true),
        Tok::Eq => (Operator::Equals, false),
        Tok::DoubleEq => (Operator::DoubleEquals, false),
        Tok::NotEq => (Operator::NotEquals, false),
        Tok::Gt => (Operator::Gt, false),
        Tok::Lt => (Operator::Lt, false),
        t => {
            return Err(perr(format!(
                "found '{}', expected: {}",
                t.text(),
                "[!= < = == > in notin]"
            )))
        }
    };
    let values = if set {
        match p.next() {
            Tok::Open => {}
            t => return Err(perr(format!("found '{}', expected: '('", t.text()))),
        }
        let mut vals: Vec<String> = Vec::new();
        let mut expect_value = true;
        loop {
            match p.next() {
                Tok::Close => {
                    // As upstream: `()` and a trailing `,` stand for the empty value.
                    if expect_value {
                        vals.push(String::new());
                    }
                    break;
                }
                Tok::Comma => {
                    if expect_value {
                        vals.push(String::new());
                    }
                    expect_value = true;
                }
                t @ (Tok::Ident(_) | Tok::In | Tok::NotIn) if expect_value => {
                    vals.push(t.text());
                    expect_value = false;
                }
                t => {
                    return Err(perr(format!(
                        "found '{}', expected: ',', ')' or identifier",
                        t.text()
                    )))
                }
            }
        }
        vals
    } else {
        match p.peek().clone() {
            Tok::End | Tok::Comma => vec![String::new()],
            t @ (Tok::Ident(_) | Tok::In | Tok::NotIn) => {
                p.next();
                vec![t.text()]
            }
            t => return Err(perr(format!("found '{}', expected: identifier", t.text()))),
        }
    };
    new_requirement(key, op, values)
}

fn new_requirement(
    key: String,
    op: Operator,
    mut values: Vec<String>,
) -> Result<Requirement, SelectorError> {
    match op {
        Operator::Equals | Operator::DoubleEquals | Operator::NotEquals => {
            if values.len() != 1 {
                return Err(perr(
                    "unable to parse requirement: values: Invalid value: exact-match compatibility requires one single value".into(),
                ));
            }
        }
        Operator::In | Operator::NotIn => {
            if values.is_empty() {
                return Err(perr(
                    "unable to parse requirement: values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty"
                        .to_string(),
                ));
            }
        }
        Operator::Exists | Operator::DoesNotExist => {
            if !values.is_empty() {
                return Err(perr(
                    "unable to parse requirement: values: Invalid value: values set must be empty for exists and does not exist".into(),
                ));
            }
        }
        Operator::Gt | Operator::Lt => {
            if values.len() != 1 || values[0].parse::<i64>().is_err() {
                return Err(perr(format!(
                    "unable to parse requirement: values[0]: Invalid value: {:?}: for 'Gt', 'Lt' operators, the value must be an integer",
                    values.first().cloned().unwrap_or_default()
                )));
            }
        }
    }
    if !matches!(op, Operator::Gt | Operator::Lt) {
        for v in &values {
            validate_value(&key, v)?;
        }
    }
    values.sort();
    values.dedup();
    Ok(Requirement { key, op, values })
}

fn validate_key(key: &str) -> Result<(), SelectorError> {
    let errs = crate::validation::qualified_name_errors(key);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(perr(format!(
            "unable to parse requirement: key: Invalid value: {key:?}: {}",
            errs.join("; ")
        )))
    }
}

fn validate_value(key: &str, v: &str) -> Result<(), SelectorError> {
    let errs = crate::validation::label_value_errors(v);
    if errs.is_empty() {
        Ok(())
    } else {
        let _ = key;
        Err(perr(format!(
            "unable to parse requirement: values[0][{key}]: Invalid value: {v:?}: {}",
            errs.join("; ")
        )))
    }
}

/// One term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Field path, e.g. `spec.nodeName`.
    pub field: String,
    /// `true` for `!=`.
    pub not: bool,
    /// Value to compare with.
    pub value: String,
}

/// A parsed field selector (terms ANDed; empty matches everything).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    /// Terms.
    pub requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses `fieldSelector=` (`a=b`, `a==b`, `a!=b`, comma separated, `\` escapes).
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for term in split_terms(s) {
            if term.is_empty() {
                continue;
            }
            let parsed = ["!=", "==", "="]
                .iter()
                .find_map(|op| find_unescaped(&term, op).map(|i| (i, *op)));
            let Some((i, op)) = parsed else {
                return Err(SelectorError::Field {
                    selector: s.to_string(),
                    term,
                });
            };
            let field = term[..i].trim().to_string();
            let value = unescape(&term[i + op.len()..]);
            if field.is_empty() {
                return Err(SelectorError::Field {
                    selector: s.to_string(),
                    term,
                });
            }
            reqs.push(FieldRequirement {
                field,
                not: op == "!=",
                value,
            });
        }
        Ok(Self { requirements: reqs })
    }

    /// Whether it has no terms.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Checks every field against what the kind supports ([`validate_field`]).
    pub fn validate(&self, kind: &str) -> Result<(), SelectorError> {
        for r in &self.requirements {
            if !validate_field(kind, &r.field) {
                return Err(SelectorError::FieldNotSupported {
                    field: r.field.clone(),
                });
            }
        }
        Ok(())
    }

    /// Whether an object matches; fields are read generically (`spec.nodeName`), missing = "".
    pub fn matches(&self, obj: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let v = field_value(obj, &r.field);
            (v == r.value) != r.not
        })
    }
}

impl std::fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| format!("{}{}{}", r.field, if r.not { "!=" } else { "=" }, r.value))
            .collect();
        f.write_str(&parts.join(","))
    }
}

fn split_terms(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn find_unescaped(term: &str, op: &str) -> Option<usize> {
    let bytes = term.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if term.get(i..).is_some_and(|t| t.starts_with(op)) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads a dotted field path from an object as a string ("" when missing; numbers and booleans
/// as text, as upstream's field sets hold them).
pub fn field_value(obj: &Value, field: &str) -> String {
    let mut cur = obj;
    for part in field.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => {
                // Defaults upstream applies in field sets.
                return match field {
                    "spec.hostNetwork" | "spec.unschedulable" => "false".into(),
                    _ => String::new(),
                };
            }
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// Whether kube-apiserver supports `field` in field selectors for `kind` (kind like `Pod`, or
/// plural like `pods`).
pub fn validate_field(kind: &str, field: &str) -> bool {
    if matches!(field, "metadata.name" | "metadata.namespace") {
        return true;
    }
    match kind {
        "Pod" | "pods" => matches!(
            field,
            "spec.nodeName"
                | "spec.restartPolicy"
                | "spec.schedulerName"
                | "spec.serviceAccountName"
                | "spec.hostNetwork"
                | "status.phase"
                | "status.podIP"
                | "status.podIPs"
                | "status.nominatedNodeName"
        ),
        "Event" | "events" => matches!(
            field,
            "involvedObject.kind"
                | "involvedObject.namespace"
                | "involvedObject.name"
                | "involvedObject.uid"
                | "involvedObject.apiVersion"
                | "involvedObject.resourceVersion"
                | "involvedObject.fieldPath"
                | "reason"
                | "reportingComponent"
                | "source"
                | "type"
        ),
        "Secret" | "secrets" => field == "type",
        "Namespace" | "namespaces" => field == "status.phase",
        "Node" | "nodes" => field == "spec.unschedulable",
        "ReplicaSet" | "replicasets" => field == "status.replicas",
        "Job" | "jobs" => field == "status.successful",
        "CertificateSigningRequest" | "certificatesigningrequests" => field == "spec.signerName",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn parses_all_operators() {
        let s = LabelSelector::parse("a=b,c==d,e!=f,g in (x, y),h notin (z),i,!j").expect("parses");
        let ops: Vec<Operator> = s.requirements.iter().map(|r| r.op).collect();
        use Operator::*;
        assert_eq!(
            ops,
            [
                Equals,
                DoubleEquals,
                NotEquals,
                In,
                NotIn,
                Exists,
                DoesNotExist
            ]
        );
        assert_eq!(s.requirements[3].values, ["x", "y"]);
        let l = labels(json!({"a": "b", "c": "d", "g": "y", "i": ""}));
        assert!(s.matches(&l));
        let l2 = labels(json!({"a": "b", "c": "d", "g": "y", "i": "", "j": "1"}));
        assert!(!s.matches(&l2));
        let l3 = labels(json!({"a": "b", "c": "d", "e": "f", "g": "y", "i": ""}));
        assert!(!s.matches(&l3));
        assert!(LabelSelector::parse("")
            .expect("empty")
            .matches(&json!(null)));
        assert_eq!(s.to_string(), "a=b,c==d,e!=f,g in (x,y),h notin (z),i,!j");
    }

    #[test]
    fn empty_value_and_keywords_as_values() {
        let s = LabelSelector::parse("a=,b in (in,notin)").expect("parses");
        assert_eq!(s.requirements[0].values, [""]);
        assert!(s.matches(&json!({"a": "", "b": "in"})));
        assert!(!s.matches(&json!({"b": "in"})));
        let gt = LabelSelector::parse("n>3").expect("gt");
        assert!(gt.matches(&json!({"n": "4"})));
        assert!(!gt.matches(&json!({"n": "3"})));
    }

    #[test]
    fn rejects_bad_syntax_and_invalid_keys() {
        for bad in [
            "a=b c", "a in x", "=b", "a=(b)", "a,", "!a=b", "a b", "-a=b", "a=b-", "a=",
        ] {
            let r = LabelSelector::parse(bad);
            if bad == "a=" {
                assert!(r.is_ok());
                continue;
            }
            assert!(r.is_err(), "{bad} should fail, got {r:?}");
        }
        let long = format!("a={}", "x".repeat(64));
        assert!(LabelSelector::parse(&long).is_err());
        assert!(LabelSelector::parse("example.com/app=web").is_ok());
        assert!(LabelSelector::parse("Example.com/app=web").is_err());
        // Upstream reads `()` and `(,)` as the empty value.
        for empty in ["a in ()", "a in (,)"] {
            let s = LabelSelector::parse(empty).expect("empty value set");
            assert_eq!(s.requirements[0].values, [""]);
            assert_eq!(s.to_string(), "a in ()");
        }
        let trailing = LabelSelector::parse("a in (b,)").expect("trailing comma");
        assert_eq!(trailing.requirements[0].values, ["", "b"]);
        let e = LabelSelector::from_match_labels_expressions(
            &serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In"}]}),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("values set can't be empty"), "{e}");
    }

    #[test]
    fn metav1_label_selector() {
        let s = LabelSelector::from_match_labels_expressions(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "be"]},
                                 {"key": "legacy", "operator": "DoesNotExist"}]
        }))
        .expect("valid");
        assert!(s.matches(&json!({"app": "web", "tier": "fe"})));
        assert!(!s.matches(&json!({"app": "web", "tier": "db"})));
        assert!(!s.matches(&json!({"app": "web", "tier": "fe", "legacy": "y"})));
        let all = LabelSelector::from_match_labels_expressions(&json!({})).expect("empty");
        assert!(all.matches(&json!({"x": "y"})) && all.matches(&Value::Null));
        assert!(LabelSelector::from_match_labels_expressions(
            &json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]})
        )
        .is_err());
        assert!(LabelSelector::from_match_labels_expressions(
            &json!({"matchExpressions": [{"key": "a", "operator": "Bogus"}]})
        )
        .is_err());
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p", "namespace": "default"},
                         "spec": {"nodeName": "n1", "hostNetwork": true}, "status": {"phase": "Running"}});
        let s = FieldSelector::parse("spec.nodeName=n1,status.phase!=Pending").expect("parses");
        assert!(s.matches(&pod));
        assert!(s.validate("Pod").is_ok());
        assert!(!FieldSelector::parse("spec.nodeName==n2")
            .expect("parses")
            .matches(&pod));
        assert!(FieldSelector::parse("spec.nodeName=")
            .expect("parses")
            .matches(&json!({})));
        assert!(FieldSelector::parse("spec.hostNetwork=true")
            .expect("p")
            .matches(&pod));
        assert!(FieldSelector::parse("spec.hostNetwork=false")
            .expect("p")
            .matches(&json!({})));
        let ev = json!({"involvedObject": {"kind": "Pod", "name": "a,b"}});
        assert!(
            FieldSelector::parse("involvedObject.kind=Pod,involvedObject.name=a\\,b")
                .expect("p")
                .matches(&ev)
        );
        assert!(FieldSelector::parse("nonsense").is_err());
        assert_eq!(
            FieldSelector::parse("foo=bar")
                .expect("p")
                .validate("Pod")
                .err()
                .map(|e| e.to_string()),
            Some("field label not supported: foo".to_string())
        );
        assert!(validate_field("Secret", "type") && !validate_field("ConfigMap", "type"));
        assert!(validate_field("nodes", "spec.unschedulable"));
        assert!(FieldSelector::parse("").expect("empty").is_empty());
    }

    proptest::proptest! {
        #[test]
        fn label_selector_rendering_reparses(s in "[a-z!=(), ]{0,24}") {
            if let Ok(sel) = LabelSelector::parse(&s) {
                let again = LabelSelector::parse(&sel.to_string());
                proptest::prop_assert_eq!(again.ok(), Some(sel));
            }
            let _ = FieldSelector::parse(&s).map(|f| f.matches(&json!({"a": "b"})));
        }
    }
}
