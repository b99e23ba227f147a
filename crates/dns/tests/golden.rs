//! Golden tests of the pure core: every case in `tests/golden/cases/*.query` is one query answered from the
//! cluster in `tests/golden/cluster.yaml` with no I/O; the answer must equal `<case>.answer` (dig-like text,
//! or `FORWARD`). Each query file carries the equivalent `dig` command in a comment.
//!
//! Query file: `;` comment lines, then `NAME TYPE [option ...]`; options: `class=CH`, `edns`, `edns=V`
//! (EDNS version), `bufsize=N`, `norecurse`, `opcode=status`, `pods=disabled|insecure|verified`, `ttl=N`.
//! NAME `-` sends no question. Regenerate answers with `DARI_GOLDEN_BLESS=1 cargo test -p dari-dns --test golden`
//! (then read the diff: blessing is a review step, not a way to pass).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use dari_dns::config::{AnswerConfig, DnsConfig, PodsMode};
use dari_dns::render::render;
use dari_dns::{answer, Answer, ClusterIndex};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Loads Services, EndpointSlices and Pods from a multi-document YAML file.
pub fn load_cluster(path: &Path) -> Result<ClusterIndex> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (mut svcs, mut slices, mut pods) = (Vec::new(), Vec::new(), Vec::new());
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        match v["kind"].as_str() {
            Some("Service") => svcs.push(serde_json::from_value::<Service>(v)?),
            Some("EndpointSlice") => slices.push(serde_json::from_value::<EndpointSlice>(v)?),
            Some("Pod") => pods.push(serde_json::from_value::<Pod>(v)?),
            other => bail!("unexpected kind {other:?} in {}", path.display()),
        }
    }
    Ok(ClusterIndex::build(&svcs, &slices, &pods))
}

fn run_case(index: &ClusterIndex, text: &str) -> Result<String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with(';'))
        .context("no query line")?;
    let mut words = line.split_whitespace();
    let name = words.next().context("no name")?;
    let rtype = RecordType::from_str(words.next().context("no type")?)?;
    let mut cfg = DnsConfig::default();
    let mut class = DNSClass::IN;
    let mut edns: Option<Edns> = None;
    let mut rd = true;
    let mut opcode = OpCode::Query;
    for opt in words {
        let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
        match k {
            "class" => class = DNSClass::from_str(v)?,
            "edns" => {
                let mut e = edns.take().unwrap_or_default();
                e.set_version(if v.is_empty() { 0 } else { v.parse()? });
                e.set_max_payload(1232);
                edns = Some(e);
            }
            "bufsize" => {
                let mut e = edns.take().unwrap_or_default();
                e.set_max_payload(v.parse()?);
                edns = Some(e);
            }
            "norecurse" => rd = false,
            "opcode" => {
                opcode = match v {
                    "status" => OpCode::Status,
                    "notify" => OpCode::Notify,
                    "update" => OpCode::Update,
                    _ => bail!("opcode {v}"),
                }
            }
            "pods" => {
                cfg.pods = match v {
                    "disabled" => PodsMode::Disabled,
                    "insecure" => PodsMode::Insecure,
                    "verified" => PodsMode::Verified,
                    _ => bail!("pods {v}"),
                }
            }
            "ttl" => cfg.ttl = v.parse()?,
            _ => bail!("unknown option {opt}"),
        }
    }
    let acfg = AnswerConfig::new(&cfg)?;
    let mut q = Message::new(0x1234, MessageType::Query, opcode);
    q.metadata.recursion_desired = rd;
    if name != "-" {
        let mut query = Query::query(Name::from_ascii(name)?, rtype);
        query.set_query_class(class);
        q.add_query(query);
    }
    q.edns = edns;
    // the query goes through the wire format, as it would from a socket
    let q = Message::from_vec(&q.to_vec()?)?;
    Ok(match answer(&q, index, &acfg) {
        Answer::Forward => "FORWARD\n".to_string(),
        Answer::Response(resp) => {
            // and so does the answer: what is rendered is what a client would decode
            let wire = resp.to_vec()?;
            render(&Message::from_vec(&wire)?)
        }
    })
}

#[test]
fn golden_answers() -> Result<()> {
    let dir = golden_dir();
    let index = load_cluster(&dir.join("cluster.yaml"))?;
    let bless = std::env::var_os("DARI_GOLDEN_BLESS").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir.join("cases"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "query"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 40, "expected the golden cases, found {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case)?;
        assert!(text.contains("; dig "), "{} lacks its dig command comment", case.display());
        let got = run_case(&index, &text).with_context(|| format!("case {}", case.display()))?;
        let expected_path = case.with_extension("answer");
        if bless {
            std::fs::write(&expected_path, &got)?;
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .with_context(|| format!("reading {}", expected_path.display()))?;
        if got != expected {
            failures.push(format!(
                "== {}\n-- expected\n{expected}-- got\n{got}",
                case.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
            ));
        }
    }
    if !failures.is_empty() {
        bail!("{} golden case(s) differ:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}
