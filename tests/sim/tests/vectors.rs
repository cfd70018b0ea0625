// SPDX-License-Identifier: MIT
//! The protocol's golden vectors, `docs/protocol-vectors.txt`: encoded
//! requests, responses, directory pages and xenstore values, each with the
//! verdict docs/protocol.md gives it, for any implementation to test
//! itself against.
//!
//! The cases are written here with their expected verdicts by hand, from
//! the protocol text (the byte offsets too, not the reference code's
//! private constants). The test checks that the file is exactly what these
//! cases produce and that the reference code reaches every verdict from
//! the file's bytes alone. `HDM_BLESS_VECTORS=1` rewrites the file after a
//! deliberate change of the cases.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;

use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::limits::PGDIR_MAX_BUFFER_BYTES;
use hyper_dmabuf_common::pgdir::{self, Layout, ROOT_ENTRIES};
use hyper_dmabuf_common::wire::{
    Export, ExportFlags, FenceId, FenceResult, InlineRefs, MapEpoch, Message, PageRefs, PrivData,
    Request, Response, SLOT_SIZE, VERSION_1, VERSION_2, VERSION_3,
};
use hyper_dmabuf_common::xen::{GrantRef, Status};
use hyper_dmabuf_xenbus_proto::parse;

const PAGE: usize = 4096;
const GIB: u64 = 1 << 30;

// Offsets of docs/protocol.md, section 11.
const OP: usize = 4;
const SIZE: usize = 32;
const NR_PAGES: usize = 40;
const DIR_GREF: usize = 44;
const FLAGS: usize = 48;
const PRIV_LEN: usize = 52;
const PRIV_END: usize = 248;
const EPOCH: usize = 32;
const FENCE: usize = 32;
const RESULT: usize = 40;
const EXPORT_FENCE: usize = 248;
const RSP_STATUS: usize = 8;
const RSP_EPOCH: usize = 12;
// Section 12.
const R_MAGIC: usize = 0;
const R_LEVELS: usize = 6;
const R_SIZE: usize = 8;
const ROOT_HEADER: usize = 32;

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol-vectors.txt")
}

fn id(number: u64) -> HyperDmabufId {
    let mut key = [0u8; 16];
    for (i, k) in key.iter_mut().enumerate() {
        *k = 0xa0 + i as u8;
    }
    HyperDmabufId::new(number, key).unwrap()
}

fn export(size: u64, gref: u32, flags: ExportFlags, priv_data: &[u8]) -> [u8; SLOT_SIZE] {
    Request {
        req_id: 7,
        message: Message::Export(Export {
            hid: id(1),
            size,
            pages: PageRefs::Directory(GrantRef::new(gref).unwrap()),
            flags,
            priv_data: PrivData::new(priv_data).unwrap(),
            fence: None,
        }),
    }
    .encode()
}

fn request(message: Message) -> [u8; SLOT_SIZE] {
    Request { req_id: 8, message }.encode()
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn grefs(first: u32, n: usize) -> Vec<GrantRef> {
    (0..n)
        .map(|i| GrantRef::new(first + i as u32).unwrap())
        .collect()
}

fn root(size: u64, refs: &[GrantRef]) -> Vec<u8> {
    let layout = Layout::new(size, GIB).unwrap();
    let mut page = [0u8; PAGE];
    pgdir::encode_root(&layout, refs, &mut page).unwrap();
    page.to_vec()
}

fn leaf(size: u64, index: u32, refs: &[GrantRef]) -> Vec<u8> {
    let layout = Layout::new(size, GIB).unwrap();
    let mut page = [0u8; PAGE];
    pgdir::encode_leaf(&layout, index, refs, &mut page).unwrap();
    page.to_vec()
}

/// Every vector, one line each, as the file holds them.
fn cases() -> Vec<String> {
    let mut out = Vec::new();
    let mut inline = Vec::new();
    let mut req = |name: &str, limit: u64, slot: [u8; SLOT_SIZE], verdict: &str| {
        out.push(format!("request {name} {limit} {} {verdict}", hex(&slot)));
    };
    let mut req2 = |name: &str, slot: [u8; SLOT_SIZE], verdict: &str| {
        inline.push(format!("request2 {name} {GIB} {} {verdict}", hex(&slot)));
    };
    let mut fenced = Vec::new();
    let mut req3 = |name: &str, slot: [u8; SLOT_SIZE], verdict: &str| {
        fenced.push(format!("request3 {name} {GIB} {} {verdict}", hex(&slot)));
    };
    // Version 3: a fenced EXPORT carries its fence in octets 248..256, and
    // its inline references end before them.
    let fence = FenceId::new(0x1122_3344_5566_7788).unwrap();
    let fenced_export = |pages: PageRefs, priv_data: &[u8]| {
        Request {
            req_id: 7,
            message: Message::Export(Export {
                hid: id(1),
                size: 3 * 4096,
                pages,
                flags: ExportFlags::default(),
                priv_data: PrivData::new(priv_data).unwrap(),
                fence: Some(fence),
            }),
        }
        .encode()
    };
    let with_dir = fenced_export(PageRefs::Directory(GrantRef::new(100).unwrap()), b"frame 1");
    req3("export-fenced", with_dir, "OK");
    let mut s = with_dir;
    put64(&mut s, EXPORT_FENCE, 0);
    req3("export-fenced-zero", s, "EINVAL");
    let refs = grefs(100, 3);
    let inline3 = fenced_export(
        PageRefs::Inline(InlineRefs::new(&refs).unwrap()),
        b"frame 1",
    );
    req3("export-fenced-inline", inline3, "OK");
    // 188 octets of private data leave room for the fence and one
    // reference (at 244); the second would overlap the fence.
    let mut s = fenced_export(
        PageRefs::Inline(InlineRefs::new(&refs[..1]).unwrap()),
        &[b'p'; 188],
    );
    put64(&mut s, 32, 2 * 4096);
    put32(&mut s, 40, 2);
    req3("export-fenced-inline-no-room", s, "EINVAL");
    let update = Request {
        req_id: 8,
        message: Message::Update {
            hid: id(2),
            priv_data: PrivData::new(b"frame 2").unwrap(),
            fence: Some(fence),
        },
    }
    .encode();
    req3("update-fenced", update, "OK");
    let signal = Request {
        req_id: 8,
        message: Message::Signal {
            hid: id(2),
            fence,
            result: FenceResult::Failed,
        },
    }
    .encode();
    req3("signal", signal, "OK");
    let mut s = signal;
    put64(&mut s, FENCE, 0);
    req3("signal-fence-zero", s, "EINVAL");
    let mut s = signal;
    put32(&mut s, RESULT, 2);
    req3("signal-result-undefined", s, "EINVAL");
    let mut s = signal;
    s[RESULT + 4] = 1;
    req3("signal-trailing", s, "EINVAL");
    // Version 2: three pages inline after seven octets of private data and
    // one of padding, at octets 64, 68, 72.
    let refs = grefs(100, 3);
    let three = Request {
        req_id: 7,
        message: Message::Export(Export {
            hid: id(1),
            size: 12289 - 1,
            pages: PageRefs::Inline(InlineRefs::new(&refs).unwrap()),
            flags: ExportFlags::WRITABLE,
            priv_data: PrivData::new(b"frame 1").unwrap(),
            fence: None,
        }),
    }
    .encode();
    req2("export-inline", three, "OK");
    let mut s = three;
    put32(&mut s, DIR_GREF, 100);
    req2("export-inline-with-directory", s, "EINVAL");
    let mut s = three;
    put32(&mut s, FLAGS, 2 | 4);
    req2("export-inline-unknown-flag", s, "EINVAL");
    let mut s = three;
    s[56 + 7] = 1;
    req2("export-inline-padding", s, "EINVAL");
    let mut s = three;
    put32(&mut s, 72, 7);
    req2("export-inline-reserved-gref", s, "EINVAL");
    let mut s = three;
    put32(&mut s, 76, 103);
    req2("export-inline-past-count", s, "EINVAL");
    // With the full 192 octets of private data, room for two: three is
    // refused.
    let mut s = three;
    put32(&mut s, PRIV_LEN, 192);
    s[56..248].fill(b'x');
    s[248..].fill(0);
    put32(&mut s, 248, 100);
    put32(&mut s, 252, 101);
    req2("export-inline-no-room", s, "EINVAL");
    let none = ExportFlags::default();
    let ok = export(12289, 100, none, b"frame 1");
    req("export", GIB, ok, "OK");
    req(
        "export-writable",
        GIB,
        export(4096, 100, ExportFlags::WRITABLE, b""),
        "OK",
    );
    req(
        "export-directory-reach",
        1 << 40,
        export(PGDIR_MAX_BUFFER_BYTES, 100, none, b""),
        "OK",
    );
    let mut s = ok;
    put64(&mut s, SIZE, 0);
    req("export-size-zero", GIB, s, "EINVAL");
    req(
        "export-over-limit",
        GIB,
        export(GIB + 4096, 100, none, b""),
        "E2BIG",
    );
    req(
        "export-beyond-directory",
        1 << 40,
        export(PGDIR_MAX_BUFFER_BYTES + 4096, 100, none, b""),
        "E2BIG",
    );
    let mut s = export(GIB + 4096, 100, none, b"");
    put32(&mut s, DIR_GREF, 7);
    req("export-over-limit-bad-gref", GIB, s, "E2BIG");
    let mut s = ok;
    put32(&mut s, NR_PAGES, 3);
    req("export-nr-pages-mismatch", GIB, s, "EINVAL");
    let mut s = ok;
    put32(&mut s, DIR_GREF, 7);
    req("export-gref-reserved", GIB, s, "EINVAL");
    let mut s = ok;
    put32(&mut s, FLAGS, 2);
    req("export-unknown-flag", GIB, s, "EINVAL");
    let mut s = ok;
    put32(&mut s, PRIV_LEN, 193);
    req("export-priv-too-long", GIB, s, "EINVAL");
    let mut s = ok;
    s[56 + 7] = b'!';
    req("export-priv-past-length", GIB, s, "EINVAL");
    let mut s = ok;
    s[PRIV_END] = 1;
    req("export-reserved-tail", GIB, s, "EINVAL");
    let mut s = ok;
    s[OP] = 0x09;
    req("unknown-op", GIB, s, "EOPNOTSUPP");
    let mut s = ok;
    s[OP + 1] = 1;
    req("reserved-after-op", GIB, s, "EINVAL");
    let mut s = ok;
    s[8..16].fill(0);
    req("id-number-zero", GIB, s, "EINVAL");
    let update = request(Message::Update {
        hid: id(2),
        priv_data: PrivData::new(b"frame 2").unwrap(),
        fence: None,
    });
    req("update", GIB, update, "OK");
    let mut s = update;
    put32(&mut s, NR_PAGES, 1);
    req("update-reserved-set", GIB, s, "EINVAL");
    let unexport = request(Message::Unexport(id(3)));
    req("unexport", GIB, unexport, "OK");
    let mut s = unexport;
    s[SIZE] = 1;
    req("unexport-trailing", GIB, s, "EINVAL");
    let epoch = |n| MapEpoch::new(n).unwrap();
    req(
        "mapped",
        GIB,
        request(Message::Mapped {
            hid: id(4),
            epoch: epoch(1),
        }),
        "OK",
    );
    let release = request(Message::Release {
        hid: id(4),
        epoch: epoch(3),
    });
    req("release", GIB, release, "OK");
    let mut s = release;
    put32(&mut s, EPOCH, 0);
    req("release-epoch-zero", GIB, s, "EINVAL");

    let mut rsp = |name: &str, slot: [u8; SLOT_SIZE], verdict: &str| {
        out.push(format!("response {name} {} {verdict}", hex(&slot)));
    };
    let answer = |op: u8, status, map_epoch| {
        Response {
            req_id: 7,
            op,
            status,
            map_epoch,
        }
        .encode()
    };
    rsp("export-ok", answer(1, Status::Ok, None), "ok");
    rsp(
        "unexport-busy",
        answer(3, Status::Busy, Some(epoch(2))),
        "ok",
    );
    rsp(
        "unexport-busy-no-epoch",
        answer(3, Status::Busy, None),
        "fatal",
    );
    let mut s = answer(1, Status::Ok, None);
    put32(&mut s, RSP_EPOCH, 2);
    rsp("epoch-where-none", s, "fatal");
    let mut s = answer(1, Status::Ok, None);
    s[RSP_STATUS..RSP_STATUS + 4].copy_from_slice(&(-5i32).to_le_bytes());
    rsp("unknown-status", s, "fatal");
    let mut s = answer(1, Status::Ok, None);
    s[16] = 1;
    rsp("reserved-tail", s, "fatal");

    let mut dir = |name: &str, size: u64, page: Vec<u8>, verdict: &str| {
        out.push(format!("root {name} {size} {GIB} {} {verdict}", hex(&page)));
    };
    let one = root(12289, &grefs(100, 4));
    dir(
        "one-level",
        12289,
        one.clone(),
        "ok levels=1 pages=4 entries=4",
    );
    // Two levels from ROOT_ENTRIES + 1 pages: one leaf lists them all.
    let big = (ROOT_ENTRIES as u64 + 1) * PAGE as u64;
    dir(
        "two-level",
        big,
        root(big, &grefs(200, 1)),
        "ok levels=2 pages=1017 entries=1",
    );
    let mut p = one.clone();
    p[R_MAGIC] = b'x';
    dir("bad-magic", 12289, p, "bad");
    dir("size-differs", 12288, one.clone(), "bad");
    let mut p = one.clone();
    p[R_LEVELS..R_LEVELS + 2].copy_from_slice(&2u16.to_le_bytes());
    dir("levels-wrong", 12289, p, "bad");
    let mut p = one.clone();
    put32(&mut p, ROOT_HEADER, 7);
    dir("entry-reserved-gref", 12289, p, "bad");
    let mut p = one.clone();
    put32(&mut p, ROOT_HEADER + 4 * 4, 104);
    dir("entry-past-count", 12289, p, "bad");
    let mut p = one;
    put64(&mut p, R_SIZE, 1 << 40);
    dir("huge-size", 1 << 40, p, "bad");
    let first = leaf(big, 0, &grefs(300, ROOT_ENTRIES + 1));
    out.push(format!(
        "leaf first {big} {GIB} 0 {} ok entries=1017",
        hex(&first)
    ));
    out.push(format!(
        "leaf index-differs {big} {GIB} 1 {} bad",
        hex(&first)
    ));

    for (node, value, verdict) in [
        ("max-ring-page-order", "2", "ok"),
        ("max-ring-page-order", "5", "bad"),
        ("max-ring-page-order", "02", "bad"),
        ("max-ring-page-order", "", "bad"),
        ("max-buffer-size", "1073741824", "ok"),
        ("max-buffer-size", "0", "bad"),
        ("max-buffer-size", "18446744073709551616", "bad"),
        ("feature-rw", "1", "ok"),
        ("feature-rw", "yes", "bad"),
        ("versions", "1", "ok"),
        ("versions", "1,2", "ok"),
        ("versions", "1,2,3", "ok"),
        ("versions", "0", "bad"),
        ("versions", "2,1", "bad"),
        ("ring-ref0", "8", "ok"),
        ("ring-ref0", "7", "bad"),
        ("event-channel", "0", "bad"),
        ("event-channel", "5", "ok"),
        ("state", "4", "ok"),
        ("state", "0", "bad"),
        ("state", "9", "bad"),
        ("frontend-id", "32751", "ok"),
        ("frontend-id", "32752", "bad"),
    ] {
        let shown = if value.is_empty() { "-" } else { value };
        out.push(format!("xenstore {node} {shown} {verdict}"));
    }
    out.extend(inline);
    out.extend(fenced);
    out
}

const HEADER: &str = "\
# Golden vectors of the hyper_dmabuf protocol, versions 1 to 3
# (docs/protocol.md). Checked by tests/sim/tests/vectors.rs against the
# reference code.
#
# One vector per line, fields separated by one space:
#   request  NAME LIMIT HEX VERDICT    a request slot (section 11) as received
#            by an end whose buffer limit is LIMIT octets; VERDICT is the
#            status its decoding gives (sections 11.2 to 11.7 and 15.3, before any
#            check of the end's own state): OK, EINVAL, E2BIG or EOPNOTSUPP,
#            the same in versions 1, 2 and 3
#   request2 NAME LIMIT HEX VERDICT    the same in versions 2 and 3 (an
#            EXPORT with inline references, section 11.3); in version 1
#            each is EINVAL
#   request3 NAME LIMIT HEX VERDICT    the same in version 3 only (fences,
#            sections 11.3, 11.4 and 15); in versions 1 and 2 each is
#            refused (EINVAL, or EOPNOTSUPP for SIGNAL)
#   response NAME HEX VERDICT          a response slot (section 11.9) for a
#            request with that operation outstanding: ok, or fatal
#   root     NAME SIZE LIMIT HEX VERDICT  a root directory page (section 12)
#            for a buffer announced as SIZE octets, read by an importer
#            whose limit is LIMIT: `ok levels=L pages=N entries=E`, or bad
#   leaf     NAME SIZE LIMIT INDEX HEX VERDICT  leaf INDEX of that buffer's
#            directory: `ok entries=E`, or bad
#   xenstore NODE VALUE VERDICT        a value read from a node of sections
#            5 and 6 (`-` for the empty string): ok, or bad
# HEX is lower-case; trailing zero octets are left out (a slot is 256
# octets, a page 4096: pad with zeros).
";

fn hex(bytes: &[u8]) -> String {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mut s = String::with_capacity(end * 2);
    for b in &bytes[..end] {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(text: &str, len: usize) -> Vec<u8> {
    assert!(text.len() % 2 == 0 && text.len() / 2 <= len, "{text}");
    let mut out: Vec<u8> = (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    out.resize(len, 0);
    out
}

fn slot(text: &str) -> [u8; SLOT_SIZE] {
    unhex(text, SLOT_SIZE).try_into().unwrap()
}

fn page(text: &str) -> Vec<AtomicU32> {
    unhex(text, PAGE)
        .chunks(4)
        .map(|w| AtomicU32::new(u32::from_ne_bytes(w.try_into().unwrap())))
        .collect()
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Ok => "OK",
        Status::PermissionDenied => "EPERM",
        Status::NoSuchBuffer => "ENOENT",
        Status::TooLarge => "E2BIG",
        Status::NoMemory => "ENOMEM",
        Status::Busy => "EBUSY",
        Status::Exists => "EEXIST",
        Status::Invalid => "EINVAL",
        Status::NoSpace => "ENOSPC",
        Status::NotSupported => "EOPNOTSUPP",
    }
}

fn n<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    text.parse().unwrap()
}

/// The status of a request slot's decoding in `version`.
fn judge_request(bytes: &str, limit: u64, version: u32) -> String {
    match Request::decode(&slot(bytes), limit, version) {
        Ok(r) => {
            // A valid slot is also exactly what the encoder writes.
            assert_eq!(r.encode(), slot(bytes), "{bytes}");
            "OK".into()
        }
        Err(e) => status_name(Status::from(e)).into(),
    }
}

/// What the reference code says of one line (without its verdict).
fn judge(fields: &[&str]) -> String {
    let ok_or_bad = |ok: bool| if ok { "ok" } else { "bad" }.to_string();
    match fields {
        ["request", _, limit, bytes] => {
            let v1 = judge_request(bytes, n(limit), VERSION_1);
            assert_eq!(v1, judge_request(bytes, n(limit), VERSION_2), "{fields:?}");
            assert_eq!(v1, judge_request(bytes, n(limit), VERSION_3), "{fields:?}");
            v1
        }
        ["request2", _, limit, bytes] => {
            assert_eq!(
                judge_request(bytes, n(limit), VERSION_1),
                "EINVAL",
                "{fields:?}"
            );
            let v2 = judge_request(bytes, n(limit), VERSION_2);
            assert_eq!(v2, judge_request(bytes, n(limit), VERSION_3), "{fields:?}");
            v2
        }
        ["request3", _, limit, bytes] => {
            for older in [VERSION_1, VERSION_2] {
                let verdict = judge_request(bytes, n(limit), older);
                assert!(
                    verdict == "EINVAL" || verdict == "EOPNOTSUPP",
                    "{fields:?} in version {older}: {verdict}"
                );
            }
            judge_request(bytes, n(limit), VERSION_3)
        }
        ["response", _, bytes] => match Response::decode(&slot(bytes)) {
            Ok(r) => {
                assert_eq!(r.encode(), slot(bytes), "{fields:?}");
                "ok".into()
            }
            Err(_) => "fatal".into(),
        },
        ["root", _, size, limit, bytes] => {
            let root = page(bytes);
            match pgdir::read_root_header(&root[..], n(size), n(limit)) {
                Ok(layout) => {
                    let mut refs = vec![GrantRef::FIRST; layout.root_entries()];
                    match pgdir::read_root_entries(&root[..], &layout, &mut refs) {
                        Ok(()) => format!(
                            "ok levels={} pages={} entries={}",
                            layout.levels(),
                            layout.nr_pages(),
                            refs.len()
                        ),
                        Err(_) => "bad".into(),
                    }
                }
                Err(_) => "bad".into(),
            }
        }
        ["leaf", _, size, limit, index, bytes] => {
            let layout = Layout::new(n(size), n(limit)).unwrap();
            let index: u32 = n(index);
            let len = layout.leaf_range(index).map_or(0, |r| r.len());
            let mut refs = vec![GrantRef::FIRST; len];
            match pgdir::read_leaf(&page(bytes)[..], &layout, index, &mut refs) {
                Ok(()) => format!("ok entries={len}"),
                Err(_) => "bad".into(),
            }
        }
        ["xenstore", node, value] => {
            let v = if *value == "-" { "" } else { value }.as_bytes();
            ok_or_bad(match *node {
                "max-ring-page-order" => parse::parse_u32_in(v, 0, 4).is_ok(),
                "max-buffer-size" => parse::parse_u64_in(v, 1, u64::MAX).is_ok(),
                "feature-rw" => parse::parse_bool(v).is_ok(),
                "versions" => parse::parse_versions(v).is_ok(),
                "ring-ref0" => parse::parse_gref(v).is_ok(),
                "event-channel" => parse::parse_evtchn(v).is_ok(),
                "state" => parse::parse_state(v).is_ok(),
                "frontend-id" => parse::parse_domid(v).is_ok(),
                other => panic!("no rule for node {other}"),
            })
        }
        other => panic!("unknown vector {other:?}"),
    }
}

#[test]
fn the_published_vectors_are_the_cases_and_the_code_agrees_with_each() {
    let mut text = String::from(HEADER);
    for line in cases() {
        text.push_str(&line);
        text.push('\n');
    }
    if std::env::var_os("HDM_BLESS_VECTORS").is_some() {
        std::fs::write(path(), &text).unwrap();
    }
    let published = std::fs::read_to_string(path()).unwrap();
    assert!(
        published == text,
        "docs/protocol-vectors.txt differs from the cases in {} \
         (HDM_BLESS_VECTORS=1 rewrites it)",
        file!()
    );
    let mut checked = 0;
    for line in published.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split(' ').collect();
        let (verdict, rest) = if fields[0] == "root" || fields[0] == "leaf" {
            // Verdicts of directory pages have several words.
            let at = fields
                .iter()
                .position(|f| *f == "ok" || *f == "bad")
                .unwrap();
            (fields[at..].join(" "), &fields[..at])
        } else {
            let (last, rest) = fields.split_last().unwrap();
            (last.to_string(), rest)
        };
        assert_eq!(judge(rest), verdict, "{}", &line[..line.len().min(120)]);
        checked += 1;
    }
    assert_eq!(checked, cases().len());
}
