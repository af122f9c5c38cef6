//! The only module that speaks netlink, and the only one with `unsafe`.
//!
//! It turns [`Op`]s into libnftnl objects (via `nftnl-sys`), writes them as one nf_tables
//! batch (`BATCH_BEGIN … BATCH_END`, every message with `NLM_F_ACK`), sends it with one
//! `sendto` on an `mnl` socket, and reads one answer per message, matched by sequence number:
//! an error names the operation that failed. The kernel applies the batch as one transaction:
//! all of it or nothing.
//!
//! It can also list our table (netlink dumps), for the periodic drift check.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_char, c_void, CStr, CString};
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::time::Duration;

use nftnl_sys as sys;

use crate::render::netlink::{
    self as nl, AnonymousSet, ElemDef, Expr, RuleDef, SetDef, SetRef, Verdict,
};
use crate::ruleset::diff::Op;
use crate::ruleset::{Family, TABLE_NAME};

const NFPROTO_INET: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Room the batch buffer always keeps ahead of the next message: more than the largest message
/// libnftnl or the nftnl crate can write (`nftnl::nft_nlmsg_maxsize()`, 64 KiB plus a page;
/// element messages stop at 8 KiB, rules and sets are far smaller).
const MAX_MESSAGE: usize = 128 * 1024;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_RETURN: i32 = -5;
const NFT_LOOKUP_F_INV: u32 = 1;

/// What went wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open a netfilter netlink socket: {0}")]
    Socket(io::Error),
    #[error("cannot send the batch ({messages} messages, {bytes} bytes): {source}")]
    Send {
        messages: usize,
        bytes: usize,
        source: io::Error,
    },
    #[error("reading the kernel's answers: {0}")]
    Receive(io::Error),
    #[error("the kernel rejected the transaction: {operation}: {source}")]
    Rejected {
        operation: String,
        source: io::Error,
    },
    #[error("the kernel did not answer {missing} of {expected} messages")]
    Unanswered { missing: usize, expected: usize },
    #[error("listing the table: {0}")]
    List(String),
}

impl Error {
    /// Short label for logs and the failure counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Socket(_) => "socket",
            Error::Send { .. } => "send",
            Error::Receive(_) => "receive",
            Error::Rejected { .. } => "rejected",
            Error::Unanswered { .. } => "unanswered",
            Error::List(_) => "list",
        }
    }
}

/// Size of what was sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub messages: usize,
    pub bytes: usize,
}

/// A netfilter netlink socket in the current network namespace.
pub struct Netlink {
    socket: mnl::Socket,
    table: CString,
    seq: u32,
    timeout: Duration,
}

impl Netlink {
    /// Opens a socket for table `inet kube-nftpol`.
    pub fn open() -> Result<Netlink, Error> {
        Netlink::open_for(TABLE_NAME)
    }

    /// Opens a socket for another table of ours (the feature probe uses a scratch table).
    pub fn open_for(table: &str) -> Result<Netlink, Error> {
        let socket = mnl::Socket::new(mnl::Bus::Netfilter).map_err(Error::Socket)?;
        let table = CString::new(table).map_err(|e| Error::Socket(io::Error::other(e)))?;
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let nl = Netlink {
            socket,
            table,
            seq,
            timeout: Duration::from_secs(10),
        };
        nl.set_timeout(nl.timeout).map_err(Error::Socket)?;
        Ok(nl)
    }

    fn fd(&self) -> i32 {
        self.socket.as_raw_fd()
    }

    fn setsockopt(&self, opt: i32, value: i32) -> io::Result<()> {
        // SAFETY: `value` is a live i32 and its size is passed; fd is our open socket.
        let r = unsafe {
            libc::setsockopt(
                self.fd(),
                libc::SOL_SOCKET,
                opt,
                (&value as *const i32).cast::<c_void>(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a live timeval and its size is passed; fd is our open socket.
        let r = unsafe {
            libc::setsockopt(
                self.fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast::<c_void>(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends `ops` as one transaction and checks every answer.
    pub fn commit(&mut self, ops: &[Op]) -> Result<Sent, Error> {
        self.send_batch(ops, true)
    }

    /// Has the kernel validate `ops` as a transaction and answer every message, then abort it
    /// (a batch without its end marker, as `nft -c` sends): nothing is committed.
    pub fn check(&mut self, ops: &[Op]) -> Result<Sent, Error> {
        self.send_batch(ops, false)
    }

    fn send_batch(&mut self, ops: &[Op], commit: bool) -> Result<Sent, Error> {
        let mut batch = Batch::new(self.next_seq());
        for op in ops {
            encode(&mut batch, &self.table, op);
        }
        batch.finish(commit);
        self.seq = batch.next_seq;
        let bytes = batch.bytes();
        let sent = Sent {
            messages: batch.described.len(),
            bytes: bytes.len(),
        };
        // Room for the whole batch in one message, and for every answer (an ACK is 36 bytes,
        // an error carries the original header too).
        let room = |n: usize| i32::try_from(n.max(1 << 20)).unwrap_or(i32::MAX);
        let _ = self.setsockopt(libc::SO_SNDBUFFORCE, room(bytes.len() + 4096));
        let _ = self.setsockopt(libc::SO_RCVBUFFORCE, room(sent.messages * 256));
        let send_error = |source| Error::Send {
            messages: sent.messages,
            bytes: sent.bytes,
            source,
        };
        let n = self.socket.send(bytes).map_err(send_error)?;
        if n < bytes.len() {
            return Err(send_error(io::Error::other("short write")));
        }
        self.collect_acks(&batch)?;
        Ok(sent)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn collect_acks(&self, batch: &Batch) -> Result<(), Error> {
        let expected = batch.described.len();
        let mut answered = vec![false; expected];
        let mut missing = expected;
        let mut first_error: Option<Error> = None;
        let mut buf = AlignedBuf::new(256 * 1024);
        while missing > 0 {
            let n = match self.socket.recv_raw(buf.bytes_mut()) {
                Ok(n) => n,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Err(first_error.unwrap_or(Error::Unanswered { missing, expected }));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Receive(e)),
            };
            for msg in messages(&buf.bytes()[..n]) {
                if msg.kind != NLMSG_ERROR {
                    continue;
                }
                let Some(index) = batch.index_of(msg.seq) else {
                    continue;
                };
                if answered[index] {
                    continue;
                }
                answered[index] = true;
                missing -= 1;
                let errno = msg
                    .payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                if errno != 0 && first_error.is_none() {
                    first_error = Some(Error::Rejected {
                        operation: batch.described[index].clone(),
                        source: io::Error::from_raw_os_error(-errno),
                    });
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Lists our table, or `None` when it does not exist.
    pub fn list(&mut self) -> Result<Option<Listing>, Error> {
        // A dump filtered on a missing table is merely empty; asking for the table itself
        // tells whether it exists.
        let seq = self.next_seq();
        if self
            .dump(seq, libc::NFT_MSG_GETTABLE as u16, None, |_| Ok(()))?
            .is_none()
        {
            return Ok(None);
        }
        let seq = self.next_seq();
        let chains = self
            .dump(seq, libc::NFT_MSG_GETCHAIN as u16, None, parse_chain)?
            .unwrap_or_default();
        let seq = self.next_seq();
        let rules = self
            .dump(seq, libc::NFT_MSG_GETRULE as u16, None, parse_rule)?
            .unwrap_or_default();
        let seq = self.next_seq();
        let sets = self
            .dump(seq, libc::NFT_MSG_GETSET as u16, None, parse_set)?
            .unwrap_or_default();
        let mut listing = Listing::default();
        for (name, hook) in chains {
            listing.chains.insert(
                name,
                ListedChain {
                    hook,
                    rules: vec![],
                },
            );
        }
        for (chain, text) in rules {
            listing.chains.entry(chain).or_default().rules.push(text);
        }
        for (name, mut set) in sets {
            if set.flags & nl::NFT_SET_ANONYMOUS != 0 {
                continue;
            }
            let seq = self.next_seq();
            let elements = self.dump(
                seq,
                libc::NFT_MSG_GETSETELEM as u16,
                Some(&name),
                parse_elements,
            )?;
            set.elements = elements.unwrap_or_default().into_iter().flatten().collect();
            listing.sets.insert(name, set);
        }
        Ok(Some(listing))
    }

    /// Sends one request (a dump, or a get for the table) and parses every answer with
    /// `parse`. `None` when the table (or set) does not exist.
    fn dump<T>(
        &self,
        seq: u32,
        kind: u16,
        set: Option<&str>,
        parse: fn(*const libc::nlmsghdr) -> Result<T, String>,
    ) -> Result<Option<Vec<T>>, Error> {
        let mut req = AlignedBuf::new(MAX_MESSAGE);
        let len = {
            let buf = req.bytes_mut().as_mut_ptr().cast::<c_char>();
            let flags = match kind as i32 {
                // One object, then an acknowledgement (or ENOENT).
                libc::NFT_MSG_GETTABLE => libc::NLM_F_ACK as u16,
                _ => (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16,
            };
            // SAFETY: `buf` has MAX_MESSAGE bytes, more than a request with two names needs;
            // every object is freed by its guard after the payload is written.
            unsafe {
                let hdr = sys::nftnl_nlmsg_build_hdr(buf, kind, NFPROTO_INET, flags, seq);
                match set {
                    Some(name) => {
                        let s = SetObj::new();
                        s.str(sys::NFTNL_SET_TABLE, &self.table);
                        s.str(sys::NFTNL_SET_NAME, &cstring(name));
                        sys::nftnl_set_elems_nlmsg_build_payload(hdr, s.0.as_ptr());
                    }
                    None => match kind as i32 {
                        libc::NFT_MSG_GETSET => {
                            let s = SetObj::new();
                            s.str(sys::NFTNL_SET_TABLE, &self.table);
                            sys::nftnl_set_nlmsg_build_payload(hdr, s.0.as_ptr());
                        }
                        libc::NFT_MSG_GETTABLE => {
                            let t = TableObj::new(&self.table);
                            sys::nftnl_table_nlmsg_build_payload(hdr, t.0.as_ptr());
                        }
                        libc::NFT_MSG_GETRULE => {
                            let r = RuleObj::new(&self.table, None);
                            sys::nftnl_rule_nlmsg_build_payload(hdr, r.0.as_ptr());
                        }
                        _ => {
                            let c = ChainObj::new(&self.table, None);
                            sys::nftnl_chain_nlmsg_build_payload(hdr, c.0.as_ptr());
                        }
                    },
                }
                (*hdr).nlmsg_len as usize
            }
        };
        self.socket
            .send(&req.bytes()[..len])
            .map_err(Error::Receive)?;
        let mut out = Vec::new();
        let mut buf = AlignedBuf::new(256 * 1024);
        loop {
            let n = self
                .socket
                .recv_raw(buf.bytes_mut())
                .map_err(Error::Receive)?;
            for msg in messages(&buf.bytes()[..n]) {
                if msg.seq != seq {
                    continue;
                }
                match msg.kind {
                    NLMSG_DONE => return Ok(Some(out)),
                    NLMSG_ERROR => {
                        let errno = msg
                            .payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(0);
                        match errno {
                            0 => return Ok(Some(out)),
                            e if -e == libc::ENOENT => return Ok(None),
                            e => {
                                return Err(Error::List(
                                    io::Error::from_raw_os_error(-e).to_string(),
                                ))
                            }
                        }
                    }
                    _ => out.push(parse(msg.header).map_err(Error::List)?),
                }
            }
        }
    }
}

/// Hook number, priority and policy of a base chain.
pub type BaseHook = (u32, i32, u32);

/// Key, flags and jump target of a set or map element.
pub type ListedElement = (Vec<u8>, u32, Option<String>);

/// Our table as the kernel holds it, normalised for comparison.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub chains: BTreeMap<String, ListedChain>,
    pub sets: BTreeMap<String, ListedSet>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListedChain {
    /// Hook number, priority and policy of a base chain.
    pub hook: Option<BaseHook>,
    /// libnftnl's rendering of each rule, without handle, counter values and anonymous set
    /// numbers.
    pub rules: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListedSet {
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
    /// (key, flags, jump target) of every element.
    pub elements: BTreeSet<ListedElement>,
}

/// What [`Netlink::list`] shows for `ruleset` once committed: the expected side of a drift
/// check, built through the same libnftnl objects.
pub fn expected_listing(ruleset: &crate::ruleset::Ruleset) -> Listing {
    let table = cstring(TABLE_NAME);
    let mut listing = Listing::default();
    for (name, chain) in &ruleset.chains {
        let hook = chain.hook.map(|h| {
            let (num, prio) = nl::hook(h);
            (num, prio, NF_ACCEPT)
        });
        let rules = chain
            .rules
            .iter()
            .map(|r| rule_text(&table, name, &nl::rule(r)))
            .collect();
        listing
            .chains
            .insert(name.clone(), ListedChain { hook, rules });
    }
    for (name, set) in &ruleset.sets {
        let def = nl::set_def(set);
        let elements = nl::set_elements(set, &set.elements)
            .into_iter()
            .map(|e| (e.key, e.flags, None))
            .collect();
        listing.sets.insert(
            name.clone(),
            ListedSet {
                flags: def.flags,
                key_type: def.key_type,
                key_len: def.key_len,
                elements,
            },
        );
    }
    for (name, map) in &ruleset.maps {
        let def = nl::map_def(map);
        let pairs: Vec<_> = map.elements.iter().map(|(k, v)| (*k, v.clone())).collect();
        let elements = nl::map_elements(&pairs)
            .into_iter()
            .map(|e| {
                let target = match e.verdict {
                    Some(Verdict::Jump(c)) => Some(c),
                    _ => None,
                };
                (e.key, e.flags, target)
            })
            .collect();
        listing.sets.insert(
            name.clone(),
            ListedSet {
                flags: def.flags,
                key_type: def.key_type,
                key_len: def.key_len,
                elements,
            },
        );
    }
    listing
}

fn cstring(s: &str) -> CString {
    // Names come from the compiler (sanitised) or from us; an interior NUL cannot occur, but
    // dropping it is the safe reading if it ever did.
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

/// A byte buffer aligned for `nlmsghdr`.
struct AlignedBuf(Vec<u64>);

impl AlignedBuf {
    fn new(bytes: usize) -> Self {
        AlignedBuf(vec![0; bytes.div_ceil(8)])
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: a Vec<u64> of n elements is 8n initialised bytes; u8 has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), self.0.len() * 8) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and the borrow of `self` makes the slice unique.
        unsafe {
            std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), self.0.len() * 8)
        }
    }
    fn grow_to(&mut self, bytes: usize) {
        if self.0.len() * 8 < bytes {
            self.0.resize(bytes.div_ceil(8).max(self.0.len() * 2), 0);
        }
    }
}

/// One netlink message in a received buffer.
struct Msg<'a> {
    kind: u16,
    seq: u32,
    payload: &'a [u8],
    header: *const libc::nlmsghdr,
}

/// Splits a received buffer into messages (header fields read as bytes; the header pointer
/// is only handed to libnftnl's parsers).
fn messages(buf: &[u8]) -> Vec<Msg<'_>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let word = |o: usize| {
            u32::from_ne_bytes([
                buf[at + o],
                buf[at + o + 1],
                buf[at + o + 2],
                buf[at + o + 3],
            ])
        };
        let len = word(0) as usize;
        if len < 16 || at + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        out.push(Msg {
            kind,
            seq: word(8),
            payload: &buf[at + 16..at + len],
            header: buf[at..].as_ptr().cast(),
        });
        at += (len + 3) & !3;
    }
    out
}

/// A batch under construction: messages back to back in one aligned buffer, with a
/// description of each for error messages.
struct Batch {
    buf: AlignedBuf,
    len: usize,
    first_seq: u32,
    next_seq: u32,
    described: Vec<String>,
    /// Ids for anonymous sets, unique within the batch.
    next_set_id: u32,
}

impl Batch {
    fn new(seq: u32) -> Batch {
        let mut b = Batch {
            buf: AlignedBuf::new(4 * MAX_MESSAGE),
            len: 0,
            first_seq: seq,
            next_seq: seq,
            described: vec![],
            next_set_id: 1,
        };
        // SAFETY: the buffer has room for a batch header at `len`.
        b.raw(|buf, seq| unsafe { sys::nftnl_batch_begin(buf, seq) });
        b.first_seq = b.next_seq;
        b
    }

    /// Writes one message with `write(buffer, seq)` and returns nothing; `write` must return
    /// the header it wrote.
    fn raw(&mut self, write: impl FnOnce(*mut c_char, u32) -> *mut libc::nlmsghdr) {
        self.buf.grow_to(self.len + MAX_MESSAGE);
        let seq = self.next_seq;
        let at = self.buf.bytes_mut()[self.len..]
            .as_mut_ptr()
            .cast::<c_char>();
        let hdr = write(at, seq);
        // SAFETY: `write` returned the header it built inside our buffer.
        let len = unsafe { (*hdr).nlmsg_len } as usize;
        self.len += (len + 3) & !3;
        self.next_seq = self.next_seq.wrapping_add(1);
    }

    /// Writes one acknowledged message built by the nftnl crate (its messages all carry
    /// `NLM_F_ACK`).
    fn nftnl_message(&mut self, what: String, msg: &impl nftnl::NlMsg, kind: nftnl::MsgType) {
        debug_assert!(MAX_MESSAGE as u32 >= nftnl::nft_nlmsg_maxsize());
        self.message(what, |buf, seq| {
            // SAFETY: `buf` has MAX_MESSAGE bytes of room, more than nft_nlmsg_maxsize(), as
            // NlMsg::write requires; the message header is written at `buf`.
            unsafe { msg.write(buf.cast(), seq, kind) };
            buf.cast()
        });
    }

    /// Writes one acknowledged message.
    fn message(
        &mut self,
        what: String,
        write: impl FnOnce(*mut c_char, u32) -> *mut libc::nlmsghdr,
    ) {
        self.raw(write);
        self.described.push(what);
    }

    fn index_of(&self, seq: u32) -> Option<usize> {
        let i = seq.wrapping_sub(self.first_seq) as usize;
        (i < self.described.len()).then_some(i)
    }

    /// Ends the batch; without the end marker the kernel validates and then aborts it.
    fn finish(&mut self, commit: bool) {
        if commit {
            // SAFETY: the buffer has room for a batch trailer at `len`.
            self.raw(|buf, seq| unsafe { sys::nftnl_batch_end(buf, seq) });
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf.bytes()[..self.len]
    }
}

fn header(buf: *mut c_char, kind: i32, flags: i32, seq: u32) -> *mut libc::nlmsghdr {
    // SAFETY: callers pass a buffer with MAX_MESSAGE bytes of room (Batch::raw).
    unsafe {
        sys::nftnl_nlmsg_build_hdr(
            buf,
            kind as u16,
            NFPROTO_INET,
            (flags | libc::NLM_F_ACK) as u16,
            seq,
        )
    }
}

/// An owned libnftnl object: allocated by `$alloc` (aborting on OOM, as libstd does), freed
/// once by `$free` when dropped.
macro_rules! nftnl_object {
    ($name:ident, $ty:ty, $alloc:path, $free:path) => {
        struct $name(NonNull<$ty>);
        impl $name {
            fn alloc() -> Self {
                // SAFETY: the allocator returns a fresh object or NULL.
                $name(NonNull::new(unsafe { $alloc() }).unwrap_or_else(|| std::process::abort()))
            }
        }
        impl Drop for $name {
            fn drop(&mut self) {
                // SAFETY: we own the object and free it exactly once.
                unsafe { $free(self.0.as_ptr()) }
            }
        }
    };
}

nftnl_object!(
    TableObj,
    sys::nftnl_table,
    sys::nftnl_table_alloc,
    sys::nftnl_table_free
);
nftnl_object!(
    ChainObj,
    sys::nftnl_chain,
    sys::nftnl_chain_alloc,
    sys::nftnl_chain_free
);
nftnl_object!(
    RuleObj,
    sys::nftnl_rule,
    sys::nftnl_rule_alloc,
    sys::nftnl_rule_free
);
nftnl_object!(
    SetObj,
    sys::nftnl_set,
    sys::nftnl_set_alloc,
    sys::nftnl_set_free
);

impl TableObj {
    fn new(name: &CStr) -> Self {
        let table = TableObj::alloc();
        // SAFETY: valid table; libnftnl copies the string.
        unsafe {
            let t = table.0.as_ptr();
            sys::nftnl_table_set_str(t, sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
            sys::nftnl_table_set_u32(t, sys::NFTNL_TABLE_FAMILY as u16, NFPROTO_INET as u32);
        }
        table
    }
}

impl ChainObj {
    fn new(table: &CStr, name: Option<&CStr>) -> Self {
        let chain = ChainObj::alloc();
        let c = chain.0.as_ptr();
        // SAFETY: `c` is valid; strings are copied.
        unsafe {
            sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_TABLE as u16, table.as_ptr());
            sys::nftnl_chain_set_u32(c, sys::NFTNL_CHAIN_FAMILY as u16, NFPROTO_INET as u32);
            if let Some(n) = name {
                sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_NAME as u16, n.as_ptr());
            }
        }
        chain
    }
}

impl RuleObj {
    fn new(table: &CStr, chain: Option<&CStr>) -> Self {
        let rule = RuleObj::alloc();
        let r = rule.0.as_ptr();
        // SAFETY: `r` is valid; strings are copied.
        unsafe {
            sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_TABLE as u16, table.as_ptr());
            sys::nftnl_rule_set_u32(r, sys::NFTNL_RULE_FAMILY as u16, NFPROTO_INET as u32);
            if let Some(c) = chain {
                sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_CHAIN as u16, c.as_ptr());
            }
        }
        rule
    }

    /// Adds the expressions and user data of `def`; anonymous sets are referred to by
    /// `set_ids[i]`.
    fn fill(&self, def: &RuleDef, set_ids: &[u32]) {
        for e in &def.exprs {
            let expr = expr(e, set_ids);
            // SAFETY: the rule takes ownership of the expression.
            unsafe { sys::nftnl_rule_add_expr(self.0.as_ptr(), expr.as_ptr()) };
        }
        if let Some(u) = &def.userdata {
            // SAFETY: libnftnl copies `u.len()` bytes from a live slice.
            unsafe {
                sys::nftnl_rule_set_data(
                    self.0.as_ptr(),
                    sys::NFTNL_RULE_USERDATA as u16,
                    u.as_ptr().cast(),
                    u.len() as u32,
                );
            }
        }
    }
}

impl SetObj {
    fn new() -> Self {
        SetObj::alloc()
    }
    fn str(&self, attr: u32, value: &CStr) {
        // SAFETY: valid set, string copied.
        unsafe { sys::nftnl_set_set_str(self.0.as_ptr(), attr as u16, value.as_ptr()) };
    }
    fn u32(&self, attr: u32, value: u32) {
        // SAFETY: valid set.
        unsafe { sys::nftnl_set_set_u32(self.0.as_ptr(), attr as u16, value) };
    }
    fn data(&self, attr: u32, value: &[u8]) {
        // SAFETY: valid set; libnftnl copies `value.len()` bytes from a live slice.
        unsafe {
            sys::nftnl_set_set_data(
                self.0.as_ptr(),
                attr as u16,
                value.as_ptr().cast(),
                value.len() as u32,
            )
        };
    }
    /// A set named `name` (or anonymous, found by `id`) of our table.
    fn named(table: &CStr, name: &CStr, id: Option<u32>) -> Self {
        let s = SetObj::new();
        s.str(sys::NFTNL_SET_TABLE, table);
        s.str(sys::NFTNL_SET_NAME, name);
        s.u32(sys::NFTNL_SET_FAMILY, NFPROTO_INET as u32);
        if let Some(id) = id {
            s.u32(sys::NFTNL_SET_ID, id);
        }
        s
    }
    fn define(&self, def: &SetDef) {
        self.u32(sys::NFTNL_SET_FLAGS, def.flags);
        self.u32(sys::NFTNL_SET_KEY_TYPE, def.key_type);
        self.u32(sys::NFTNL_SET_KEY_LEN, def.key_len);
        if let Some((t, l)) = def.data {
            self.u32(sys::NFTNL_SET_DATA_TYPE, t);
            self.u32(sys::NFTNL_SET_DATA_LEN, l);
        }
        if let Some(size) = def.size {
            self.u32(sys::NFTNL_SET_DESC_SIZE, size);
        }
        if !def.concat_fields.is_empty() {
            // libnftnl takes the field lengths as bytes and emits NFTA_SET_DESC_CONCAT.
            self.data(sys::NFTNL_SET_DESC_CONCAT, &def.concat_fields);
        }
        if !def.userdata.is_empty() {
            self.data(sys::NFTNL_SET_USERDATA, &def.userdata);
        }
    }
    fn add_elements(&self, elements: &[ElemDef]) {
        for e in elements {
            // SAFETY: as for TableObj.
            let el = NonNull::new(unsafe { sys::nftnl_set_elem_alloc() })
                .unwrap_or_else(|| std::process::abort());
            // SAFETY: `el` is valid; data is copied from live slices; the set takes ownership
            // of the element.
            unsafe {
                let p = el.as_ptr();
                sys::nftnl_set_elem_set(
                    p,
                    sys::NFTNL_SET_ELEM_KEY as u16,
                    e.key.as_ptr().cast(),
                    e.key.len() as u32,
                );
                if let Some(end) = &e.key_end {
                    sys::nftnl_set_elem_set(
                        p,
                        sys::NFTNL_SET_ELEM_KEY_END as u16,
                        end.as_ptr().cast(),
                        end.len() as u32,
                    );
                }
                if e.flags != 0 {
                    sys::nftnl_set_elem_set_u32(p, sys::NFTNL_SET_ELEM_FLAGS as u16, e.flags);
                }
                if let Some(Verdict::Jump(chain)) = &e.verdict {
                    let chain = cstring(chain);
                    sys::nftnl_set_elem_set_u32(
                        p,
                        sys::NFTNL_SET_ELEM_VERDICT as u16,
                        NFT_JUMP as u32,
                    );
                    sys::nftnl_set_elem_set_str(
                        p,
                        sys::NFTNL_SET_ELEM_CHAIN as u16,
                        chain.as_ptr(),
                    );
                }
                if let Some(u) = &e.userdata {
                    sys::nftnl_set_elem_set(
                        p,
                        sys::NFTNL_SET_ELEM_USERDATA as u16,
                        u.as_ptr().cast(),
                        u.len() as u32,
                    );
                }
                sys::nftnl_set_elem_add(self.0.as_ptr(), p);
            }
        }
    }
}

fn expr(e: &Expr, set_ids: &[u32]) -> NonNull<sys::nftnl_expr> {
    let name: &CStr = match e {
        Expr::Meta { .. } => c"meta",
        Expr::Cmp { .. } => c"cmp",
        Expr::Payload { .. } => c"payload",
        Expr::Lookup { .. } => c"lookup",
        Expr::Ct { .. } => c"ct",
        Expr::Bitwise { .. } => c"bitwise",
        Expr::Byteorder { .. } => c"byteorder",
        Expr::Counter => c"counter",
        Expr::Immediate { .. } => c"immediate",
    };
    // SAFETY: `name` is a known expression type; NULL only on OOM.
    let x = NonNull::new(unsafe { sys::nftnl_expr_alloc(name.as_ptr()) })
        .unwrap_or_else(|| std::process::abort());
    let p = x.as_ptr();
    let u32_ = |attr: u32, v: u32| {
        // SAFETY: valid expression of the type the attribute belongs to.
        unsafe { sys::nftnl_expr_set_u32(p, attr as u16, v) }
    };
    let data = |attr: u32, v: &[u8]| {
        // SAFETY: valid expression; libnftnl copies the bytes.
        unsafe { sys::nftnl_expr_set(p, attr as u16, v.as_ptr().cast(), v.len() as u32) };
    };
    let str_ = |attr: u32, v: &CStr| {
        // SAFETY: valid expression; libnftnl copies the string.
        unsafe { sys::nftnl_expr_set_str(p, attr as u16, v.as_ptr()) };
    };
    match e {
        Expr::Meta { key, dreg } => {
            u32_(sys::NFTNL_EXPR_META_KEY, *key);
            u32_(sys::NFTNL_EXPR_META_DREG, *dreg);
        }
        Expr::Cmp { op, sreg, data: d } => {
            u32_(sys::NFTNL_EXPR_CMP_SREG, *sreg);
            u32_(sys::NFTNL_EXPR_CMP_OP, *op);
            data(sys::NFTNL_EXPR_CMP_DATA, d);
        }
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => {
            u32_(sys::NFTNL_EXPR_PAYLOAD_DREG, *dreg);
            u32_(sys::NFTNL_EXPR_PAYLOAD_BASE, *base);
            u32_(sys::NFTNL_EXPR_PAYLOAD_OFFSET, *offset);
            u32_(sys::NFTNL_EXPR_PAYLOAD_LEN, *len);
        }
        Expr::Lookup {
            sreg,
            set,
            dreg,
            invert,
        } => {
            u32_(sys::NFTNL_EXPR_LOOKUP_SREG, *sreg);
            match set {
                SetRef::Named(n) => str_(sys::NFTNL_EXPR_LOOKUP_SET, &cstring(n)),
                SetRef::Anonymous(i) => {
                    str_(sys::NFTNL_EXPR_LOOKUP_SET, c"__set%d");
                    u32_(
                        sys::NFTNL_EXPR_LOOKUP_SET_ID,
                        set_ids.get(*i).copied().unwrap_or(0),
                    );
                }
            }
            if let Some(d) = dreg {
                u32_(sys::NFTNL_EXPR_LOOKUP_DREG, *d);
            }
            if *invert {
                u32_(sys::NFTNL_EXPR_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
            }
        }
        Expr::Ct { key, dreg } => {
            u32_(sys::NFTNL_EXPR_CT_KEY, *key);
            u32_(sys::NFTNL_EXPR_CT_DREG, *dreg);
        }
        Expr::Bitwise {
            sreg,
            dreg,
            len,
            mask,
            xor,
        } => {
            u32_(sys::NFTNL_EXPR_BITWISE_SREG, *sreg);
            u32_(sys::NFTNL_EXPR_BITWISE_DREG, *dreg);
            u32_(sys::NFTNL_EXPR_BITWISE_LEN, *len);
            data(sys::NFTNL_EXPR_BITWISE_MASK, mask);
            data(sys::NFTNL_EXPR_BITWISE_XOR, xor);
        }
        Expr::Byteorder {
            sreg,
            dreg,
            op,
            len,
            size,
        } => {
            u32_(sys::NFTNL_EXPR_BYTEORDER_SREG, *sreg);
            u32_(sys::NFTNL_EXPR_BYTEORDER_DREG, *dreg);
            u32_(sys::NFTNL_EXPR_BYTEORDER_OP, *op);
            u32_(sys::NFTNL_EXPR_BYTEORDER_LEN, *len);
            u32_(sys::NFTNL_EXPR_BYTEORDER_SIZE, *size);
        }
        Expr::Counter => {}
        Expr::Immediate { verdict } => {
            u32_(sys::NFTNL_EXPR_IMM_DREG, nl::NFT_REG_VERDICT);
            let code = match verdict {
                Verdict::Accept => NF_ACCEPT,
                Verdict::Drop => NF_DROP,
                Verdict::Return => NFT_RETURN as u32,
                Verdict::Jump(_) => NFT_JUMP as u32,
            };
            u32_(sys::NFTNL_EXPR_IMM_VERDICT, code);
            if let Verdict::Jump(chain) = verdict {
                str_(sys::NFTNL_EXPR_IMM_CHAIN, &cstring(chain));
            }
        }
    }
    x
}

/// Writes `set`'s elements as NEWSETELEM (or DELSETELEM) messages, as many as they need.
fn element_messages(batch: &mut Batch, set: &SetObj, kind: i32, flags: i32, what: &str) {
    // SAFETY: `set` is valid; the iterator is destroyed below, before `set` can be freed.
    let iter = unsafe { sys::nftnl_set_elems_iter_create(set.0.as_ptr()) };
    if iter.is_null() {
        std::process::abort();
    }
    // SAFETY: `iter` is valid until destroyed.
    if unsafe { sys::nftnl_set_elems_iter_cur(iter) }.is_null() {
        // SAFETY: created above, destroyed once.
        unsafe { sys::nftnl_set_elems_iter_destroy(iter) };
        return;
    }
    let mut part = 0;
    loop {
        part += 1;
        let mut more = 0;
        batch.message(format!("{what} (message {part})"), |buf, seq| {
            let hdr = header(buf, kind, flags, seq);
            // SAFETY: `hdr` is in a buffer with MAX_MESSAGE bytes of room; libnftnl stops an
            // element list at 8 KiB and reports the rest with a positive return.
            more = unsafe { sys::nftnl_set_elems_nlmsg_build_payload_iter(hdr, iter) };
            hdr
        });
        if more <= 0 {
            break;
        }
    }
    // SAFETY: created above, destroyed once.
    unsafe { sys::nftnl_set_elems_iter_destroy(iter) };
}

fn encode(batch: &mut Batch, table: &CStr, op: &Op) {
    let what = op.describe();
    match op {
        Op::EnsureTable | Op::DeleteTable => {
            let t = nftnl::Table::new(table, nftnl::ProtoFamily::Inet);
            let kind = match op {
                Op::EnsureTable => nftnl::MsgType::Add,
                _ => nftnl::MsgType::Del,
            };
            batch.nftnl_message(what, &t, kind);
        }
        Op::AddChain { name, chain } => {
            let t = nftnl::Table::new(table, nftnl::ProtoFamily::Inet);
            let mut c = nftnl::Chain::new(cstring(name), &t);
            if let Some(hook) = chain.hook {
                let (_, prio) = nl::hook(hook);
                let hook = match hook {
                    crate::ruleset::Hook::Forward => nftnl::Hook::Forward,
                    crate::ruleset::Hook::Input => nftnl::Hook::In,
                };
                c.set_hook(hook, prio);
                c.set_type(nftnl::ChainType::Filter);
                c.set_policy(nftnl::Policy::Accept);
            }
            batch.nftnl_message(what, &c, nftnl::MsgType::Add);
        }
        Op::DeleteChain { name } => {
            let t = nftnl::Table::new(table, nftnl::ProtoFamily::Inet);
            let c = nftnl::Chain::new(cstring(name), &t);
            batch.nftnl_message(what, &c, nftnl::MsgType::Del);
        }
        Op::FlushChain { name } => {
            // A rule deletion without a handle deletes every rule of the chain.
            let t = nftnl::Table::new(table, nftnl::ProtoFamily::Inet);
            let c = nftnl::Chain::new(cstring(name), &t);
            batch.nftnl_message(what, &nftnl::Rule::new(&c), nftnl::MsgType::Del);
        }
        Op::AddRule { chain, rule } => {
            let def = nl::rule(rule);
            let ids: Vec<u32> = def
                .anonymous_sets
                .iter()
                .map(|s| add_anonymous_set(batch, table, s, &what))
                .collect();
            let r = RuleObj::new(table, Some(&cstring(chain)));
            r.fill(&def, &ids);
            batch.message(what, |buf, seq| {
                let hdr = header(
                    buf,
                    libc::NFT_MSG_NEWRULE,
                    libc::NLM_F_CREATE | libc::NLM_F_APPEND,
                    seq,
                );
                // SAFETY: as above.
                unsafe { sys::nftnl_rule_nlmsg_build_payload(hdr, r.0.as_ptr()) };
                hdr
            });
        }
        Op::AddSet { name, set } => add_set(batch, table, name, &nl::set_def(set), what),
        Op::AddMap { name, family } => {
            let map = crate::ruleset::Map {
                family: *family,
                elements: BTreeMap::new(),
            };
            add_set(batch, table, name, &nl::map_def(&map), what);
        }
        Op::DeleteSet { name } | Op::DeleteMap { name } => {
            let s = SetObj::named(table, &cstring(name), None);
            batch.message(what, |buf, seq| {
                let hdr = header(buf, libc::NFT_MSG_DELSET, 0, seq);
                // SAFETY: as above.
                unsafe { sys::nftnl_set_nlmsg_build_payload(hdr, s.0.as_ptr()) };
                hdr
            });
        }
        Op::AddElements { set, elements } => {
            // The set's definition decides the encoding (interval sets arrive whole).
            let probe = crate::ruleset::Set {
                key: key_of(elements),
                interval: elements
                    .iter()
                    .any(|e| matches!(e, crate::ruleset::Element::Range(..))),
                comment: String::new(),
                elements: Default::default(),
            };
            let s = SetObj::named(table, &cstring(set), None);
            s.add_elements(&nl::set_elements(&probe, elements));
            element_messages(
                batch,
                &s,
                libc::NFT_MSG_NEWSETELEM,
                libc::NLM_F_CREATE | libc::NLM_F_EXCL,
                &what,
            );
        }
        Op::DeleteElements { set, elements } => {
            let probe = crate::ruleset::Set {
                key: key_of(elements),
                interval: false,
                comment: String::new(),
                elements: Default::default(),
            };
            let s = SetObj::named(table, &cstring(set), None);
            s.add_elements(&nl::set_elements(&probe, elements));
            element_messages(batch, &s, libc::NFT_MSG_DELSETELEM, 0, &what);
        }
        Op::AddMapElements { map, elements } => {
            let s = SetObj::named(table, &cstring(map), None);
            s.add_elements(&nl::map_elements(elements));
            element_messages(
                batch,
                &s,
                libc::NFT_MSG_NEWSETELEM,
                libc::NLM_F_CREATE | libc::NLM_F_EXCL,
                &what,
            );
        }
        Op::DeleteMapElements { map, keys } => {
            let s = SetObj::named(table, &cstring(map), None);
            s.add_elements(&nl::map_keys(keys));
            element_messages(batch, &s, libc::NFT_MSG_DELSETELEM, 0, &what);
        }
    }
}

/// The key kind of a list of elements (only the encoding of each element matters here).
fn key_of(elements: &[crate::ruleset::Element]) -> crate::ruleset::SetKey {
    use crate::ruleset::{Element, SetKey};
    match elements.first() {
        Some(Element::AddrProtoPort(a, ..)) => SetKey::AddrProtoPort(Family::of(a)),
        Some(Element::AddrPair(a, _)) => SetKey::AddrPair(Family::of(a)),
        Some(Element::Addr(a) | Element::Range(a, _)) => SetKey::Addr(Family::of(a)),
        None => SetKey::Addr(Family::V4),
    }
}

fn add_set(batch: &mut Batch, table: &CStr, name: &str, def: &SetDef, what: String) {
    // The kernel requires an id on every new set (it is how later messages of the batch
    // can find a set that does not exist yet).
    let id = batch.next_set_id;
    batch.next_set_id += 1;
    let s = SetObj::named(table, &cstring(name), Some(id));
    s.define(def);
    batch.message(what, |buf, seq| {
        let hdr = header(
            buf,
            libc::NFT_MSG_NEWSET,
            libc::NLM_F_CREATE | libc::NLM_F_EXCL,
            seq,
        );
        // SAFETY: as above.
        unsafe { sys::nftnl_set_nlmsg_build_payload(hdr, s.0.as_ptr()) };
        hdr
    });
}

/// Creates an anonymous set (and its elements) for a rule; returns its batch id.
fn add_anonymous_set(batch: &mut Batch, table: &CStr, set: &AnonymousSet, rule: &str) -> u32 {
    let id = batch.next_set_id;
    batch.next_set_id += 1;
    let s = SetObj::named(table, c"__set%d", Some(id));
    s.define(&set.def);
    let what = format!("{rule}: anonymous set");
    batch.message(what.clone(), |buf, seq| {
        let hdr = header(buf, libc::NFT_MSG_NEWSET, libc::NLM_F_CREATE, seq);
        // SAFETY: as above.
        unsafe { sys::nftnl_set_nlmsg_build_payload(hdr, s.0.as_ptr()) };
        hdr
    });
    s.add_elements(&set.elements);
    element_messages(
        batch,
        &s,
        libc::NFT_MSG_NEWSETELEM,
        libc::NLM_F_CREATE | libc::NLM_F_EXCL,
        &format!("{what} elements"),
    );
    id
}

/// libnftnl's text of a rule, normalised: no header line (it carries the handle), counter
/// values zeroed, anonymous set names without their number, and no lookup flags (the kernel
/// reports `0x0` where a freshly built expression has none).
fn normalise_rule_text(text: &str) -> String {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let lookup = line.contains("[ lookup ");
        let mut words: Vec<String> = Vec::new();
        let mut it = line.split_whitespace().peekable();
        while let Some(w) = it.next() {
            if (w == "pkts" || w == "bytes") && it.peek().is_some() {
                it.next();
                words.push(format!("{w} 0"));
            } else if w.starts_with("__set") {
                words.push("__set".to_string());
            } else if lookup && w == "0x0" {
                continue;
            } else {
                words.push(w.to_string());
            }
        }
        out.push(words.join(" "));
    }
    out.join("\n")
}

fn rule_text(table: &CStr, chain: &str, def: &RuleDef) -> String {
    let r = RuleObj::new(table, Some(&cstring(chain)));
    let ids: Vec<u32> = (1..=def.anonymous_sets.len() as u32).collect();
    r.fill(def, &ids);
    snprintf_rule(r.0.as_ptr())
}

fn snprintf_rule(r: *mut sys::nftnl_rule) -> String {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: `buf` is writable for its length, which is passed; `r` is a valid rule.
    let n = unsafe {
        sys::nftnl_rule_snprintf(
            buf.as_mut_ptr().cast(),
            buf.len(),
            r,
            sys::NFTNL_OUTPUT_DEFAULT,
            0,
        )
    };
    let n = (n.max(0) as usize).min(buf.len().saturating_sub(1));
    normalise_rule_text(&String::from_utf8_lossy(&buf[..n]))
}

fn parse_chain(hdr: *const libc::nlmsghdr) -> Result<(String, Option<BaseHook>), String> {
    let c = ChainObj::alloc();
    // SAFETY: `hdr` points at a complete message inside the receive buffer; `c` is valid.
    unsafe {
        if sys::nftnl_chain_nlmsg_parse(hdr, c.0.as_ptr()) < 0 {
            return Err("unparsable chain".into());
        }
        let name = CStr::from_ptr(sys::nftnl_chain_get_str(
            c.0.as_ptr(),
            sys::NFTNL_CHAIN_NAME as u16,
        ))
        .to_string_lossy()
        .into_owned();
        let hook = if sys::nftnl_chain_is_set(c.0.as_ptr(), sys::NFTNL_CHAIN_HOOKNUM as u16) {
            Some((
                sys::nftnl_chain_get_u32(c.0.as_ptr(), sys::NFTNL_CHAIN_HOOKNUM as u16),
                sys::nftnl_chain_get_s32(c.0.as_ptr(), sys::NFTNL_CHAIN_PRIO as u16),
                sys::nftnl_chain_get_u32(c.0.as_ptr(), sys::NFTNL_CHAIN_POLICY as u16),
            ))
        } else {
            None
        };
        Ok((name, hook))
    }
}

fn parse_rule(hdr: *const libc::nlmsghdr) -> Result<(String, String), String> {
    let r = RuleObj::alloc();
    // SAFETY: as for parse_chain.
    unsafe {
        if sys::nftnl_rule_nlmsg_parse(hdr, r.0.as_ptr()) < 0 {
            return Err("unparsable rule".into());
        }
        let chain = CStr::from_ptr(sys::nftnl_rule_get_str(
            r.0.as_ptr(),
            sys::NFTNL_RULE_CHAIN as u16,
        ))
        .to_string_lossy()
        .into_owned();
        Ok((chain, snprintf_rule(r.0.as_ptr())))
    }
}

fn parse_set(hdr: *const libc::nlmsghdr) -> Result<(String, ListedSet), String> {
    let s = SetObj::new();
    // SAFETY: as for parse_chain.
    unsafe {
        if sys::nftnl_set_nlmsg_parse(hdr, s.0.as_ptr()) < 0 {
            return Err("unparsable set".into());
        }
        let p = s.0.as_ptr();
        let name = CStr::from_ptr(sys::nftnl_set_get_str(p, sys::NFTNL_SET_NAME as u16))
            .to_string_lossy()
            .into_owned();
        let get = |a: u32| sys::nftnl_set_get_u32(p, a as u16);
        Ok((
            name,
            ListedSet {
                flags: get(sys::NFTNL_SET_FLAGS),
                key_type: get(sys::NFTNL_SET_KEY_TYPE),
                key_len: get(sys::NFTNL_SET_KEY_LEN),
                elements: BTreeSet::new(),
            },
        ))
    }
}

fn parse_elements(hdr: *const libc::nlmsghdr) -> Result<Vec<ListedElement>, String> {
    let s = SetObj::new();
    let mut out = Vec::new();
    // SAFETY: as for parse_chain; element pointers are only used while `s` owns them.
    unsafe {
        if sys::nftnl_set_elems_nlmsg_parse(hdr, s.0.as_ptr()) < 0 {
            return Err("unparsable set elements".into());
        }
        let iter = sys::nftnl_set_elems_iter_create(s.0.as_ptr());
        if iter.is_null() {
            std::process::abort();
        }
        let mut e = sys::nftnl_set_elems_iter_next(iter);
        while !e.is_null() {
            let mut len: u32 = 0;
            let key = sys::nftnl_set_elem_get(e, sys::NFTNL_SET_ELEM_KEY as u16, &mut len);
            let key = if key.is_null() {
                vec![]
            } else {
                std::slice::from_raw_parts(key.cast::<u8>(), len as usize).to_vec()
            };
            let flags = if sys::nftnl_set_elem_is_set(e, sys::NFTNL_SET_ELEM_FLAGS as u16) {
                sys::nftnl_set_elem_get_u32(e, sys::NFTNL_SET_ELEM_FLAGS as u16)
            } else {
                0
            };
            let chain = if sys::nftnl_set_elem_is_set(e, sys::NFTNL_SET_ELEM_CHAIN as u16) {
                Some(
                    CStr::from_ptr(sys::nftnl_set_elem_get_str(
                        e,
                        sys::NFTNL_SET_ELEM_CHAIN as u16,
                    ))
                    .to_string_lossy()
                    .into_owned(),
                )
            } else {
                None
            };
            out.push((key, flags, chain));
            e = sys::nftnl_set_elems_iter_next(iter);
        }
        sys::nftnl_set_elems_iter_destroy(iter);
    }
    Ok(out)
}
