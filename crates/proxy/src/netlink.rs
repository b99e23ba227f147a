//! [`NetlinkApplier`]: sends a [`Transaction`] to the kernel as one nf_tables netlink batch,
//! without the `nft` program.
//!
//! Why: `nft -f` (1.0.6) dumps every chain of the table before it runs any command but `add chain`
//! (its cache), so with 10,000 Services (110,000 chains) even a one-element change costs about
//! one second. A netlink batch costs what it changes.
//!
//! What is encoded here (everything the renderer writes in its default layout, full syncs
//! included): tables, chains (regular and base), `flush chain`, `delete chain|set|table`,
//! `add set|map` (keys of `ipv4_addr`/`ipv6_addr`/`inet_proto`/`inet_service` or concatenations,
//! verdict maps, `dynamic,timeout` sets, and the `typeof` DNAT maps with nft's userdata so that
//! `nft list` prints them as nft would), `flush set|map`, elements of static sets, verdict maps
//! and data maps, and rules made of: `ip|ip6 saddr|daddr [!=] ADDR[/PREFIX]`, `... @set`,
//! concatenations (`ip daddr . meta l4proto . th dport`, `ip daddr . tcp dport . numgen random
//! mod N`) looked up in a set, a verdict map (`vmap @map`) or a data map (`dnat ip to ... map
//! @map`), `tcp|udp|sctp dport N`, `meta l4proto P`, `numgen random mod N == K`, `ct state new`,
//! `ct status dnat`, `fib saddr type local`, `meta mark and M == V`, `meta mark set meta mark
//! or|xor M`, `update @set { ip saddr }`, then `jump|goto CHAIN`, `return`, `drop`, `accept`,
//! `dnat to ADDR:PORT`, `masquerade [fully-random]` or `reject`, and a trailing `comment "..."`.
//! Anything else (anonymous sets such as `ip saddr != { A, B }` with several cluster CIDRs, the
//! `numgen_vmap` layout) is [`Unsupported`]: the whole transaction then goes through `nft -f`
//! instead, so it stays one atomic transaction either way.
//! The encodings match what `nft --debug=netlink` shows for the same text; the netns tests
//! compare `nft list` of a netlink-applied table with an `nft -f`-applied one.
//!
//! Cost: a batch that adds a rule with an expression the kernel validates (a `dnat`, a
//! jump/goto, `meta mark set` ...) or a verdict-map element makes the kernel re-validate every
//! chain reachable from the base chains at commit (`nft_table_validate`); a rule that looks up a
//! data map makes it check every element of the map when the rule is added. The renderer's
//! layout keeps both out of the common path: adding or changing a Service without affinity only
//! adds and deletes map elements.

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
const MSG_NEWSET: u16 = 9;
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
const RULE_USERDATA: u16 = 7;
const SET_TABLE: u16 = 1;
const SET_NAME: u16 = 2;
const SET_FLAGS: u16 = 3;
const SET_KEY_TYPE: u16 = 4;
const SET_KEY_LEN: u16 = 5;
const SET_DATA_TYPE: u16 = 6;
const SET_DATA_LEN: u16 = 7;
const SET_ID: u16 = 10;
const SET_TIMEOUT: u16 = 11;
const SET_USERDATA: u16 = 13;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
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
const META_MARK: u32 = 3;
const CT_STATE: u32 = 0;
const CT_STATUS: u32 = 2;
const CT_STATE_NEW: u32 = 1 << 3;
const IPS_DST_NAT: u32 = 0x20;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_SADDR: u32 = 1;
const RTN_LOCAL: u32 = 2;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;
const NFT_DYNSET_OP_UPDATE: u32 = 1;
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
    /// Last NFTA_SET_ID handed out.
    set_id: u32,
}

impl Batch {
    fn new() -> Self {
        let mut b = Batch { buf: Vec::with_capacity(4096), seq: 0, last_msg: None, set_id: 0 };
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

    /// A message naming only a table and one object in it: `flush chain` (DELRULE without a
    /// rule), `flush set` (DELSETELEM without elements), `delete set`. The table and name
    /// attributes are 1 and 2 in each of these messages.
    fn table_object_msg(&mut self, msg: u16, t: &TableRef, name: &str) {
        const _: () = assert!(RULE_TABLE == 1 && RULE_CHAIN == 2 && ELEM_LIST_TABLE == 1 && ELEM_LIST_SET == 2);
        const _: () = assert!(SET_TABLE == 1 && SET_NAME == 2);
        let m = self.msg(msg, 0, t.family);
        self.str(1, &t.name);
        self.str(2, name);
        self.finish(m);
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

    fn rule(&mut self, t: &TableRef, chain: &str, exprs: &[Expr], comment: Option<&str>) -> Result<(), Unsupported> {
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
                Expr::Lookup { set } => {
                    self.str(1, set); // NFTA_LOOKUP_SET
                    self.u32(2, 1); // sreg 1
                }
                Expr::LookupVmap { set } => {
                    self.str(1, set);
                    self.u32(2, 1); // sreg 1
                    self.u32(3, 0); // dreg: verdict
                }
                Expr::PayloadR { base, offset, len, dreg } => {
                    self.u32(1, *dreg);
                    self.u32(2, *base);
                    self.u32(3, *offset);
                    self.u32(4, *len);
                }
                Expr::MetaR { key, dreg } => {
                    self.u32(2, *key);
                    self.u32(1, *dreg);
                }
                Expr::Ct { key } => {
                    self.u32(1, 1); // dreg
                    self.u32(2, *key);
                }
                Expr::FibSaddrType => {
                    self.u32(1, 1); // dreg
                    self.u32(2, NFT_FIB_RESULT_ADDRTYPE);
                    self.u32(3, NFTA_FIB_F_SADDR);
                }
                Expr::Masq { flags } => {
                    self.u32(1, *flags);
                }
                Expr::Reject { code } => {
                    self.u32(1, 0); // NFT_REJECT_ICMP_UNREACH
                    self.attr(2, &[*code]);
                }
                Expr::Bitwise { mask, xor } => {
                    self.u32(1, 1); // sreg
                    self.u32(2, 1); // dreg
                    self.u32(3, mask.len() as u32);
                    self.value(4, mask)?;
                    self.value(5, xor)?;
                }
                Expr::MetaSet { key } => {
                    self.u32(2, *key);
                    self.u32(3, 1); // sreg 1
                }
                Expr::DynsetUpdate { set } => {
                    self.str(1, set); // NFTA_DYNSET_SET_NAME
                    self.u32(3, NFT_DYNSET_OP_UPDATE);
                    self.u32(4, 1); // sreg key 1
                }
                Expr::NumgenR { modulus, dreg } => {
                    self.u32(1, *dreg);
                    self.u32(2, *modulus);
                    self.u32(3, NUMGEN_RANDOM);
                    self.u32(4, 0); // offset
                }
                Expr::LookupMap { set } => {
                    self.str(1, set);
                    self.u32(2, 1); // sreg 1
                    self.u32(3, 1); // dreg 1
                }
                Expr::DnatMap { family, proto_reg } => {
                    // As nft: no flags attribute; the kernel derives MAP_IPS and
                    // PROTO_SPECIFIED from the registers given.
                    self.u32(1, NAT_DNAT);
                    self.u32(2, u32::from(*family));
                    self.u32(3, 1); // addr min: reg 1
                    self.u32(5, *proto_reg);
                }
            }
            self.end_nest(d)?;
            self.end_nest(el)?;
        }
        self.end_nest(list)?;
        if let Some(c) = comment {
            // NFTA_RULE_USERDATA: one TLV, NFTNL_UDATA_RULE_COMMENT (0), the text with its NUL.
            let len = u8::try_from(c.len() + 1).map_err(|_| Unsupported(format!("comment {c:?}")))?;
            let mut ud = vec![0u8, len];
            ud.extend_from_slice(c.as_bytes());
            ud.push(0);
            self.attr(RULE_USERDATA, &ud);
        }
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
                        match encode_data(&set.type_, v)? {
                            Some(bytes) => self.value(ELEM_DATA, &bytes)?,
                            None => self.verdict(ELEM_DATA, &parse_verdict(v)?)?,
                        }
                    }
                }
                self.end_nest(el)?;
            }
            self.end_nest(list)?;
            self.finish(s);
        }
        Ok(())
    }

    /// `add set|map` (NFT_MSG_NEWSET): key type and length from the `type` line, verdict data
    /// for maps, `dynamic,timeout` flags with the default timeout. Like nft, without the
    /// userdata nft keeps for its own printing (not needed for these key types).
    fn new_set(&mut self, t: &TableRef, set: &Set) -> Result<(), Unsupported> {
        let bad = || Unsupported(format!("set {} of type {:?}", set.name, set.type_));
        let decl = SetDecl::parse(&set.type_).ok_or_else(bad)?;
        let (key_type, key_len) = SetDecl::type_len(&decl.key);
        let data = decl.data.clone();
        let mut flags = 0u32;
        if data.is_some() {
            flags |= NFT_SET_MAP;
        }
        match set.flags {
            None => {}
            Some("dynamic,timeout") => flags |= NFT_SET_TIMEOUT | NFT_SET_EVAL,
            Some(_) => return Err(bad()),
        }
        let m = self.msg(MSG_NEWSET, NLM_F_CREATE, t.family);
        self.str(SET_TABLE, &t.name);
        self.str(SET_NAME, &set.name);
        self.u32(SET_FLAGS, flags);
        self.u32(SET_KEY_TYPE, key_type);
        self.u32(SET_KEY_LEN, key_len);
        match &data {
            None => {}
            Some(None) => {
                self.u32(SET_DATA_TYPE, NFT_DATA_VERDICT);
                self.u32(SET_DATA_LEN, 0);
            }
            Some(Some(fields)) => {
                let (dtype, dlen) = SetDecl::type_len(fields);
                self.u32(SET_DATA_TYPE, dtype);
                self.u32(SET_DATA_LEN, dlen);
            }
        }
        self.set_id += 1;
        self.u32(SET_ID, self.set_id);
        if let Some(secs) = set.timeout_secs {
            self.attr(SET_TIMEOUT, &(u64::from(secs) * 1000).to_be_bytes());
        }
        if let Some(ud) = decl.udata() {
            self.attr(SET_USERDATA, &ud);
        }
        self.finish(m);
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
    /// `lookup reg 1 set NAME`.
    Lookup { set: String },
    /// `lookup reg 1 set NAME dreg 0` (verdict map).
    LookupVmap { set: String },
    /// `payload load LEN @ BASE + OFFSET => reg DREG` (concatenations).
    PayloadR { base: u32, offset: u32, len: u32, dreg: u32 },
    /// `meta load KEY => reg DREG` (concatenations).
    MetaR { key: u32, dreg: u32 },
    /// `ct load KEY => reg 1`.
    Ct { key: u32 },
    /// `fib saddr type => reg 1`.
    FibSaddrType,
    /// `masq flags F`.
    Masq { flags: u32 },
    /// `reject type 0 code C` (ICMP port unreachable).
    Reject { code: u8 },
    /// `bitwise reg 1 = (reg 1 & mask) ^ xor` (4 bytes).
    Bitwise { mask: Vec<u8>, xor: Vec<u8> },
    /// `meta set KEY with reg 1`.
    MetaSet { key: u32 },
    /// `dynset update reg_key 1 set NAME`.
    DynsetUpdate { set: String },
    /// `numgen reg DREG = random mod M` (a concatenation's last part).
    NumgenR { modulus: u32, dreg: u32 },
    /// `lookup reg 1 set NAME dreg 1` (a data map: the value lands in reg 1 on).
    LookupMap { set: String },
    /// `nat dnat FAMILY addr_min reg 1 proto_min reg PROTO_REG` (address and port from a map).
    DnatMap { family: u8, proto_reg: u32 },
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
            Expr::Lookup { .. } | Expr::LookupVmap { .. } => "lookup",
            Expr::PayloadR { .. } => "payload",
            Expr::MetaR { .. } => "meta",
            Expr::Ct { .. } => "ct",
            Expr::FibSaddrType => "fib",
            Expr::Masq { .. } => "masq",
            Expr::Reject { .. } => "reject",
            Expr::Bitwise { .. } => "bitwise",
            Expr::MetaSet { .. } => "meta",
            Expr::DynsetUpdate { .. } => "dynset",
            Expr::NumgenR { .. } => "numgen",
            Expr::LookupMap { .. } => "lookup",
            Expr::DnatMap { .. } => "nat",
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

fn parse_u32(t: &str) -> Option<u32> {
    match t.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => t.parse().ok(),
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

/// Splits a trailing `comment "..."` off a rule.
fn split_comment(rule: &str) -> (&str, Option<&str>) {
    if let Some(pos) = rule.find(" comment \"") {
        let c = &rule[pos + 10..];
        if let Some(text) = c.strip_suffix('"') {
            if !text.contains('"') {
                return (&rule[..pos], Some(text));
            }
        }
    }
    if let Some(c) = rule.strip_prefix("comment \"").and_then(|c| c.strip_suffix('"')) {
        return ("", Some(c));
    }
    (rule, None)
}

/// Compiles one rule (nft text as the renderer writes it, without a comment) into expressions.
fn compile_rule(family: Family, rule: &str) -> Result<Vec<Expr>, Unsupported> {
    let toks: Vec<&str> = rule.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let l4 = |out: &mut Vec<Expr>, p: u8| {
        out.push(Expr::Meta { key: META_L4PROTO });
        out.push(Expr::Cmp { op: CMP_EQ, data: vec![p] });
    };
    while i < toks.len() {
        // A concatenation `A . B [. C] @set` / `A . B vmap @map`.
        if toks.get(i + 2) == Some(&".") {
            compile_concat(family, &toks, &mut i, rule, &mut out)?;
            match (toks.get(i), toks.get(i + 1)) {
                (Some(&"vmap"), Some(set)) if set.starts_with('@') && toks.len() == i + 2 => {
                    out.push(Expr::LookupVmap { set: set[1..].to_string() });
                    return Ok(out);
                }
                (Some(set), _) if set.starts_with('@') => {
                    out.push(Expr::Lookup { set: set[1..].to_string() });
                    i += 1;
                    continue;
                }
                _ => return Err(unsupported(rule)),
            }
        }
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
                if let Some(set) = text.strip_prefix('@') {
                    if op != CMP_EQ {
                        return Err(unsupported(rule));
                    }
                    out.push(Expr::Payload { base: PAYLOAD_NETWORK, offset: off, len: addr_len });
                    out.push(Expr::Lookup { set: set.to_string() });
                    i += 1;
                    continue;
                }
                let (addr, prefix) = match text.split_once('/') {
                    Some((a, p)) => (a, p.parse::<u32>().map_err(|_| unsupported(rule))?),
                    None => (*text, addr_len * 8),
                };
                let ip: IpAddr = addr.parse().map_err(|_| unsupported(rule))?;
                let bytes = addr_bytes(ip);
                if bytes.len() as u32 != addr_len || prefix == 0 || prefix > addr_len * 8 {
                    return Err(unsupported(rule));
                }
                if prefix % 8 == 0 {
                    let n = prefix / 8;
                    out.push(Expr::Payload { base: PAYLOAD_NETWORK, offset: off, len: n });
                    out.push(Expr::Cmp { op, data: bytes[..n as usize].to_vec() });
                } else {
                    // As nft: load the whole address, mask, compare.
                    let n = addr_len;
                    let mask: Vec<u8> = (0..n)
                        .map(|b| {
                            let bits = prefix.saturating_sub(b * 8).min(8);
                            (0xffu16 << (8 - bits)) as u8
                        })
                        .collect();
                    let data: Vec<u8> = bytes[..n as usize].iter().zip(&mask).map(|(a, m)| a & m).collect();
                    out.push(Expr::Payload { base: PAYLOAD_NETWORK, offset: off, len: n });
                    out.push(Expr::Bitwise { mask, xor: vec![0; n as usize] });
                    out.push(Expr::Cmp { op, data });
                }
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
            // `meta mark set meta mark or M`: mark |= M (load, bitwise, store).
            "meta" if toks[i..].starts_with(&["meta", "mark", "set", "meta", "mark", "or"]) => {
                let m = toks.get(i + 6).and_then(|t| parse_u32(t)).ok_or_else(|| unsupported(rule))?;
                out.push(Expr::Meta { key: META_MARK });
                out.push(Expr::Bitwise { mask: (!m).to_ne_bytes().to_vec(), xor: m.to_ne_bytes().to_vec() });
                out.push(Expr::MetaSet { key: META_MARK });
                i += 7;
            }
            // `update @SET { ip saddr }` (affinity).
            "update" => {
                let (Some(set), Some(&"{"), Some(ipk), Some(&"saddr"), Some(&"}")) =
                    (toks.get(i + 1).and_then(|t| t.strip_prefix('@')), toks.get(i + 2), toks.get(i + 3), toks.get(i + 4), toks.get(i + 5))
                else {
                    return Err(unsupported(rule));
                };
                if *ipk != family.keyword() {
                    return Err(unsupported(rule));
                }
                let (len, off) = match family {
                    Family::Ip => (4, 12),
                    Family::Ip6 => (16, 8),
                };
                out.push(Expr::Payload { base: PAYLOAD_NETWORK, offset: off, len });
                out.push(Expr::DynsetUpdate { set: set.to_string() });
                i += 6;
            }
            // `meta mark and M == V` (a test of mark bits).
            "meta" if toks[i..].starts_with(&["meta", "mark", "and"]) && toks.get(i + 4) == Some(&"==") => {
                let m = toks.get(i + 3).and_then(|t| parse_u32(t)).ok_or_else(|| unsupported(rule))?;
                let v = toks.get(i + 5).and_then(|t| parse_u32(t)).ok_or_else(|| unsupported(rule))?;
                out.push(Expr::Meta { key: META_MARK });
                out.push(Expr::Bitwise { mask: m.to_ne_bytes().to_vec(), xor: vec![0; 4] });
                out.push(Expr::Cmp { op: CMP_EQ, data: v.to_ne_bytes().to_vec() });
                i += 6;
            }
            // `meta mark set meta mark xor M`.
            "meta" if toks[i..].starts_with(&["meta", "mark", "set", "meta", "mark", "xor"]) => {
                let m = toks.get(i + 6).and_then(|t| parse_u32(t)).ok_or_else(|| unsupported(rule))?;
                out.push(Expr::Meta { key: META_MARK });
                out.push(Expr::Bitwise { mask: u32::MAX.to_ne_bytes().to_vec(), xor: m.to_ne_bytes().to_vec() });
                out.push(Expr::MetaSet { key: META_MARK });
                i += 7;
            }
            "ct" if matches!(toks.get(i + 1..i + 3), Some(["state", "new"]) | Some(["status", "dnat"])) => {
                let (key, bit) = if toks[i + 1] == "state" { (CT_STATE, CT_STATE_NEW) } else { (CT_STATUS, IPS_DST_NAT) };
                out.push(Expr::Ct { key });
                out.push(Expr::Bitwise { mask: bit.to_ne_bytes().to_vec(), xor: vec![0; 4] });
                out.push(Expr::Cmp { op: CMP_NEQ, data: vec![0; 4] });
                i += 3;
            }
            "fib" if toks.get(i + 1..i + 4) == Some(&["saddr", "type", "local"]) => {
                out.push(Expr::FibSaddrType);
                out.push(Expr::Cmp { op: CMP_EQ, data: RTN_LOCAL.to_ne_bytes().to_vec() });
                i += 4;
            }
            "masquerade" => {
                let flags = match toks.get(i + 1) {
                    None => 0,
                    Some(&"fully-random") if toks.len() == i + 2 => NF_NAT_RANGE_PROTO_RANDOM_FULLY,
                    _ => return Err(unsupported(rule)),
                };
                out.push(Expr::Masq { flags });
                return Ok(out);
            }
            "reject" if toks.len() == i + 1 => {
                out.push(Expr::Reject { code: if family == Family::Ip { 3 } else { 4 } });
                return Ok(out);
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
            // `dnat ip to CONCAT map @MAP` (address and port from a map; the shared DNAT maps).
            "dnat" if toks.get(i + 1) == Some(&family.keyword()) && toks.get(i + 2) == Some(&"to") => {
                i += 3;
                compile_concat(family, &toks, &mut i, rule, &mut out)?;
                let (Some(&"map"), Some(set), true) = (toks.get(i), toks.get(i + 1), toks.len() == i + 2) else {
                    return Err(unsupported(rule));
                };
                let set = set.strip_prefix('@').ok_or_else(|| unsupported(rule))?;
                out.push(Expr::LookupMap { set: set.to_string() });
                // The value is `ADDR . PORT`: the port follows the address's registers.
                let proto_reg = match family {
                    Family::Ip => 9,
                    Family::Ip6 => 12,
                };
                out.push(Expr::DnatMap { family: nfproto(family), proto_reg });
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
    // A rule must end in a verdict or a statement (a bare match: the renderer writes none).
    match out.last() {
        Some(Expr::MetaSet { .. } | Expr::DynsetUpdate { .. }) => Ok(out),
        _ => Err(unsupported(rule)),
    }
}

/// Compiles a concatenation starting at `toks[*i]` (`ip daddr . meta l4proto . th dport
/// [. numgen random mod N]`) into register loads from reg 1 on, and moves `*i` past it.
fn compile_concat(family: Family, toks: &[&str], i: &mut usize, rule: &str, out: &mut Vec<Expr>) -> Result<(), Unsupported> {
    // `tcp dport` in a concatenation implies `meta l4proto tcp`, which nft puts first.
    let mut j = *i;
    loop {
        let part = toks.get(j);
        if let (Some(p), Some(&"dport")) = (part.and_then(|p| proto_number(p)), toks.get(j + 1)) {
            out.push(Expr::Meta { key: META_L4PROTO });
            out.push(Expr::Cmp { op: CMP_EQ, data: vec![p] });
            break;
        }
        j += if part == Some(&"numgen") { 4 } else { 2 };
        if toks.get(j) != Some(&".") {
            break;
        }
        j += 1;
    }
    let mut word = 0u32;
    loop {
        let dreg = if word == 0 { 1 } else { 8 + word };
        if toks.get(*i) == Some(&"numgen") {
            let (Some(&"random"), Some(&"mod"), Some(m)) = (toks.get(*i + 1), toks.get(*i + 2), toks.get(*i + 3)) else {
                return Err(unsupported(rule));
            };
            let modulus: u32 = m.parse().map_err(|_| unsupported(rule))?;
            out.push(Expr::NumgenR { modulus, dreg });
            word += 1;
            *i += 4;
        } else {
            let (base, offset, len, meta) = match (toks.get(*i), toks.get(*i + 1)) {
                (Some(&k), Some(&"saddr")) if k == family.keyword() => match family {
                    Family::Ip => (PAYLOAD_NETWORK, 12, 4, false),
                    Family::Ip6 => (PAYLOAD_NETWORK, 8, 16, false),
                },
                (Some(&k), Some(&"daddr")) if k == family.keyword() => match family {
                    Family::Ip => (PAYLOAD_NETWORK, 16, 4, false),
                    Family::Ip6 => (PAYLOAD_NETWORK, 24, 16, false),
                },
                (Some(&"meta"), Some(&"l4proto")) => (0, 0, 1, true),
                (Some(&"th"), Some(&"dport")) => (PAYLOAD_TRANSPORT, 2, 2, false),
                (Some(p), Some(&"dport")) if proto_number(p).is_some() => (PAYLOAD_TRANSPORT, 2, 2, false),
                _ => return Err(unsupported(rule)),
            };
            if meta {
                out.push(Expr::MetaR { key: META_L4PROTO, dreg });
            } else {
                out.push(Expr::PayloadR { base, offset, len, dreg });
            }
            word += len.div_ceil(4);
            *i += 2;
        }
        if toks.get(*i) == Some(&".") {
            *i += 1;
        } else {
            return Ok(());
        }
    }
}

/// One part of a set's key or of a map's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Ip4,
    Ip6,
    Proto,
    /// `inet_service` / `th dport`.
    Service,
    /// `tcp|udp|sctp dport` (the protocol number; same bytes, only the userdata differs).
    Port(u8),
    /// A `numgen` result (host byte order).
    Index(u32),
}

impl Field {
    /// nft's datatype id and length in bytes.
    fn type_len(self) -> (u32, u32) {
        match self {
            Field::Ip4 => (7, 4),
            Field::Ip6 => (8, 16),
            Field::Proto => (12, 1),
            Field::Service | Field::Port(_) => (13, 2),
            Field::Index(_) => (4, 4),
        }
    }

    fn encode(self, text: &str) -> Option<Vec<u8>> {
        Some(match self {
            Field::Ip4 => addr_bytes(IpAddr::V4(text.parse().ok()?)),
            Field::Ip6 => addr_bytes(IpAddr::V6(text.parse().ok()?)),
            Field::Proto => vec![proto_number(text)?],
            Field::Service | Field::Port(_) => text.parse::<u16>().ok()?.to_be_bytes().to_vec(),
            Field::Index(_) => text.parse::<u32>().ok()?.to_ne_bytes().to_vec(),
        })
    }

    /// From a `type` word (`ipv4_addr`) or a `typeof` expression (`ip daddr`).
    fn parse(text: &str, typeof_: bool) -> Option<Field> {
        if !typeof_ {
            return match text {
                "ipv4_addr" => Some(Field::Ip4),
                "ipv6_addr" => Some(Field::Ip6),
                "inet_proto" => Some(Field::Proto),
                "inet_service" => Some(Field::Service),
                _ => None,
            };
        }
        match text {
            "ip daddr" => Some(Field::Ip4),
            "ip6 daddr" => Some(Field::Ip6),
            "meta l4proto" => Some(Field::Proto),
            "th dport" => Some(Field::Service),
            _ if text.ends_with(" dport") => proto_number(text.trim_end_matches(" dport")).map(Field::Port),
            _ => text.strip_prefix("numgen random mod ")?.parse().ok().map(Field::Index),
        }
    }

    /// nft's userdata for this part of a `typeof` (libnftnl TLVs: expression type, then the
    /// expression's own description).
    fn typeof_udata(self) -> Vec<u8> {
        let u32_tlv = |t: u8, v: u32| -> Vec<u8> {
            let mut b = vec![t, 4];
            b.extend_from_slice(&v.to_ne_bytes());
            b
        };
        // (expression type, its TLVs): payload = 7 (desc, field), meta = 9 (key), numgen = 23.
        let (etype, data): (u32, Vec<u8>) = match self {
            Field::Ip4 => (7, [u32_tlv(0, 12), u32_tlv(1, 12)].concat()),
            Field::Ip6 => (7, [u32_tlv(0, 13), u32_tlv(1, 9)].concat()),
            Field::Proto => (9, u32_tlv(0, META_L4PROTO)),
            Field::Service => (7, [u32_tlv(0, 11), u32_tlv(1, 2)].concat()),
            // nft's protocol descriptions: udp 6, tcp 8, sctp 10; field 2 is dport in each.
            Field::Port(p) => {
                let desc = match p {
                    17 => 6,
                    132 => 10,
                    _ => 8,
                };
                (7, [u32_tlv(0, desc), u32_tlv(1, 2)].concat())
            }
            Field::Index(m) => (23, [u32_tlv(0, NUMGEN_RANDOM), u32_tlv(1, m), u32_tlv(2, 0)].concat()),
        };
        let mut out = u32_tlv(0, etype);
        out.push(1);
        out.push(data.len() as u8);
        out.extend_from_slice(&data);
        out
    }
}

/// A set's declaration taken apart: key parts, and for maps the value (`None` in the inner
/// option: a verdict).
struct SetDecl {
    typeof_: bool,
    key: Vec<Field>,
    data: Option<Option<Vec<Field>>>,
}

impl SetDecl {
    fn parse(type_: &str) -> Option<SetDecl> {
        let (typeof_, body) = match type_.strip_prefix("typeof ") {
            Some(b) => (true, b),
            None => (false, type_),
        };
        let fields = |t: &str| -> Option<Vec<Field>> { t.split(" . ").map(|f| Field::parse(f, typeof_)).collect() };
        let (k, d) = match body.split_once(" : ") {
            Some((k, d)) => (k, Some(d)),
            None => (body, None),
        };
        let data = match d {
            None => None,
            Some("verdict") => Some(None),
            Some(d) => Some(Some(fields(d)?)),
        };
        Some(SetDecl { typeof_, key: fields(k)?, data })
    }

    /// Datatype id (6 bits per part) and length (parts padded to 4 bytes when concatenated).
    fn type_len(fields: &[Field]) -> (u32, u32) {
        let concat = fields.len() > 1;
        fields.iter().fold((0, 0), |(t, l), f| {
            let (id, len) = f.type_len();
            ((t << 6) | id, l + if concat { len.div_ceil(4) * 4 } else { len })
        })
    }

    fn encode(fields: &[Field], text: &str) -> Option<Vec<u8>> {
        let parts: Vec<&str> = text.split(" . ").collect();
        if parts.len() != fields.len() {
            return None;
        }
        let mut out = Vec::new();
        for (f, p) in fields.iter().zip(parts) {
            let mut b = f.encode(p)?;
            if fields.len() > 1 {
                b.resize(b.len().div_ceil(4) * 4, 0);
            }
            out.extend_from_slice(&b);
        }
        Some(out)
    }

    /// NFTA_SET_USERDATA for a `typeof` map, as nft 1.0.6 writes it (so `nft list` prints the
    /// `typeof` line and readable elements): key and data byte order, then the key and data
    /// expressions (each a concatenation of its parts), then "merge elements" off.
    fn udata(&self) -> Option<Vec<u8>> {
        if !self.typeof_ {
            return None;
        }
        let concat = |fields: &[Field]| -> Option<Vec<u8>> {
            let mut parts = Vec::new();
            for (i, f) in fields.iter().enumerate() {
                let u = f.typeof_udata();
                parts.push(u8::try_from(i).ok()?);
                parts.push(u8::try_from(u.len()).ok()?);
                parts.extend_from_slice(&u);
            }
            let mut out = vec![0, 4];
            out.extend_from_slice(&13u32.to_ne_bytes()); // EXPR_CONCAT
            out.push(1);
            out.push(u8::try_from(parts.len()).ok()?);
            out.extend_from_slice(&parts);
            Some(out)
        };
        let mut out = vec![0, 4, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0];
        let k = concat(&self.key)?;
        out.push(3);
        out.push(u8::try_from(k.len()).ok()?);
        out.extend_from_slice(&k);
        if let Some(Some(d)) = &self.data {
            let d = concat(d)?;
            out.push(4);
            out.push(u8::try_from(d.len()).ok()?);
            out.extend_from_slice(&d);
        }
        out.extend_from_slice(&[6, 4, 0, 0, 0, 0]);
        Some(out)
    }
}

/// Key bytes of a set element, from its text and the set's `type` line.
fn encode_key(type_: &str, key: &str) -> Result<Vec<u8>, Unsupported> {
    let bad = || Unsupported(format!("element {key:?} of type {type_:?}"));
    let decl = SetDecl::parse(type_).ok_or_else(bad)?;
    SetDecl::encode(&decl.key, key).ok_or_else(bad)
}

/// Value bytes of a data-map element (`None` for verdict maps and plain sets).
fn encode_data(type_: &str, value: &str) -> Result<Option<Vec<u8>>, Unsupported> {
    let bad = || Unsupported(format!("value {value:?} of type {type_:?}"));
    let decl = SetDecl::parse(type_).ok_or_else(bad)?;
    match decl.data {
        Some(Some(fields)) => SetDecl::encode(&fields, value).map(Some).ok_or_else(bad),
        _ => Ok(None),
    }
}

fn check_set(set: &Set) -> Result<(), Unsupported> {
    if set.flags.is_some() || set.timeout_secs.is_some() || set.dynamic {
        return Err(Unsupported(format!("elements of set {} (flags/timeout)", set.name)));
    }
    match SetDecl::parse(&set.type_) {
        Some(d) if d.data.is_some() == set.is_map => Ok(()),
        _ => Err(Unsupported(format!("set {} of type {:?}", set.name, set.type_))),
    }
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
            Op::FlushChain(t, c) => b.table_object_msg(MSG_DELRULE, t, c),
            Op::AddRule(t, c, r) => {
                let (body, comment) = split_comment(r);
                b.rule(t, c, &compile_rule(t.family, body)?, comment)?
            }
            Op::AddSet(t, s) => b.new_set(t, s)?,
            Op::FlushSet(t, s, _) => b.table_object_msg(MSG_DELSETELEM, t, s),
            Op::DeleteSet(t, s) => b.table_object_msg(MSG_DELSET, t, s),
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
            "ip daddr 10.200.1.10 tcp dport 9000 ip saddr != 10.10.0.0/16 meta mark set meta mark or 0x4000",
            "numgen random mod 2 == 0 meta l4proto tcp dnat to 10.10.1.2:80",
            "goto svc-default/svc/tcp/p80",
            "meta mark set meta mark or 0x4000",
            "meta l4proto tcp dnat to 10.10.1.2:80",
            "ip saddr @aff-x meta l4proto tcp update @aff-x { ip saddr } dnat to 10.10.1.2:80",
            "numgen random mod 2 == 0 meta l4proto tcp update @aff-x { ip saddr } dnat to 10.10.1.2:80",
        ] {
            assert!(compile_rule(f, r).is_ok(), "{r}");
        }
        assert!(compile_rule(Family::Ip6, "meta l4proto udp dnat to [fd00::1]:53").is_ok());
        for r in [
            "ct state new jump service-endpoints-check",
            "ip daddr . meta l4proto . th dport vmap @service-ips",
            "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
            "ip daddr @cluster-ips reject",
            "ip daddr 10.200.0.0/20 drop",
            "meta mark and 0x4000 == 0 return",
            "meta mark set meta mark xor 0x4000",
            "masquerade fully-random",
            "ct status dnat ip saddr . ip daddr @hairpin-ips masquerade fully-random",
            "fib saddr type local meta mark set meta mark or 0x4000",
            "reject",
        ] {
            assert!(compile_rule(f, r).is_ok(), "{r}");
        }
        assert_eq!(split_comment("drop comment \"no local endpoints\""), ("drop", Some("no local endpoints")));
        // As `nft --debug=netlink`: a /20 loads the whole address and masks it.
        let e = compile_rule(f, "ip daddr 10.200.0.0/20 drop").expect("compiles");
        assert_eq!(e[1], Expr::Bitwise { mask: vec![0xff, 0xff, 0xf0, 0], xor: vec![0; 4] });
        assert_eq!(e[2], Expr::Cmp { op: CMP_EQ, data: vec![10, 200, 0, 0] });
        for r in [
            "update @aff-x { ip daddr }",
            "update @aff-x { ip6 saddr } accept",
            "ip saddr != { 10.0.0.0/8, 192.168.0.0/16 } jump x",
            "meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.0.0.1 . 80, 1 : 10.0.0.2 . 80 }",
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
    fn dnat_map_userdata_is_what_nft_writes() {
        // NFTA_SET_USERDATA bytes nft 1.0.6 sent for `typeof ... numgen random mod 2 : ... daddr .
        // th|tcp dport` (captured with `nft --debug=mnl`), for both map kinds and families.
        let want = [
            ("typeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport", "000400000000010400000000036000040d00000001580014000407000000010c00040c00000001040c000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000031a0004170000000112000401000000010402000000020400000000043400040d000000012c0014000407000000010c00040c00000001040c0000000114000407000000010c00040b000000010402000000060400000000"),
            ("typeof meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport", "000400000000010400000000034a00040d0000000142000e00040900000001060004100000000114000407000000010c00040b000000010402000000021a0004170000000112000401000000010402000000020400000000043400040d000000012c0014000407000000010c00040c00000001040c0000000114000407000000010c00040b000000010402000000060400000000"),
            ("typeof ip6 daddr . meta l4proto . th dport . numgen random mod 2 : ip6 daddr . th dport", "000400000000010400000000036000040d00000001580014000407000000010c00040d000000010409000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000031a0004170000000112000401000000010402000000020400000000043400040d000000012c0014000407000000010c00040d0000000104090000000114000407000000010c00040b000000010402000000060400000000"),
            ("typeof meta l4proto . th dport . numgen random mod 2 : ip6 daddr . th dport", "000400000000010400000000034a00040d0000000142000e00040900000001060004100000000114000407000000010c00040b000000010402000000021a0004170000000112000401000000010402000000020400000000043400040d000000012c0014000407000000010c00040d0000000104090000000114000407000000010c00040b000000010402000000060400000000"),
        ];
        let want_tcp = [
            ("typeof ip daddr . tcp dport . numgen random mod 2 : ip daddr . tcp dport", "000400000000010400000000035000040d00000001480014000407000000010c00040c00000001040c0000000114000407000000010c000408000000010402000000021a0004170000000112000401000000010402000000020400000000043400040d000000012c0014000407000000010c00040c00000001040c0000000114000407000000010c000408000000010402000000060400000000"),
            ("typeof ip daddr . udp dport . numgen random mod 3 : ip daddr . udp dport", "000400000000010400000000035000040d00000001480014000407000000010c00040c00000001040c0000000114000407000000010c000406000000010402000000021a0004170000000112000401000000010403000000020400000000043400040d000000012c0014000407000000010c00040c00000001040c0000000114000407000000010c000406000000010402000000060400000000"),
            ("typeof sctp dport . numgen random mod 2 : ip6 daddr . sctp dport", "000400000000010400000000033a00040d00000001320014000407000000010c00040a000000010402000000011a0004170000000112000401000000010402000000020400000000043400040d000000012c0014000407000000010c00040d0000000104090000000114000407000000010c00040a000000010402000000060400000000"),
            ("typeof ip6 daddr . udp dport . numgen random mod 2 : ip6 daddr . udp dport", "000400000000010400000000035000040d00000001480014000407000000010c00040d0000000104090000000114000407000000010c000406000000010402000000021a0004170000000112000401000000010402000000020400000000043400040d000000012c0014000407000000010c00040d0000000104090000000114000407000000010c000406000000010402000000060400000000"),
        ];
        for (decl, hex) in want.into_iter().chain(want_tcp) {
            let d = SetDecl::parse(decl).expect("parses");
            let got: String = d.udata().expect("typeof has userdata").iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(got, hex, "{decl}");
        }
        let d = SetDecl::parse(want[0].0).expect("parses");
        assert_eq!(SetDecl::type_len(&d.key), ((7 << 18) | (12 << 12) | (13 << 6) | 4, 16));
        assert_eq!(SetDecl::type_len(d.data.as_ref().and_then(|d| d.as_ref()).expect("data")), ((7 << 6) | 13, 8));
        // Keys and values: the numgen pick in host byte order, the port in network order.
        let udp = want_tcp[1].0;
        assert_eq!(encode_key(udp, "10.96.0.1 . 53 . 1").expect("key"), [&[10, 96, 0, 1, 0, 53, 0, 0][..], &1u32.to_ne_bytes()].concat());
        assert_eq!(encode_data(udp, "10.10.0.5 . 8053").expect("value"), Some(vec![10, 10, 0, 5, 0x1f, 0x75, 0, 0]));
        assert!(encode_data(udp, "10.10.0.5").is_err());
        assert!(SetDecl::parse("typeof ip saddr : verdict").is_none());
    }

    #[test]
    fn compiles_the_dnat_map_rules() {
        // As `nft --debug=netlink` shows for the same text (the l4proto match first).
        let r = compile_rule(Family::Ip, "dnat ip to ip daddr . udp dport . numgen random mod 3 map @service-dnat-udp-3").expect("compiles");
        assert_eq!(
            r,
            vec![
                Expr::Meta { key: META_L4PROTO },
                Expr::Cmp { op: CMP_EQ, data: vec![17] },
                Expr::PayloadR { base: PAYLOAD_NETWORK, offset: 16, len: 4, dreg: 1 },
                Expr::PayloadR { base: PAYLOAD_TRANSPORT, offset: 2, len: 2, dreg: 9 },
                Expr::NumgenR { modulus: 3, dreg: 10 },
                Expr::LookupMap { set: "service-dnat-udp-3".into() },
                Expr::DnatMap { family: 2, proto_reg: 9 },
            ]
        );
        let r = compile_rule(Family::Ip6, "ip6 daddr @nodeport-ips dnat ip6 to sctp dport . numgen random mod 2 map @nodeport-dnat-sctp-2").expect("compiles");
        assert_eq!(
            r,
            vec![
                Expr::Payload { base: PAYLOAD_NETWORK, offset: 24, len: 16 },
                Expr::Lookup { set: "nodeport-ips".into() },
                Expr::Meta { key: META_L4PROTO },
                Expr::Cmp { op: CMP_EQ, data: vec![132] },
                Expr::PayloadR { base: PAYLOAD_TRANSPORT, offset: 2, len: 2, dreg: 1 },
                Expr::NumgenR { modulus: 2, dreg: 9 },
                Expr::LookupMap { set: "nodeport-dnat-sctp-2".into() },
                Expr::DnatMap { family: 10, proto_reg: 12 },
            ]
        );
        assert!(compile_rule(Family::Ip, "dnat ip to ip daddr . th dport map").is_err());
        assert!(compile_rule(Family::Ip, "dnat ip to ip daddr . th dport . numgen random mod x map @m").is_err());
    }

    #[test]
    fn concatenated_keys_are_padded_to_registers() {
        let k = encode_key("ipv4_addr . inet_proto . inet_service : verdict", "10.200.1.60 . tcp . 80").expect("key");
        assert_eq!(k, vec![10, 200, 1, 60, 6, 0, 0, 0, 0, 80, 0, 0]);
        assert_eq!(encode_key("ipv4_addr", "10.200.1.60").expect("key"), vec![10, 200, 1, 60]);
        assert!(encode_key("ipv4_addr", "10.200.1.60 . tcp").is_err());
    }
}
