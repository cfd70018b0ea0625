// SPDX-License-Identifier: MIT
//! A small client of xenstored's wire protocol, over its Unix socket (or
//! the kernel's `/dev/xen/xenbus`), implementing `xenbus-proto`'s
//! [`Store`] so that the toolstack side of the schema
//! (`schema::create_device` and friends) runs on it unchanged.
//!
//! Every message is a header of four little-endian `u32` — type, request
//! id, transaction id, payload length — and at most 4096 payload bytes
//! (`xs_wire.h`). Replies are read with that bound; anything malformed is
//! an error, never a panic.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use hyper_dmabuf_xenbus_proto::store::{Perm, PermKind};
use hyper_dmabuf_xenbus_proto::{Error, Store, Txn};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

/// Where xenstored listens in a toolstack domain.
pub const SOCKET_PATH: &str = "/run/xenstored/socket";
/// The kernel's xenbus device, for domains without the socket.
pub const DEVICE_PATH: &str = "/dev/xen/xenbus";

/// Largest payload of a xenstore message (`XENSTORE_PAYLOAD_MAX`).
const MAX_PAYLOAD: usize = 4096;

/// How long a reply may take before the request fails. xenstored answers
/// every request this tool sends at once; a daemon that stops answering
/// must not hang `xl detach` in a test VM forever.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Most watch events kept aside while waiting for one reply (a connection
/// with watches gets events at any time); the bound keeps a daemon that
/// sends only events from holding us in the loop or growing the queue.
const MAX_SKIPPED_EVENTS: usize = 64;

/// `EIO`: what a transport failure or a malformed reply becomes as a
/// [`Store`] error (the detail is kept in [`XsClient::last_failure`]).
const EIO: i32 = 5;

// Message types (xen/include/public/io/xs_wire.h). Only the ones this
// client sends or must recognise are named.
const XS_DIRECTORY: u32 = 1;
const XS_READ: u32 = 2;
const XS_WATCH: u32 = 4;
const XS_TRANSACTION_START: u32 = 6;
const XS_TRANSACTION_END: u32 = 7;
const XS_WRITE: u32 = 11;
const XS_MKDIR: u32 = 12;
const XS_RM: u32 = 13;
const XS_SET_PERMS: u32 = 14;
const XS_WATCH_EVENT: u32 = 15;
const XS_ERROR: u32 = 16;

/// The name of a request type, for error messages.
fn type_name(ty: u32) -> &'static str {
    match ty {
        XS_DIRECTORY => "directory",
        XS_READ => "read",
        XS_WATCH => "watch",
        XS_TRANSACTION_START => "transaction start",
        XS_TRANSACTION_END => "transaction end",
        XS_WRITE => "write",
        XS_MKDIR => "mkdir",
        XS_RM => "rm",
        XS_SET_PERMS => "set perms",
        _ => "request",
    }
}

/// A connection to xenstored.
pub struct XsClient<S = Transport> {
    stream: S,
    next_req: u32,
    /// Watch events that arrived while a reply was awaited, oldest first.
    events: std::collections::VecDeque<WatchEvent>,
    /// What the last failed request was and why, with its path: the
    /// [`Store`] errors carry only an errno, and the user needs to know
    /// which node was refused.
    last_failure: Option<String>,
}

/// The byte stream to xenstored.
pub enum Transport {
    /// xenstored's Unix socket.
    Socket(UnixStream),
    /// `/dev/xen/xenbus`.
    Device(std::fs::File),
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Socket(s) => s.read(buf),
            Transport::Device(f) => f.read(buf),
        }
    }
}

impl AsFd for Transport {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Transport::Socket(s) => s.as_fd(),
            Transport::Device(f) => f.as_fd(),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Socket(s) => s.write(buf),
            Transport::Device(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Socket(s) => s.flush(),
            Transport::Device(f) => f.flush(),
        }
    }
}

impl XsClient<Transport> {
    /// Connects to xenstored (the socket, else the kernel device).
    pub fn open() -> io::Result<Self> {
        Self::open_at(Path::new(SOCKET_PATH), Path::new(DEVICE_PATH))
    }

    /// Connects to xenstored at `socket`, else through `device` (tests
    /// pass a socket of their own).
    pub fn open_at(socket: &Path, device: &Path) -> io::Result<Self> {
        let socket_err = match UnixStream::connect(socket) {
            Ok(s) => {
                s.set_read_timeout(Some(REPLY_TIMEOUT))?;
                return Ok(XsClient::over(Transport::Socket(s)));
            }
            Err(e) => e,
        };
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(device)
        {
            Ok(f) => Ok(XsClient::over(Transport::Device(f))),
            Err(device_err) => Err(io::Error::new(
                socket_err.kind(),
                format!(
                    "cannot reach xenstored ({}: {socket_err}; {}: {device_err}): \
                     is this the toolstack domain, with xenstored running?",
                    socket.display(),
                    device.display()
                ),
            )),
        }
    }
}

/// A failed request: xenstored's errno name, or a transport problem.
#[derive(Debug)]
pub enum XsError {
    /// xenstored answered `XS_ERROR` with this errno name (`ENOENT`, ...).
    Daemon(String),
    /// The connection failed or the reply was malformed.
    Io(io::Error),
}

impl std::fmt::Display for XsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XsError::Daemon(e) => write!(f, "xenstored says {e}"),
            XsError::Io(e) => write!(f, "talking to xenstored: {e}"),
        }
    }
}

impl From<io::Error> for XsError {
    fn from(e: io::Error) -> Self {
        XsError::Io(e)
    }
}

/// A malformed reply.
fn bad(what: &str) -> XsError {
    XsError::Io(io::Error::new(io::ErrorKind::InvalidData, what.to_string()))
}

/// `path` as a request payload: the path and its terminating NUL.
fn with_nul(path: &str) -> Vec<u8> {
    let mut v = path.as_bytes().to_vec();
    v.push(0);
    v
}

/// The text before the first NUL of `body` (xenstored NUL-terminates its
/// error names and transaction ids; a missing NUL is tolerated).
fn first_field(body: &[u8]) -> String {
    String::from_utf8_lossy(body.split(|b| *b == 0).next().unwrap_or(&[])).into_owned()
}

/// One permission in xenstore's notation (`n0`, `r5`).
fn perm_text(p: &Perm) -> String {
    let letter = match p.kind {
        PermKind::None => 'n',
        PermKind::Read => 'r',
        PermKind::Write => 'w',
        PermKind::Both => 'b',
    };
    format!("{letter}{}", p.domid)
}

/// The errno number of an errno name xenstored sends (Linux numbers,
/// which is what dom0 runs); an unknown name is `EIO`.
fn errno_of(name: &str) -> i32 {
    match name {
        "EPERM" => 1,
        "ENOENT" => 2,
        "EIO" => 5,
        "E2BIG" => 7,
        "EAGAIN" => 11,
        "ENOMEM" => 12,
        "EACCES" => 13,
        "EBUSY" => 16,
        "EEXIST" => 17,
        "EISDIR" => 21,
        "EINVAL" => 22,
        "ENOSPC" => 28,
        "EROFS" => 30,
        "ENOSYS" => 38,
        "ENOTEMPTY" => 39,
        "EQUOTA" => 122,
        _ => EIO,
    }
}

impl<S: Read + Write> XsClient<S> {
    /// A client over an open stream (tests pass a socket pair).
    pub fn over(stream: S) -> Self {
        XsClient {
            stream,
            next_req: 1,
            events: std::collections::VecDeque::new(),
            last_failure: None,
        }
    }

    /// The last failed request, as `<operation> <path>: <why>`.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// Sends one request and returns its reply's payload; a failure is
    /// also remembered, with the request's path, for [`Self::last_failure`].
    pub fn request(&mut self, ty: u32, txn: u32, payload: &[u8]) -> Result<Vec<u8>, XsError> {
        let result = self.exchange(ty, txn, payload);
        if let Err(e) = &result {
            let why = match e {
                XsError::Daemon(name) => name.clone(),
                XsError::Io(e) => e.to_string(),
            };
            // Every other payload this client sends starts with the path.
            let what = match ty {
                XS_TRANSACTION_START | XS_TRANSACTION_END => {
                    format!("{} (transaction {txn})", type_name(ty))
                }
                _ => format!("{} {}", type_name(ty), first_field(payload)),
            };
            self.last_failure = Some(format!("{what}: {why}"));
        }
        result
    }

    /// One request and its reply, without bookkeeping.
    fn exchange(&mut self, ty: u32, txn: u32, payload: &[u8]) -> Result<Vec<u8>, XsError> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|_| payload.len() <= MAX_PAYLOAD)
            .ok_or_else(|| bad("request longer than xenstore's 4096-byte limit"))?;
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        let mut msg = Vec::with_capacity(16 + payload.len());
        for word in [ty, req_id, txn, len] {
            msg.extend_from_slice(&word.to_le_bytes());
        }
        msg.extend_from_slice(payload);
        self.stream.write_all(&msg)?;
        for _ in 0..=MAX_SKIPPED_EVENTS {
            let (rtype, rid, body) = self.read_message()?;
            if rtype == XS_WATCH_EVENT {
                if self.events.len() < MAX_SKIPPED_EVENTS {
                    self.events.push_back(WatchEvent::parse(&body)?);
                }
                continue;
            }
            if rid != req_id {
                return Err(bad("reply to another request"));
            }
            if rtype == XS_ERROR {
                return Err(XsError::Daemon(first_field(&body)));
            }
            if rtype != ty {
                return Err(bad("reply of another type"));
            }
            return Ok(body);
        }
        Err(bad("only watch events, no reply"))
    }

    /// Reads one message: its type, request id and payload.
    fn read_message(&mut self) -> Result<(u32, u32, Vec<u8>), XsError> {
        let mut header = [0u8; 16];
        self.stream.read_exact(&mut header)?;
        let word = |i: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(header.get(i..i + 4).unwrap_or(&[0; 4]));
            u32::from_le_bytes(w)
        };
        let (rtype, rid, rlen) = (word(0), word(4), word(12));
        // Checked before allocating: a hostile length must not make us
        // reserve gigabytes.
        let rlen = usize::try_from(rlen)
            .ok()
            .filter(|l| *l <= MAX_PAYLOAD)
            .ok_or_else(|| bad("reply longer than xenstore's 4096-byte limit"))?;
        let mut body = vec![0u8; rlen];
        self.stream.read_exact(&mut body)?;
        Ok((rtype, rid, body))
    }

    /// Registers a watch on `path` (a node, or `@introduceDomain` /
    /// `@releaseDomain`); its events carry `token`. xenstored also sends
    /// one event at once.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        let mut payload = with_nul(path);
        payload.extend_from_slice(&with_nul(token));
        self.request(XS_WATCH, 0, &payload).map(drop)
    }

    /// The children of `path`.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        let body = self.request(XS_DIRECTORY, 0, &with_nul(path))?;
        Ok(body
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }

    /// The value of `path`, `None` if absent.
    pub fn read_value(&mut self, path: &str) -> Result<Option<String>, XsError> {
        match self.request(XS_READ, 0, &with_nul(path)) {
            Ok(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            Err(XsError::Daemon(e)) if e == "ENOENT" => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl<S: Read + Write + AsFd> XsClient<S> {
    /// The next watch event, waiting at most `timeout`; `None` when none
    /// came in time.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<WatchEvent>, XsError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            if !readable_within(self.stream.as_fd(), timeout)? {
                return Ok(None);
            }
            let (rtype, _, body) = self.read_message()?;
            if rtype != XS_WATCH_EVENT {
                return Err(bad("a reply with no request outstanding"));
            }
            self.events.push_back(WatchEvent::parse(&body)?);
        }
    }
}

/// Whether `fd` becomes readable within `timeout`.
fn readable_within(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    // A timeout too long for a timespec is as good as forever.
    let timeout = Timespec::try_from(timeout).ok();
    loop {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(ready) => return Ok(ready > 0),
            // A signal: wait again, the whole timeout (the callers' loops
            // only need to know that nothing came yet).
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// One watch event: the path that changed and the watch's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The node that changed (or the watched path, on registration).
    pub path: String,
    /// The token the watch was registered with.
    pub token: String,
}

impl WatchEvent {
    /// An `XS_WATCH_EVENT` payload: `PATH\0TOKEN\0`.
    fn parse(body: &[u8]) -> Result<WatchEvent, XsError> {
        let mut fields = body.split(|b| *b == 0);
        match (fields.next(), fields.next()) {
            (Some(path), Some(token)) if !path.is_empty() => Ok(WatchEvent {
                path: String::from_utf8_lossy(path).into_owned(),
                token: String::from_utf8_lossy(token).into_owned(),
            }),
            _ => Err(bad("a watch event without path and token")),
        }
    }
}

/// The [`Store`] error of a failed request.
fn store_err(e: XsError) -> Error {
    match e {
        XsError::Daemon(name) => match name.as_str() {
            "EAGAIN" => Error::Again,
            "EACCES" | "EPERM" => Error::Denied,
            other => Error::Store(errno_of(other)),
        },
        XsError::Io(_) => Error::Store(EIO),
    }
}

impl<S: Read + Write> Store for XsClient<S> {
    fn read(&mut self, txn: Txn, path: &str, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        match self.request(XS_READ, txn.0, &with_nul(path)) {
            Ok(v) => {
                let dst = buf.get_mut(..v.len()).ok_or(Error::ValueTooLong)?;
                dst.copy_from_slice(&v);
                Ok(Some(v.len()))
            }
            Err(XsError::Daemon(e)) if e == "ENOENT" => Ok(None),
            Err(e) => Err(store_err(e)),
        }
    }

    fn write(&mut self, txn: Txn, path: &str, value: &[u8]) -> Result<(), Error> {
        // The value follows the path's NUL and is not terminated.
        let mut payload = with_nul(path);
        payload.extend_from_slice(value);
        self.request(XS_WRITE, txn.0, &payload)
            .map(drop)
            .map_err(store_err)
    }

    fn remove(&mut self, txn: Txn, path: &str) -> Result<(), Error> {
        // The trait promises that removing an absent node succeeds.
        match self.request(XS_RM, txn.0, &with_nul(path)) {
            Ok(_) => Ok(()),
            Err(XsError::Daemon(e)) if e == "ENOENT" => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }

    fn transaction_start(&mut self) -> Result<Txn, Error> {
        let body = self
            .request(XS_TRANSACTION_START, 0, b"\0")
            .map_err(store_err)?;
        let text = first_field(&body);
        // 0 is XBT_NIL: a daemon answering it would silently run the
        // "transaction" outside any transaction.
        match text.parse::<u32>() {
            Ok(id) if id != 0 => Ok(Txn(id)),
            _ => {
                self.last_failure = Some(format!("transaction start: bad id {text:?}"));
                Err(Error::Store(EIO))
            }
        }
    }

    fn transaction_end(&mut self, txn: Txn, commit: bool) -> Result<(), Error> {
        let payload: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.request(XS_TRANSACTION_END, txn.0, payload)
            .map(drop)
            .map_err(store_err)
    }

    fn mkdir(&mut self, txn: Txn, path: &str) -> Result<(), Error> {
        self.request(XS_MKDIR, txn.0, &with_nul(path))
            .map(drop)
            .map_err(store_err)
    }

    fn set_perms(&mut self, txn: Txn, path: &str, perms: &[Perm]) -> Result<(), Error> {
        let mut payload = with_nul(path);
        for p in perms {
            payload.extend_from_slice(&with_nul(&perm_text(p)));
        }
        self.request(XS_SET_PERMS, txn.0, &payload)
            .map(drop)
            .map_err(store_err)
    }
}

/// `xenstore-ls -p` notation of a permission list (`n5,r0`).
pub fn perms_text(perms: &[Perm]) -> String {
    perms.iter().map(perm_text).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::thread;

    /// One scripted answer of the fake xenstored.
    struct Reply {
        /// Message type of the answer.
        ty: u32,
        /// Its payload.
        body: Vec<u8>,
        /// A length to put in the header instead of the payload's.
        len: Option<u32>,
        /// A request id to answer with instead of the request's.
        req_id: Option<u32>,
        /// Watch events to send before the answer.
        events_before: usize,
    }

    fn ok(ty: u32, body: &[u8]) -> Reply {
        Reply {
            ty,
            body: body.to_vec(),
            len: None,
            req_id: None,
            events_before: 0,
        }
    }

    fn err(name: &str) -> Reply {
        ok(XS_ERROR, format!("{name}\0").as_bytes())
    }

    fn message(ty: u32, req_id: u32, txn: u32, len: u32, body: &[u8]) -> Vec<u8> {
        let mut msg = Vec::new();
        for word in [ty, req_id, txn, len] {
            msg.extend_from_slice(&word.to_le_bytes());
        }
        msg.extend_from_slice(body);
        msg
    }

    /// A request the fake xenstored saw: type, transaction, payload.
    type Seen = (u32, u32, Vec<u8>);

    /// A fake xenstored listening on a socket in a fresh temporary
    /// directory: it reads one request per scripted reply, answers it, and
    /// finally returns the requests it saw (type, transaction, payload).
    struct FakeXenstored {
        dir: PathBuf,
        socket: PathBuf,
        server: Option<thread::JoinHandle<Vec<Seen>>>,
    }

    impl FakeXenstored {
        fn start(script: Vec<Reply>) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "hdmabuf-xs-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let socket = dir.join("socket");
            let listener = UnixListener::bind(&socket).unwrap();
            let server = thread::spawn(move || {
                let (mut peer, _) = listener.accept().unwrap();
                let mut seen = Vec::new();
                for reply in script {
                    let mut header = [0u8; 16];
                    if peer.read_exact(&mut header).is_err() {
                        break;
                    }
                    let w = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
                    let mut req = vec![0u8; w(12) as usize];
                    peer.read_exact(&mut req).unwrap();
                    seen.push((w(0), w(8), req));
                    let mut out = Vec::new();
                    for _ in 0..reply.events_before {
                        out.extend(message(XS_WATCH_EVENT, 0, 0, 4, b"a\0b\0"));
                    }
                    let len = reply.len.unwrap_or(reply.body.len() as u32);
                    let id = reply.req_id.unwrap_or(w(4));
                    out.extend(message(reply.ty, id, w(8), len, &reply.body));
                    // The client may have given up already (hostile cases).
                    let _ = peer.write_all(&out);
                }
                seen
            });
            FakeXenstored {
                dir,
                socket,
                server: Some(server),
            }
        }

        fn client(&self) -> XsClient {
            XsClient::open_at(&self.socket, &self.dir.join("no-device")).unwrap()
        }

        /// Waits for the script to end; the client must be dropped first
        /// when the script is longer than what it sent.
        fn requests(mut self) -> Vec<Seen> {
            self.server.take().unwrap().join().unwrap()
        }
    }

    impl Drop for FakeXenstored {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn perms_n5_r0() -> [Perm; 2] {
        [
            Perm {
                domid: 5,
                kind: PermKind::None,
            },
            Perm {
                domid: 0,
                kind: PermKind::Read,
            },
        ]
    }

    #[test]
    fn requests_are_encoded_as_xs_wire_says() {
        let xs = FakeXenstored::start(vec![
            ok(XS_TRANSACTION_START, b"7\0"),
            ok(XS_MKDIR, b"OK\0"),
            ok(XS_WRITE, b"OK\0"),
            ok(XS_SET_PERMS, b"OK\0"),
            ok(XS_RM, b"OK\0"),
            ok(XS_TRANSACTION_END, b"OK\0"),
            ok(XS_READ, b"4"),
            err("ENOENT"),
            ok(XS_DIRECTORY, b"0\x005\x00"),
            err("ENOENT"),
            ok(XS_TRANSACTION_START, b"8\0"),
            ok(XS_TRANSACTION_END, b"OK\0"),
        ]);
        let mut c = xs.client();
        let txn = c.transaction_start().unwrap();
        assert_eq!(txn, Txn(7));
        c.mkdir(txn, "/a").unwrap();
        c.write(txn, "/a/state", b"1").unwrap();
        c.set_perms(txn, "/a", &perms_n5_r0()).unwrap();
        c.remove(txn, "/a/old").unwrap();
        c.transaction_end(txn, true).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(c.read(Txn::NONE, "/a/state", &mut buf).unwrap(), Some(1));
        assert_eq!(&buf[..1], b"4");
        assert_eq!(c.read(Txn::NONE, "/none", &mut buf).unwrap(), None);
        assert_eq!(c.directory("/local/domain").unwrap(), ["0", "5"]);
        // Removing what is not there succeeds, as the trait promises.
        c.remove(Txn::NONE, "/none").unwrap();
        let txn = c.transaction_start().unwrap();
        c.transaction_end(txn, false).unwrap();
        assert_eq!(c.last_failure(), Some("rm /none: ENOENT"));
        drop(c);
        let seen = xs.requests();
        let expect: [(u32, u32, &[u8]); 12] = [
            (XS_TRANSACTION_START, 0, b"\0"),
            (XS_MKDIR, 7, b"/a\0"),
            (XS_WRITE, 7, b"/a/state\x001"),
            (XS_SET_PERMS, 7, b"/a\0n5\0r0\0"),
            (XS_RM, 7, b"/a/old\0"),
            (XS_TRANSACTION_END, 7, b"T\0"),
            (XS_READ, 0, b"/a/state\0"),
            (XS_READ, 0, b"/none\0"),
            (XS_DIRECTORY, 0, b"/local/domain\0"),
            (XS_RM, 0, b"/none\0"),
            (XS_TRANSACTION_START, 0, b"\0"),
            (XS_TRANSACTION_END, 8, b"F\0"),
        ];
        assert_eq!(seen.len(), expect.len());
        for ((ty, txn, body), (ety, etxn, ebody)) in seen.iter().zip(expect) {
            assert_eq!((*ty, *txn, body.as_slice()), (ety, etxn, ebody));
        }
    }

    #[test]
    fn the_header_is_little_endian() {
        let xs = FakeXenstored::start(vec![ok(XS_WRITE, b"OK\0")]);
        let mut c = xs.client();
        c.write(Txn(0x0102_0304), "/x", b"v").unwrap();
        drop(c);
        assert_eq!(xs.requests()[0].1, 0x0102_0304);
        // And byte for byte, over a socket pair.
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut c = XsClient::over(a);
        b.write_all(&message(XS_WRITE, 1, 0, 3, b"OK\0")).unwrap();
        c.write(Txn(3), "/x", b"v").unwrap();
        let mut sent = [0u8; 20];
        b.read_exact(&mut sent).unwrap();
        assert_eq!(
            &sent[..16],
            &[11, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]
        );
        assert_eq!(&sent[16..], b"/x\0v");
    }

    #[test]
    fn daemon_errors_map_to_store_errors() {
        let xs = FakeXenstored::start(vec![
            err("EAGAIN"),
            err("EACCES"),
            err("EPERM"),
            err("EINVAL"),
            err("ENOENT"),
            err("EWHATEVER"),
            ok(XS_READ, b"too long for the buffer"),
        ]);
        let mut c = xs.client();
        assert_eq!(c.transaction_end(Txn(3), true), Err(Error::Again));
        assert_eq!(c.write(Txn::NONE, "/x", b"1"), Err(Error::Denied));
        assert_eq!(c.mkdir(Txn::NONE, "/y"), Err(Error::Denied));
        assert_eq!(c.last_failure(), Some("mkdir /y: EPERM"));
        assert_eq!(
            c.set_perms(Txn::NONE, "/z", &perms_n5_r0()),
            Err(Error::Store(22))
        );
        assert_eq!(c.write(Txn::NONE, "/w", b"1"), Err(Error::Store(2)));
        assert_eq!(c.transaction_start(), Err(Error::Store(EIO)));
        let mut small = [0u8; 4];
        assert_eq!(
            c.read(Txn::NONE, "/v", &mut small),
            Err(Error::ValueTooLong)
        );
        drop(c);
        xs.requests();
    }

    #[test]
    fn watch_events_wait_while_a_reply_is_awaited() {
        let mut reply = ok(XS_READ, b"1");
        reply.events_before = 3;
        // The last reply is never asked for: the server keeps the
        // connection open, waiting, so that the client's queue runs dry.
        let script = vec![ok(XS_WATCH, b"OK\0"), reply, ok(XS_READ, b"")];
        let xs = FakeXenstored::start(script);
        let mut c = xs.client();
        c.watch("@releaseDomain", "release").unwrap();
        assert_eq!(c.read_value("/x").unwrap().as_deref(), Some("1"));
        let event = WatchEvent {
            path: "a".into(),
            token: "b".into(),
        };
        for _ in 0..3 {
            assert_eq!(c.next_event(Duration::ZERO).unwrap(), Some(event.clone()));
        }
        assert_eq!(c.next_event(Duration::ZERO).unwrap(), None);
        drop(c);
        let seen = xs.requests();
        assert_eq!(
            seen[0],
            (XS_WATCH, 0, b"@releaseDomain\0release\0".to_vec())
        );
    }

    #[test]
    fn a_malformed_watch_event_is_an_error() {
        for body in [&b""[..], b"\0tok\0", b"path-only"] {
            assert!(WatchEvent::parse(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn hostile_replies_are_errors_not_panics() {
        let cases: Vec<(Reply, &str)> = vec![
            // A length beyond the protocol's limit (no 4 GiB allocation).
            (
                Reply {
                    len: Some(u32::MAX),
                    ..ok(XS_READ, b"")
                },
                "longer than",
            ),
            (
                Reply {
                    len: Some(4097),
                    ..ok(XS_READ, b"")
                },
                "longer than",
            ),
            // A reply of another type, and to another request.
            (ok(XS_WRITE, b"OK\0"), "another type"),
            (
                Reply {
                    req_id: Some(99),
                    ..ok(XS_READ, b"1")
                },
                "another request",
            ),
            // Truncated: the header promises 10 bytes, 2 come, then EOF.
            (
                Reply {
                    len: Some(10),
                    ..ok(XS_READ, b"ab")
                },
                "",
            ),
            // Nothing but watch events.
            (
                Reply {
                    events_before: MAX_SKIPPED_EVENTS + 1,
                    ..ok(XS_READ, b"1")
                },
                "only watch events",
            ),
        ];
        for (reply, why) in cases {
            let xs = FakeXenstored::start(vec![reply]);
            let mut c = xs.client();
            let mut buf = [0u8; 16];
            assert_eq!(c.read(Txn::NONE, "/x", &mut buf), Err(Error::Store(EIO)));
            let failure = c.last_failure().unwrap().to_string();
            assert!(failure.starts_with("read /x: "), "{failure}");
            assert!(failure.contains(why), "{failure} lacks {why}");
            drop(c);
            xs.requests();
        }
        // A truncated header: the daemon hangs up after 3 bytes.
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&[1, 2, 3]).unwrap();
        drop(b);
        let mut c = XsClient::over(a);
        assert!(c.read_value("/x").is_err());
        // Transaction ids that are not numbers, or XBT_NIL.
        for body in [&b"x\0"[..], b"0\0", b"", b"99999999999\0"] {
            let xs = FakeXenstored::start(vec![ok(XS_TRANSACTION_START, body)]);
            let mut c = xs.client();
            assert_eq!(c.transaction_start(), Err(Error::Store(EIO)));
            drop(c);
            xs.requests();
        }
    }

    #[test]
    fn requests_beyond_the_limit_are_not_sent() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = XsClient::over(a);
        let long = format!("/{}", "x".repeat(MAX_PAYLOAD));
        assert_eq!(c.write(Txn::NONE, &long, b"1"), Err(Error::Store(EIO)));
    }

    #[test]
    fn without_socket_or_device_the_error_names_both() {
        let dir = std::env::temp_dir().join(format!("hdmabuf-xs-none-{}", std::process::id()));
        let e = XsClient::open_at(&dir.join("socket"), &dir.join("xenbus"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("socket: ") && e.contains("xenbus: "), "{e}");
    }

    #[test]
    fn permissions_in_xenstore_ls_notation() {
        let perms = [
            Perm {
                domid: 0,
                kind: PermKind::None,
            },
            Perm {
                domid: 5,
                kind: PermKind::Read,
            },
            Perm {
                domid: 7,
                kind: PermKind::Both,
            },
            Perm {
                domid: 8,
                kind: PermKind::Write,
            },
        ];
        assert_eq!(perms_text(&perms), "n0,r5,b7,w8");
    }
}
