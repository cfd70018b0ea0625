//! A small client of xenstored's wire protocol, over its Unix socket (or
//! the kernel's `/dev/xen/xenbus`), implementing `xenbus-proto`'s
//! [`Store`] so that the toolstack side of the schema
//! (`schema::create_device` and friends) runs on it unchanged.
//!
//! Every message is a header of four native-endian `u32` — type, request
//! id, transaction id, payload length — and at most 4096 payload bytes.
//! Replies are read with that bound; anything malformed is an error, never
//! a panic.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use hyper_dmabuf_xenbus_proto::store::{Perm, PermKind};
use hyper_dmabuf_xenbus_proto::{Error, Store, Txn};

/// Where xenstored listens in a toolstack domain.
pub(crate) const SOCKET_PATH: &str = "/run/xenstored/socket";
/// The kernel's xenbus device, for domains without the socket.
pub(crate) const DEVICE_PATH: &str = "/dev/xen/xenbus";

/// Largest payload of a xenstore message.
const MAX_PAYLOAD: usize = 4096;

// Message types (xen/include/public/io/xs_wire.h).
const XS_DIRECTORY: u32 = 1;
const XS_READ: u32 = 2;
const XS_TRANSACTION_START: u32 = 6;
const XS_TRANSACTION_END: u32 = 7;
const XS_WRITE: u32 = 11;
const XS_MKDIR: u32 = 12;
const XS_RM: u32 = 13;
const XS_SET_PERMS: u32 = 14;
const XS_WATCH_EVENT: u32 = 15;
const XS_ERROR: u32 = 16;

/// A connection to xenstored.
pub(crate) struct XsClient<S = Transport> {
    stream: S,
    next_req: u32,
}

/// The byte stream to xenstored.
pub(crate) enum Transport {
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
    pub(crate) fn open() -> io::Result<Self> {
        let stream = match UnixStream::connect(SOCKET_PATH) {
            Ok(s) => Transport::Socket(s),
            Err(socket_err) => match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(DEVICE_PATH)
            {
                Ok(f) => Transport::Device(f),
                Err(_) => {
                    return Err(io::Error::new(
                        socket_err.kind(),
                        format!("cannot reach xenstored ({SOCKET_PATH}: {socket_err}; {DEVICE_PATH} absent): is this the toolstack domain, with xenstored running?"),
                    ))
                }
            },
        };
        Ok(XsClient::over(stream))
    }
}

/// A failed request: xenstored's errno name, or a transport problem.
#[derive(Debug)]
pub(crate) enum XsError {
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

fn bad(what: &str) -> XsError {
    XsError::Io(io::Error::new(io::ErrorKind::InvalidData, what.to_string()))
}

fn with_nul(path: &str) -> Vec<u8> {
    let mut v = path.as_bytes().to_vec();
    v.push(0);
    v
}

fn perm_text(p: &Perm) -> String {
    let letter = match p.kind {
        PermKind::None => 'n',
        PermKind::Read => 'r',
        PermKind::Write => 'w',
        PermKind::Both => 'b',
    };
    format!("{letter}{}", p.domid)
}

/// The errno number of an errno name xenstored sends.
fn errno_of(name: &str) -> i32 {
    match name {
        "EPERM" => 1,
        "ENOENT" => 2,
        "EIO" => 5,
        "EAGAIN" => 11,
        "ENOMEM" => 12,
        "EACCES" => 13,
        "EBUSY" => 16,
        "EEXIST" => 17,
        "EISDIR" => 21,
        "EINVAL" => 22,
        "ENOSPC" => 28,
        "EROFS" => 30,
        "E2BIG" => 7,
        "ENOSYS" => 38,
        "ENOTEMPTY" => 39,
        "EQUOTA" => 122,
        _ => 5,
    }
}

impl<S: Read + Write> XsClient<S> {
    /// A client over an open stream (tests pass a socket pair).
    pub(crate) fn over(stream: S) -> Self {
        XsClient {
            stream,
            next_req: 1,
        }
    }

    /// Sends one request and returns its reply's payload.
    pub(crate) fn request(
        &mut self,
        ty: u32,
        txn: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, XsError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(bad("request too long for xenstore"));
        }
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        let mut msg = Vec::with_capacity(16 + payload.len());
        for word in [ty, req_id, txn, payload.len() as u32] {
            msg.extend_from_slice(&word.to_ne_bytes());
        }
        msg.extend_from_slice(payload);
        self.stream.write_all(&msg)?;
        loop {
            let mut header = [0u8; 16];
            self.stream.read_exact(&mut header)?;
            let word = |i: usize| {
                u32::from_ne_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]])
            };
            let (rtype, rid, len) = (word(0), word(4), word(12) as usize);
            if len > MAX_PAYLOAD {
                return Err(bad("reply longer than xenstore's 4096-byte limit"));
            }
            let mut body = vec![0u8; len];
            self.stream.read_exact(&mut body)?;
            if rtype == XS_WATCH_EVENT {
                // We watch nothing; a stray event is skipped.
                continue;
            }
            if rid != req_id {
                return Err(bad("reply to another request"));
            }
            if rtype == XS_ERROR {
                let name = String::from_utf8_lossy(body.split(|b| *b == 0).next().unwrap_or(&[]))
                    .into_owned();
                return Err(XsError::Daemon(name));
            }
            if rtype != ty {
                return Err(bad("reply of another type"));
            }
            return Ok(body);
        }
    }

    /// The children of `path`.
    pub(crate) fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        let body = self.request(XS_DIRECTORY, 0, &with_nul(path))?;
        Ok(body
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }

    /// The value of `path`, `None` if absent.
    pub(crate) fn read_value(&mut self, path: &str) -> Result<Option<String>, XsError> {
        match self.request(XS_READ, 0, &with_nul(path)) {
            Ok(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            Err(XsError::Daemon(e)) if e == "ENOENT" => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn store_err(e: XsError) -> Error {
    match e {
        XsError::Daemon(name) => match name.as_str() {
            "EAGAIN" => Error::Again,
            "EACCES" | "EPERM" => Error::Denied,
            other => Error::Store(errno_of(other)),
        },
        XsError::Io(_) => Error::Store(5),
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
        let mut payload = with_nul(path);
        payload.extend_from_slice(value);
        self.request(XS_WRITE, txn.0, &payload)
            .map(drop)
            .map_err(store_err)
    }

    fn remove(&mut self, txn: Txn, path: &str) -> Result<(), Error> {
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
        let text =
            String::from_utf8_lossy(body.split(|b| *b == 0).next().unwrap_or(&[])).into_owned();
        text.parse::<u32>().map(Txn).map_err(|_| Error::Store(5))
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
pub(crate) fn perms_text(perms: &[Perm]) -> String {
    perms.iter().map(perm_text).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::thread;

    /// Serves `replies` (type, payload) in order, one per request read,
    /// echoing each request's id; returns the requests seen.
    fn serve(
        mut peer: UnixStream,
        replies: Vec<(u32, Vec<u8>, Option<u32>)>,
    ) -> thread::JoinHandle<Vec<(u32, Vec<u8>)>> {
        thread::spawn(move || {
            let mut seen = Vec::new();
            for (ty, body, len_override) in replies {
                let mut header = [0u8; 16];
                if peer.read_exact(&mut header).is_err() {
                    break;
                }
                let w = |i: usize| u32::from_ne_bytes(header[i..i + 4].try_into().unwrap());
                let mut req = vec![0u8; w(12) as usize];
                peer.read_exact(&mut req).unwrap();
                seen.push((w(0), req));
                let mut msg = Vec::new();
                let len = len_override.unwrap_or(body.len() as u32);
                for word in [ty, w(4), w(8), len] {
                    msg.extend_from_slice(&word.to_ne_bytes());
                }
                msg.extend_from_slice(&body);
                let _ = peer.write_all(&msg);
            }
            seen
        })
    }

    #[test]
    fn reads_writes_and_transactions_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = serve(
            b,
            vec![
                (XS_TRANSACTION_START, b"7\0".to_vec(), None),
                (XS_WRITE, b"OK\0".to_vec(), None),
                (XS_SET_PERMS, b"OK\0".to_vec(), None),
                (XS_TRANSACTION_END, b"OK\0".to_vec(), None),
                (XS_READ, b"4".to_vec(), None),
                (XS_ERROR, b"ENOENT\0".to_vec(), None),
            ],
        );
        let mut c = XsClient::over(a);
        let txn = c.transaction_start().unwrap();
        assert_eq!(txn, Txn(7));
        c.write(txn, "/a/state", b"1").unwrap();
        let perms = [
            Perm {
                domid: 5,
                kind: PermKind::None,
            },
            Perm {
                domid: 0,
                kind: PermKind::Read,
            },
        ];
        c.set_perms(txn, "/a", &perms).unwrap();
        c.transaction_end(txn, true).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(c.read(Txn::NONE, "/a/state", &mut buf).unwrap(), Some(1));
        assert_eq!(&buf[..1], b"4");
        assert_eq!(c.read(Txn::NONE, "/none", &mut buf).unwrap(), None);
        drop(c);
        let seen = server.join().unwrap();
        assert_eq!(seen[1], (XS_WRITE, b"/a/state\x001".to_vec()));
        assert_eq!(seen[2], (XS_SET_PERMS, b"/a\0n5\0r0\0".to_vec()));
        assert_eq!(seen[3], (XS_TRANSACTION_END, b"T\0".to_vec()));
    }

    #[test]
    fn conflicts_and_refusals_map_to_store_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = serve(
            b,
            vec![
                (XS_ERROR, b"EAGAIN\0".to_vec(), None),
                (XS_ERROR, b"EACCES\0".to_vec(), None),
            ],
        );
        let mut c = XsClient::over(a);
        assert_eq!(c.transaction_end(Txn(3), true), Err(Error::Again));
        assert_eq!(c.write(Txn::NONE, "/x", b"1"), Err(Error::Denied));
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn hostile_replies_are_errors_not_panics() {
        // A length beyond the protocol's limit.
        let (a, b) = UnixStream::pair().unwrap();
        let server = serve(b, vec![(XS_READ, Vec::new(), Some(1 << 20))]);
        let mut c = XsClient::over(a);
        assert!(c.read_value("/x").is_err());
        drop(c);
        server.join().unwrap();
        // A reply of the wrong type, then a truncated one (the server
        // hangs up in the middle of the payload).
        let (a, b) = UnixStream::pair().unwrap();
        let server = serve(
            b,
            vec![
                (XS_WRITE, b"OK\0".to_vec(), None),
                (XS_READ, b"ab".to_vec(), Some(10)),
            ],
        );
        let mut c = XsClient::over(a);
        assert!(c.read_value("/x").is_err());
        assert!(c.read_value("/x").is_err());
        server.join().unwrap();
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
        ];
        assert_eq!(perms_text(&perms), "n0,r5");
    }
}
