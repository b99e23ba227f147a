//! [`NetlinkApplier`]: sends a [`Transaction`] to the kernel as one nf_tables netlink batch,
//! without the `nft` program.
//!
//! Why: `nft -f` (1.0.6) dumps every chain of the table before it runs any command but `add chain`
//! (its cache), so with 10,000 Services (110,000 chains) even a one-element change costs about
//! one second. A netlink batch costs what it changes.
//!
//! What is encoded here (everything an incremental sync of ClusterIP/NodePort Services needs):
//! tables, chains (regular and base), `flush chain`, `delete chain|set|table`, `flush set|map`,
//! elements of sets/maps whose keys are `ipv4_addr`/`ipv6_addr`/`inet_proto`/`inet_service` (or
//! concatenations) and whose values are verdicts, and rules made of: `ip|ip6 saddr|daddr [!=]
//! ADDR[/PREFIX]`, `tcp|udp|sctp dport N`, `meta l4proto P`, `numgen random mod N == K`,
//! then `jump|goto CHAIN`, `return`, `drop`, `accept` or `dnat to ADDR:PORT`.
//! Anything else (`add set` definitions, affinity `update @set`, comments, `fib`, `reject`,
//! `masquerade`, mark arithmetic, vmap lookups) is [`Unsupported`]: the whole transaction then
//! goes through `nft -f` instead, so it stays one atomic transaction either way.
//! The encodings match what `nft --debug=netlink` shows for the same text; the netns tests
//! compare `nft list` of a netlink-applied table with an `nft -f`-applied one.
//!
//! What is left at 10,000 Services: a batch that adds any jump/goto (a rule or a vmap element)
//! makes the kernel re-validate the table's whole jump graph at commit (`nft_table_validate`,
//! seen with `perf`), about 0.15-0.2 s for 110,000 chains on this machine. That is kernel work
//! any nftables client pays (nft, knftables); fewer chains per endpoint would shrink it.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use nix::sys::socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};

use crate::apply::{NftApply, NftCli};
use crate::error::ProxyError;
use crate::nft::{ExistingObjects, Family, Hook, Op, Set, TableRef, Transaction};

/// A transaction (or one of its rules or elements) that this encoder does not handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

// nfnetlink / nf_tables constants (linux/netfilter/nfnetlink.h, nf_tables.h).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;

const MSG_NEWTABLE: u16 = 0;
const MSG_DELTABLE: u16 = 2;
const MSG_NEWCHAIN: u16 = 3;
const MSG_DELCHAIN: u16 = 5;
const MSG_NEWRULE: u16 = 6;
const MSG_DELRULE: u16 = 8;
const MSG_DELSET: u16 = 11;
const MSG_NEWSETELEM: u16 = 12;
const MSG_DELSETELEM: u16 = 14;

const TABLE_NAME: u16 = 1;
const CHAIN_TABLE: u16 = 1;
const CHAIN_NAME: u16 = 3;
const CHAIN_HOOK: u16 = 4;
const CHAIN_POLICY: u16 = 5;
const CHAIN_TYPE: u16 = 7;
const HOOK_NUM: u16 = 1;
const HOOK_PRIORITY: u16 = 2;
const RULE_TABLE: u16 = 1;
const RULE_CHAIN: u16 = 2;
const RULE_EXPRESSIONS: u16 = 4;
const SET_TABLE: u16 = 1;
const SET_NAME: u16 = 2;
const LIST_ELEM: u16 = 1;
const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
const DATA_VALUE: u16 = 1;
const DATA_VERDICT: u16 = 2;
const VERDICT_CODE: u16 = 1;
const VERDICT_CHAIN: u16 = 2;
const ELEM_LIST_TABLE: u16 = 1;
const ELEM_LIST_SET: u16 = 2;
const ELEM_LIST_ELEMENTS: u16 = 3;
const ELEM_KEY: u16 = 1;
const ELEM_DATA: u16 = 2;

const NF_ACCEPT: i32 = 1;
const NF_DROP: i32 = 0;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

const META_L4PROTO: u32 = 16;
const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const NUMGEN_RANDOM: u32 = 1;
const NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;

/// Elements per NEWSETELEM message: a nested attribute is limited to 64 KiB.
const ELEMENTS_PER_MSG: usize = 256;

fn nfproto(f: Family) -> u8 {
    match f {
        Family::Ip => 2,
        Family::Ip6 => 10,
    }
}

/// An nf_tables netlink batch being built.
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    /// Sequence number of the last message (the only one that asks for an ACK).
    last_msg: Option<(usize, u32)>,
}

impl Batch {
    fn new() -> Self {
        let mut b = Batch { buf: Vec::with_capacity(4096), seq: 0, last_msg: None };
        let start = b.header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0);
        b.buf.extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        b.finish(start);
        b
    }

    /// nlmsghdr + nfgenmsg (without res_id); returns the message start.
    fn header(&mut self, type_: u16, flags: u16, family: u8) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        self.buf.extend_from_slice(&type_.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.seq += 1;
        start
    }

    fn msg(&mut self, msg: u16, flags: u16, family: Family) -> usize {
        let seq = self.seq;
        let start = self.header((NFNL_SUBSYS_NFTABLES << 8) | msg, NLM_F_REQUEST | flags, nfproto(family));
        self.buf.extend_from_slice(&0u16.to_be_bytes()); // res_id
        self.last_msg = Some((start, seq));
        start
    }

    fn finish(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, type_: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&type_.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    fn str(&mut self, type_: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(type_, &v);
    }

    fn u32(&mut self, type_: u16, v: u32) {
        self.attr(type_, &v.to_be_bytes());
    }

    fn nest(&mut self, type_: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(type_ | NLA_F_NESTED).to_ne_bytes());
        start
    }

    fn end_nest(&mut self, start: usize) -> Result<(), Unsupported> {
        let len = self.buf.len() - start;
        let len = u16::try_from(len).map_err(|_| Unsupported(format!("netlink attribute of {len} bytes")))?;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        Ok(())
    }

    fn verdict(&mut self, type_: u16, v: &Verdict) -> Result<(), Unsupported> {
        let n = self.nest(type_);
        let d = self.nest(DATA_VERDICT);
        self.u32(VERDICT_CODE, v.code as u32);
        if let Some(c) = &v.chain {
            self.str(VERDICT_CHAIN, c);
        }
        self.end_nest(d)?;
        self.end_nest(n)
    }

    fn value(&mut self, type_: u16, bytes: &[u8]) -> Result<(), Unsupported> {
        let n = self.nest(type_);
        self.attr(DATA_VALUE, bytes);
        self.end_nest(n)
    }

    fn table_msg(&mut self, msg: u16, flags: u16, t: &TableRef) {
        let s = self.msg(msg, flags, t.family);
        self.str(TABLE_NAME, &t.name);
        self.finish(s);
    }

    fn chain_msg(&mut self, msg: u16, flags: u16, t: &TableRef, chain: &str, hook: Option<&Hook>) -> Result<(), Unsupported> {
        let s = self.msg(msg, flags, t.family);
        self.str(CHAIN_TABLE, &t.name);
        self.str(CHAIN_NAME, chain);
        if let Some(h) = hook {
            let num = match h.hook {
                "prerouting" => 0,
                "input" => 1,
                "forward" => 2,
                "output" => 3,
                "postrouting" => 4,
                other => return Err(Unsupported(format!("hook {other}"))),
            };
            let n = self.nest(CHAIN_HOOK);
            self.u32(HOOK_NUM, num);
            self.u32(HOOK_PRIORITY, h.priority as u32);
            self.end_nest(n)?;
            self.u32(CHAIN_POLICY, NF_ACCEPT as u32);
            self.str(CHAIN_TYPE, h.kind);
        }
        self.finish(s);
        Ok(())
    }

    fn rule(&mut self, t: &TableRef, chain: &str, exprs: &[Expr]) -> Result<(), Unsupported> {
        let s = self.msg(MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, t.family);
        self.str(RULE_TABLE, &t.name);
        self.str(RULE_CHAIN, chain);
        let list = self.nest(RULE_EXPRESSIONS);
        for e in exprs {
            let el = self.nest(LIST_ELEM);
            self.str(EXPR_NAME, e.name());
            let d = self.nest(EXPR_DATA);
            match e {
                Expr::Payload { base, offset, len } => {
                    self.u32(1, 1); // dreg 1
                    self.u32(2, *base);
                    self.u32(3, *offset);
                    self.u32(4, *len);
                }
                Expr::Meta { key } => {
                    self.u32(2, *key); // key
                    self.u32(1, 1); // dreg 1
                }
                Expr::Cmp { op, data } => {
                    self.u32(1, 1); // sreg 1
                    self.u32(2, *op);
                    self.value(3, data)?;
                }
                Expr::Numgen { modulus } => {
                    self.u32(1, 1); // dreg 1
                    self.u32(2, *modulus);
                    self.u32(3, NUMGEN_RANDOM);
                    self.u32(4, 0); // offset
                }
                Expr::ImmVerdict(v) => {
                    self.u32(1, 0); // dreg: verdict
                    self.verdict(2, v)?;
                }
                Expr::ImmValue { reg, data } => {
                    self.u32(1, *reg);
                    self.value(2, data)?;
                }
                Expr::Dnat { family } => {
                    self.u32(1, NAT_DNAT);
                    self.u32(2, u32::from(*family));
                    self.u32(3, 1); // addr min: reg 1
                    self.u32(5, 2); // proto min: reg 2
                    self.u32(7, NF_NAT_RANGE_PROTO_SPECIFIED);
                }
            }
            self.end_nest(d)?;
            self.end_nest(el)?;
        }
        self.end_nest(list)?;
        self.finish(s);
        Ok(())
    }

    fn elements(&mut self, msg: u16, t: &TableRef, set: &Set, elems: &[(&str, Option<&str>)]) -> Result<(), Unsupported> {
        for chunk in elems.chunks(ELEMENTS_PER_MSG) {
            let s = self.msg(msg, NLM_F_CREATE, t.family);
            self.str(ELEM_LIST_TABLE, &t.name);
            self.str(ELEM_LIST_SET, &set.name);
            let list = self.nest(ELEM_LIST_ELEMENTS);
            for (k, v) in chunk {
                let el = self.nest(LIST_ELEM);
                let key = encode_key(&set.type_, k)?;
                self.value(ELEM_KEY, &key)?;
                if let Some(v) = v {
                    if msg == MSG_NEWSETELEM {
                        self.verdict(ELEM_DATA, &parse_verdict(v)?)?;
                    }
                }
                self.end_nest(el)?;
            }
            self.end_nest(list)?;
            self.finish(s);
        }
        Ok(())
    }

    /// Closes the batch; the last message asks for the ACK that ends the wait.
    fn end(mut self) -> (Vec<u8>, Option<u32>) {
        let last = self.last_msg.map(|(start, seq)| {
            let off = start + 6;
            let flags = u16::from_ne_bytes([self.buf[off], self.buf[off + 1]]) | NLM_F_ACK;
            self.buf[off..off + 2].copy_from_slice(&flags.to_ne_bytes());
            seq
        });
        let start = self.header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0);
        self.buf.extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        self.finish(start);
        (self.buf, last)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    code: i32,
    chain: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    Payload { base: u32, offset: u32, len: u32 },
    Meta { key: u32 },
    Cmp { op: u32, data: Vec<u8> },
    Numgen { modulus: u32 },
    ImmVerdict(Verdict),
    ImmValue { reg: u32, data: Vec<u8> },
    Dnat { family: u8 },
}

impl Expr {
    fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Numgen { .. } => "numgen",
            Expr::ImmVerdict(_) | Expr::ImmValue { .. } => "immediate",
            Expr::Dnat { .. } => "nat",
        }
    }
}

fn unsupported(rule: &str) -> Unsupported {
    Unsupported(format!("rule {rule:?}"))
}

fn proto_number(p: &str) -> Option<u8> {
    match p {
        "tcp" => Some(6),
        "udp" => Some(17),
        "sctp" => Some(132),
        _ => None,
    }
}

fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn parse_verdict(text: &str) -> Result<Verdict, Unsupported> {
    let mut w = text.split_whitespace();
    let v = match (w.next(), w.next()) {
        (Some("jump"), Some(c)) => Verdict { code: NFT_JUMP, chain: Some(c.to_string()) },
        (Some("goto"), Some(c)) => Verdict { code: NFT_GOTO, chain: Some(c.to_string()) },
        (Some("return"), None) => Verdict { code: NFT_RETURN, chain: None },
        (Some("drop"), None) => Verdict { code: NF_DROP, chain: None },
        (Some("accept"), None) => Verdict { code: NF_ACCEPT, chain: None },
        _ => return Err(Unsupported(format!("verdict {text:?}"))),
    };
    if w.next().is_some() {
        return Err(Unsupported(format!("verdict {text:?}")));
    }
    Ok(v)
}

/// Compiles one rule (nft text as the renderer writes it) into expressions.
fn compile_rule(family: Family, rule: &str) -> Result<Vec<Expr>, Unsupported> {
    let toks: Vec<&str> = rule.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let l4 = |out: &mut Vec<Expr>, p: u8| {
        out.push(Expr::Meta { key: META_L4PROTO });
        out.push(Expr::Cmp { op: CMP_EQ, data: vec![p] });
    };
    while i < toks.len() {
        match toks[i] {
            "ip" | "ip6" if toks[i] == family.keyword() && matches!(toks.get(i + 1), Some(&"saddr") | Some(&"daddr")) => {
                let (addr_len, off) = match (family, toks[i + 1]) {
                    (Family::Ip, "saddr") => (4, 12),
                    (Family::Ip, _) => (4, 16),
                    (Family::Ip6, "saddr") => (16, 8),
                    (Family::Ip6, _) => (16, 24),
                };
                i += 2;
                let mut op = CMP_EQ;
                if toks.get(i) == Some(&"!=") {
                    op = CMP_NEQ;
                    i += 1;
                }
                let text = toks.get(i).ok_or_else(|| unsupported(rule))?;
                let (addr, prefix) = match text.split_once('/') {
                    Some((a, p)) => (a, p.parse::<u32>().map_err(|_| unsupported(rule))?),
                    None => (*text, addr_len * 8),
                };
                let ip: IpAddr = addr.parse().map_err(|_| unsupported(rule))?;
                let bytes = addr_bytes(ip);
                if bytes.len() as u32 != addr_len || prefix == 0 || prefix > addr_len * 8 || prefix % 8 != 0 {
                    return Err(unsupported(rule));
                }
                let n = prefix / 8;
                out.push(Expr::Payload { base: PAYLOAD_NETWORK, offset: off, len: n });
                out.push(Expr::Cmp { op, data: bytes[..n as usize].to_vec() });
                i += 1;
            }
            p @ ("tcp" | "udp" | "sctp") if toks.get(i + 1) == Some(&"dport") => {
                let port: u16 = toks.get(i + 2).and_then(|t| t.parse().ok()).ok_or_else(|| unsupported(rule))?;
                l4(&mut out, proto_number(p).ok_or_else(|| unsupported(rule))?);
                out.push(Expr::Payload { base: PAYLOAD_TRANSPORT, offset: 2, len: 2 });
                out.push(Expr::Cmp { op: CMP_EQ, data: port.to_be_bytes().to_vec() });
                i += 3;
            }
            "meta" if toks.get(i + 1) == Some(&"l4proto") => {
                let p = toks.get(i + 2).and_then(|t| proto_number(t)).ok_or_else(|| unsupported(rule))?;
                l4(&mut out, p);
                i += 3;
            }
            "numgen" => {
                let (Some(&"random"), Some(&"mod"), Some(m), Some(&"=="), Some(k)) =
                    (toks.get(i + 1), toks.get(i + 2), toks.get(i + 3), toks.get(i + 4), toks.get(i + 5))
                else {
                    return Err(unsupported(rule));
                };
                let modulus: u32 = m.parse().map_err(|_| unsupported(rule))?;
                let k: u32 = k.parse().map_err(|_| unsupported(rule))?;
                out.push(Expr::Numgen { modulus });
                out.push(Expr::Cmp { op: CMP_EQ, data: k.to_ne_bytes().to_vec() });
                i += 6;
            }
            "jump" | "goto" | "return" | "drop" | "accept" => {
                out.push(Expr::ImmVerdict(parse_verdict(&toks[i..].join(" ")).map_err(|_| unsupported(rule))?));
                return Ok(out);
            }
            "dnat" if toks.get(i + 1) == Some(&"to") && toks.len() == i + 3 => {
                let target: std::net::SocketAddr = toks[i + 2].parse().map_err(|_| unsupported(rule))?;
                let fam_ok = matches!((family, target.ip()), (Family::Ip, IpAddr::V4(_)) | (Family::Ip6, IpAddr::V6(_)));
                if !fam_ok || !out.iter().any(|e| matches!(e, Expr::Meta { key: META_L4PROTO })) {
                    return Err(unsupported(rule));
                }
                out.push(Expr::ImmValue { reg: 1, data: addr_bytes(target.ip()) });
                out.push(Expr::ImmValue { reg: 2, data: target.port().to_be_bytes().to_vec() });
                out.push(Expr::Dnat { family: nfproto(family) });
                return Ok(out);
            }
            _ => return Err(unsupported(rule)),
        }
    }
    // A rule without a verdict or statement: the renderer writes none.
    Err(unsupported(rule))
}

/// Key bytes of a set element, from its text and the set's `type` line.
fn encode_key(type_: &str, key: &str) -> Result<Vec<u8>, Unsupported> {
    let key_type = type_.split(" : ").next().unwrap_or(type_);
    let types: Vec<&str> = key_type.split(" . ").collect();
    let parts: Vec<&str> = key.split(" . ").collect();
    let bad = || Unsupported(format!("element {key:?} of type {type_:?}"));
    if types.len() != parts.len() {
        return Err(bad());
    }
    let concat = types.len() > 1;
    let mut out = Vec::new();
    for (t, p) in types.iter().zip(&parts) {
        let mut field = match *t {
            "ipv4_addr" => addr_bytes(IpAddr::V4(p.parse().map_err(|_| bad())?)),
            "ipv6_addr" => addr_bytes(IpAddr::V6(p.parse().map_err(|_| bad())?)),
            "inet_proto" => vec![proto_number(p).ok_or_else(bad)?],
            "inet_service" => p.parse::<u16>().map_err(|_| bad())?.to_be_bytes().to_vec(),
            _ => return Err(bad()),
        };
        if concat {
            while field.len() % 4 != 0 {
                field.push(0);
            }
        }
        out.extend_from_slice(&field);
    }
    Ok(out)
}

fn check_set(set: &Set) -> Result<(), Unsupported> {
    if set.flags.is_some() || set.timeout_secs.is_some() || set.dynamic {
        return Err(Unsupported(format!("elements of set {} (flags/timeout)", set.name)));
    }
    if set.is_map && !set.type_.ends_with(": verdict") {
        return Err(Unsupported(format!("map {} with non-verdict values", set.name)));
    }
    Ok(())
}

/// Encodes the whole transaction as one batch; returns it with the sequence number of the last
/// message (None: empty).
fn encode(tx: &Transaction) -> Result<(Vec<u8>, Option<u32>), Unsupported> {
    let mut b = Batch::new();
    for op in &tx.ops {
        match op {
            Op::AddTable(t) => b.table_msg(MSG_NEWTABLE, NLM_F_CREATE, t),
            Op::DeleteTable(t) => b.table_msg(MSG_DELTABLE, 0, t),
            Op::AddChain(t, c, hook) => b.chain_msg(MSG_NEWCHAIN, NLM_F_CREATE, t, c, hook.as_ref())?,
            Op::DeleteChain(t, c) => b.chain_msg(MSG_DELCHAIN, 0, t, c, None)?,
            Op::FlushChain(t, c) => {
                let s = b.msg(MSG_DELRULE, 0, t.family);
                b.str(RULE_TABLE, &t.name);
                b.str(RULE_CHAIN, c);
                b.finish(s);
            }
            Op::AddRule(t, c, r) => b.rule(t, c, &compile_rule(t.family, r)?)?,
            Op::AddSet(_, s) => return Err(Unsupported(format!("add set {} (definition)", s.name))),
            Op::FlushSet(t, s, _) => {
                let m = b.msg(MSG_DELSETELEM, 0, t.family);
                b.str(ELEM_LIST_TABLE, &t.name);
                b.str(ELEM_LIST_SET, s);
                b.finish(m);
            }
            Op::DeleteSet(t, s) => {
                let m = b.msg(MSG_DELSET, 0, t.family);
                b.str(SET_TABLE, &t.name);
                b.str(SET_NAME, s);
                b.finish(m);
            }
            Op::AddElements(t, s, elements) => {
                check_set(s)?;
                let e: Vec<(&str, Option<&str>)> = elements.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
                b.elements(MSG_NEWSETELEM, t, s, &e)?;
            }
            Op::DeleteElements(t, s, keys) => {
                check_set(s)?;
                let e: Vec<(&str, Option<&str>)> = keys.iter().map(|k| (k.as_str(), None)).collect();
                b.elements(MSG_DELSETELEM, t, s, &e)?;
            }
        }
    }
    Ok(b.end())
}

/// Can this transaction go through netlink? (`Err` says what cannot.)
pub fn check_encodable(tx: &Transaction) -> Result<(), Unsupported> {
    encode(tx).map(|_| ())
}

/// Applies transactions as nf_tables netlink batches, falling back to `nft -f` for a
/// transaction it cannot encode (see the module docs). Listing stays with `nft`.
#[derive(Debug, Default)]
pub struct NetlinkApplier {
    /// Network namespace to work in (`None`: the current one).
    pub netns: Option<PathBuf>,
    cli: NftCli,
    socket: Mutex<Option<OwnedFd>>,
    netlink_batches: AtomicU64,
    cli_fallbacks: AtomicU64,
}

impl NetlinkApplier {
    /// In the current network namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inside the network namespace at `path` (the socket is opened there).
    pub fn in_netns(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        NetlinkApplier { cli: NftCli::in_netns(path.clone()), netns: Some(path), ..Self::default() }
    }

    /// (transactions sent through netlink, transactions that fell back to `nft -f`).
    pub fn counts(&self) -> (u64, u64) {
        (self.netlink_batches.load(Ordering::Relaxed), self.cli_fallbacks.load(Ordering::Relaxed))
    }

    /// Opens the netlink socket now (otherwise the first batch does), so that the first
    /// transaction does not pay for it.
    pub fn connect(&self) -> Result<(), ProxyError> {
        let mut guard = self.socket.lock().map_err(|_| self.err("lock", std::io::Error::other("poisoned")))?;
        if guard.is_none() {
            *guard = Some(self.open()?);
        }
        Ok(())
    }

    fn err(&self, what: &str, source: std::io::Error) -> ProxyError {
        ProxyError::Netlink { op: what.to_string(), netns: self.netns.clone(), source }
    }

    fn open(&self) -> Result<OwnedFd, ProxyError> {
        let open_here = || -> Result<OwnedFd, std::io::Error> {
            let fd = socket::socket(
                AddressFamily::Netlink,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::NetlinkNetFilter,
            )?;
            socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
            let tv = nix::sys::time::TimeVal::new(60, 0);
            socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &tv)?;
            Ok(fd)
        };
        match &self.netns {
            None => open_here().map_err(|e| self.err("socket", e)),
            Some(path) => {
                let path = path.clone();
                // setns changes only the calling thread: open the socket on a short-lived one.
                std::thread::scope(|s| {
                    s.spawn(|| -> Result<OwnedFd, std::io::Error> {
                        let ns = std::fs::File::open(&path)?;
                        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                        open_here()
                    })
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("setns thread panicked")))
                })
                .map_err(|e| self.err("socket in netns", e))
            }
        }
    }

    fn send(&self, batch: &[u8], last_seq: u32, lines: usize) -> Result<(), ProxyError> {
        let mut guard = self.socket.lock().map_err(|_| self.err("lock", std::io::Error::other("poisoned")))?;
        let fd = match guard.take() {
            Some(fd) => fd,
            None => self.open()?,
        };
        if batch.len() > 200_000 {
            let _ = socket::setsockopt(&fd, socket::sockopt::SndBufForce, &(batch.len() * 2));
        }
        socket::sendto(fd.as_raw_fd(), batch, &NetlinkAddr::new(0, 0), MsgFlags::empty())
            .map_err(|e| self.err("send", e.into()))?;
        let mut buf = vec![0u8; 65536];
        let mut first_error: Option<i32> = None;
        loop {
            let n = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| self.err("recv", e.into()))?;
            let mut off = 0;
            let mut done = false;
            while off + 16 <= n {
                let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
                let type_ = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let seq = u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
                if len < 16 || off + len > n {
                    break;
                }
                if type_ == NLMSG_ERROR && len >= 20 {
                    let code = i32::from_ne_bytes([buf[off + 16], buf[off + 17], buf[off + 18], buf[off + 19]]);
                    if code != 0 && first_error.is_none() {
                        first_error = Some(-code);
                    }
                    // The last message's ACK, or an error pinned on the batch header (ENOMEM).
                    if seq == last_seq || (seq == 0 && code != 0) {
                        done = true;
                    }
                }
                off += (len + 3) & !3;
            }
            if done {
                break;
            }
        }
        // The socket is clean (every reply read): keep it for the next transaction.
        *guard = Some(fd);
        match first_error {
            None => Ok(()),
            Some(errno) => Err(ProxyError::NftRejected {
                netns: self.netns.clone(),
                lines,
                stderr: format!("netlink batch rejected: {}", std::io::Error::from_raw_os_error(errno)),
            }),
        }
    }
}

impl NftApply for NetlinkApplier {
    fn apply(&self, ruleset_text: &str) -> Result<(), ProxyError> {
        self.cli_fallbacks.fetch_add(1, Ordering::Relaxed);
        self.cli.apply(ruleset_text)
    }

    fn apply_tx(&self, tx: &Transaction) -> Result<(), ProxyError> {
        if tx.is_empty() {
            return Ok(());
        }
        match encode(tx) {
            Ok((batch, Some(last))) => {
                self.netlink_batches.fetch_add(1, Ordering::Relaxed);
                self.send(&batch, last, tx.ops.len())
            }
            Ok((_, None)) => Ok(()),
            Err(why) => {
                tracing::debug!(reason = %why.0, "transaction not encodable for netlink, using nft -f");
                self.apply(&tx.to_string())
            }
        }
    }

    fn list_objects(&self, family: Family, table: &str) -> Result<ExistingObjects, ProxyError> {
        self.cli.list_objects(family, table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_the_rules_of_a_clusterip_service() {
        let f = Family::Ip;
        for r in [
            "ip daddr 10.200.1.10 tcp dport 9000 ip saddr != 10.10.0.0/16 jump mark-for-masquerade",
            "numgen random mod 2 == 0 goto ep-default/svc/tcp/p80__10.10.1.2/80",
            "goto ep-default/svc/tcp/p80__10.10.1.2/80",
            "ip saddr 10.10.1.2 jump mark-for-masquerade",
            "meta l4proto tcp dnat to 10.10.1.2:80",
        ] {
            assert!(compile_rule(f, r).is_ok(), "{r}");
        }
        assert!(compile_rule(Family::Ip6, "meta l4proto udp dnat to [fd00::1]:53").is_ok());
        for r in [
            "update @aff-x { ip saddr }",
            "reject",
            "ip saddr 10.0.0.0/12 jump x",
            "drop comment \"no local endpoints\"",
            "ip daddr 10.0.0.1",
            "dnat to 10.0.0.1:80",
        ] {
            assert!(compile_rule(f, r).is_err(), "{r} should be unsupported");
        }
    }

    #[test]
    fn encodes_rules_as_nft_does() {
        let e = compile_rule(Family::Ip, "ip daddr 10.200.1.10 tcp dport 9000 ip saddr != 10.10.0.0/16 jump m")
            .expect("compiles");
        // Same as `nft --debug=netlink`: payload 4b @ nh+16, l4proto, th dport, 2 bytes @ nh+12 neq.
        assert_eq!(e[0], Expr::Payload { base: 1, offset: 16, len: 4 });
        assert_eq!(e[1], Expr::Cmp { op: CMP_EQ, data: vec![10, 200, 1, 10] });
        assert_eq!(e[3], Expr::Cmp { op: CMP_EQ, data: vec![6] });
        assert_eq!(e[5], Expr::Cmp { op: CMP_EQ, data: vec![0x23, 0x28] });
        assert_eq!(e[6], Expr::Payload { base: 1, offset: 12, len: 2 });
        assert_eq!(e[7], Expr::Cmp { op: CMP_NEQ, data: vec![10, 10] });
        assert_eq!(e[8], Expr::ImmVerdict(Verdict { code: NFT_JUMP, chain: Some("m".into()) }));
    }

    #[test]
    fn concatenated_keys_are_padded_to_registers() {
        let k = encode_key("ipv4_addr . inet_proto . inet_service : verdict", "10.200.1.60 . tcp . 80").expect("key");
        assert_eq!(k, vec![10, 200, 1, 60, 6, 0, 0, 0, 0, 80, 0, 0]);
        assert_eq!(encode_key("ipv4_addr", "10.200.1.60").expect("key"), vec![10, 200, 1, 60]);
        assert!(encode_key("ipv4_addr", "10.200.1.60 . tcp").is_err());
    }
}
