// SPDX-License-Identifier: MIT
//! `hdmabuf xl ...`: the toolstack's part for `hyper_dmabuf` devices,
//! which xl itself does not know. It creates and removes the two device
//! directories with libxl's layout and permissions (`schema::create_device`
//! in `xenbus-proto`, one transaction) and lists devices with their
//! states. Runs in the domain with xenstored (dom0).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use hyper_dmabuf_xenbus_proto::parse;
use hyper_dmabuf_xenbus_proto::schema::{self, DeviceSpec};
use hyper_dmabuf_xenbus_proto::store::{NodePath, Perm, PermKind};
use hyper_dmabuf_xenbus_proto::{Error, Store, Txn, XenbusState};
use serde_json::{json, Value};

use crate::xlcfg::Entry;
use crate::xldaemon;
use crate::xsclient::{perms_text, XsClient, XsError};

/// How often `detach` looks at the two `state` nodes while it waits.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// One line of output: the text for people and the object `--json`
/// prints instead.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line {
    /// The text.
    pub(crate) text: String,
    /// The JSON object.
    pub(crate) json: Value,
}

/// The two directories of a device.
fn dirs(spec: &DeviceSpec) -> Result<(NodePath, NodePath), String> {
    let fdir = NodePath::frontend_dir(spec.front, spec.devid).map_err(|e| e.to_string())?;
    let bdir =
        NodePath::backend_dir(spec.back, spec.front, spec.devid).map_err(|e| e.to_string())?;
    Ok((fdir, bdir))
}

/// The message of a failed schema operation: the error, and for a store
/// error the request xenstored refused, with its path (the [`Error`]
/// itself carries only an errno).
fn failure<S: Read + Write>(xs: &XsClient<S>, doing: &str, e: Error) -> String {
    let detail = xs.last_failure().unwrap_or("no detail");
    match e {
        Error::Denied => {
            format!("{doing}: xenstore refused {detail} (run this as root in the toolstack domain)")
        }
        Error::Again | Error::RetriesExhausted | Error::Store(_) => {
            format!("{doing}: {e} ({detail})")
        }
        e => format!("{doing}: {e}"),
    }
}

/// The message of a failed direct request on `path`.
fn xs_failure(doing: &str, path: &str, e: &XsError) -> String {
    format!("{doing} {path}: {e}")
}

/// Creates a device, or with `dry_run` returns the nodes it would write,
/// one line each: `PATH = "VALUE" (PERMS)`.
pub(crate) fn attach(spec: &DeviceSpec, dry_run: bool) -> Result<Vec<Line>, String> {
    let what = format!(
        "device {} of domain {} (backend domain {})",
        spec.devid, spec.front, spec.back
    );
    if dry_run {
        let mut rec = Recorder::default();
        schema::create_device(&mut rec, spec).map_err(|e| format!("{what}: {e}"))?;
        return Ok(rec.lines());
    }
    let mut xs = XsClient::open().map_err(|e| e.to_string())?;
    attach_on(&mut xs, spec, &what)
}

/// [`attach`] over an open client; `what` names the device in messages.
pub(crate) fn attach_on<S: Read + Write>(
    xs: &mut XsClient<S>,
    spec: &DeviceSpec,
    what: &str,
) -> Result<Vec<Line>, String> {
    let (fdir, bdir) = dirs(spec)?;
    schema::create_device(xs, spec).map_err(|e| match e {
        // libxl refuses an existing device too: rewriting `state` = 1
        // under a live one would break its connection.
        Error::Exists => format!("{what} exists already ({fdir}); `hdmabuf xl detach` it first"),
        e => failure(xs, &format!("creating {what}"), e),
    })?;
    Ok(vec![Line {
        text: format!("attached {what}: {fdir}"),
        json: json!({
            "attached": fdir.as_str(),
            "backend": bdir.as_str(),
            "domain": spec.front,
            "backend_id": spec.back,
            "devid": spec.devid,
        }),
    }])
}

/// Removes both directories of a device at once, without asking the
/// drivers to close first: for the devices of a domain that never ran,
/// when `hdmabuf xl create` gives up (libxl leaves the nodes of a kind it
/// does not know behind when the domain is destroyed).
pub(crate) fn remove(spec: &DeviceSpec) -> Result<(), String> {
    let mut xs = XsClient::open().map_err(|e| e.to_string())?;
    schema::remove_device_dirs(&mut xs, spec).map_err(|e| {
        failure(
            &xs,
            &format!("removing device {} of domain {}", spec.devid, spec.front),
            e,
        )
    })
}

/// Adds `entry` (the device `spec` was made from) to the record of its
/// frontend domain, creating the record if `create` (see
/// [`crate::xldaemon`]: the daemon gives a recorded domain its devices
/// again when it reboots).
pub(crate) fn record(spec: &DeviceSpec, entry: &Entry, create: bool) -> Result<(), String> {
    let mut xs = XsClient::open().map_err(|e| e.to_string())?;
    let name_path = format!("/local/domain/{}/name", spec.front);
    let name = xs
        .read_value(&name_path)
        .map_err(|e| xs_failure("reading", &name_path, &e))?
        .unwrap_or_else(|| spec.front.to_string());
    xldaemon::record_device(&mut xs, spec.front, &name, entry, create)
}

/// Records domain `domid` (named `name`) for the daemon before any device
/// (`crate::xldaemon::record_domain`).
pub(crate) fn record_domain(domid: u16, name: &str) -> Result<(), String> {
    let mut xs = XsClient::open().map_err(|e| e.to_string())?;
    xldaemon::record_domain(&mut xs, domid, name)
}

/// Marks domain `name` as being created by this process (or, with
/// `creating` false, removes the mark), so that the daemon does not adopt
/// it from a configuration file meanwhile ([`crate::xldaemon`]).
pub(crate) fn mark_creating(name: &str, creating: bool) -> Result<(), String> {
    let mut xs = XsClient::open().map_err(|e| e.to_string())?;
    if creating {
        xldaemon::mark_creating(&mut xs, name)
    } else {
        xldaemon::unmark_creating(&mut xs)
    }
}

/// Drops every record and mark of the daemon (`hdmabuf xl forget --all`).
pub(crate) fn forget_all() -> Result<Vec<Line>, String> {
    let mut xs = XsClient::open().map_err(|e| e.to_string())?;
    xs.remove(Txn::NONE, xldaemon::RECORDS)
        .map_err(|e| format!("removing {}: {e}", xldaemon::RECORDS))?;
    Ok(vec![Line {
        text: format!("removed {}", xldaemon::RECORDS),
        json: json!({ "removed": xldaemon::RECORDS }),
    }])
}

/// Drops the device of `spec` from its domain's record, if any.
pub(crate) fn forget(spec: &DeviceSpec) -> Result<(), String> {
    let mut xs = XsClient::open().map_err(|e| e.to_string())?;
    xldaemon::forget_device(&mut xs, spec.front, spec.devid)
}

/// What one end's `state` node says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndState {
    /// No `state` node (the end was never created, or is gone).
    Absent,
    /// A valid state.
    State(XenbusState),
    /// A value that is not a state (`"0"`, `"x"`, ...).
    Invalid,
}

impl EndState {
    /// As `list` prints it.
    fn name(self) -> &'static str {
        match self {
            EndState::Absent => "absent",
            EndState::State(s) => s.name(),
            EndState::Invalid => "invalid",
        }
    }

    /// As `list --json` prints it: absent is `null`.
    fn json(self) -> Value {
        match self {
            EndState::Absent => Value::Null,
            s => Value::from(s.name()),
        }
    }

    /// Whether this end holds nothing any more, so that its nodes may go.
    fn is_done(self) -> bool {
        matches!(
            self,
            EndState::Absent | EndState::State(XenbusState::Closed)
        )
    }
}

/// Reads the `state` node of `dir`, with the schema's strict parser (the
/// one the drivers use). A store failure is an error naming the node.
fn end_state<S: Read + Write>(xs: &mut XsClient<S>, dir: &str) -> Result<EndState, String> {
    match schema::read_state(xs, dir) {
        // read_state reports an absent node as Unknown; "0" is refused as
        // malformed, so Unknown means absent.
        Ok(XenbusState::Unknown) => Ok(EndState::Absent),
        Ok(s) => Ok(EndState::State(s)),
        Err(Error::Value { .. }) => Ok(EndState::Invalid),
        Err(e) => Err(failure(xs, &format!("reading {dir}/state"), e)),
    }
}

/// Removes a device, as libxl does: backend `online` = 0 and `state` =
/// Closing, a bounded wait until each end is Closed or gone, then both
/// directories. At the timeout it warns and removes them anyway (the
/// drivers then see their directory vanish), so that a dead guest cannot
/// block the removal.
pub(crate) fn detach(spec: &DeviceSpec, timeout: Duration) -> Result<Vec<Line>, String> {
    let mut xs = XsClient::open().map_err(|e| e.to_string())?;
    detach_on(&mut xs, spec, timeout)
}

/// [`detach`] over an open client.
fn detach_on<S: Read + Write>(
    xs: &mut XsClient<S>,
    spec: &DeviceSpec,
    timeout: Duration,
) -> Result<Vec<Line>, String> {
    let (fdir, bdir) = dirs(spec)?;
    let (fdir, bdir) = (fdir.as_str(), bdir.as_str());
    let mut front = end_state(xs, fdir)?;
    let mut back = end_state(xs, bdir)?;
    if front == EndState::Absent && back == EndState::Absent {
        return Err(format!(
            "no hyper_dmabuf device {} of domain {} with backend domain {}: \
             neither {fdir}/state nor {bdir}/state exists",
            spec.devid, spec.front, spec.back
        ));
    }
    let mut out = Vec::new();
    // Writing `online`/`state` into a backend directory that is gone would
    // create it again; with no backend there is no one to ask to close.
    if back != EndState::Absent {
        schema::begin_remove_device(xs, spec)
            .map_err(|e| failure(xs, &format!("closing {bdir}"), e))?;
    }
    let deadline = Instant::now() + timeout;
    loop {
        if front.is_done() && back.is_done() {
            break;
        }
        if Instant::now() >= deadline {
            let text = format!(
                "warning: the device did not close within {} s (frontend {}, backend {}); \
                 removing it anyway",
                timeout.as_secs(),
                front.name(),
                back.name(),
            );
            out.push(Line {
                json: json!({ "warning": text }),
                text,
            });
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
        front = end_state(xs, fdir)?;
        back = end_state(xs, bdir)?;
    }
    schema::remove_device_dirs(xs, spec)
        .map_err(|e| failure(xs, &format!("removing {fdir} and {bdir}"), e))?;
    out.push(Line {
        text: format!(
            "detached device {} of domain {} (backend domain {})",
            spec.devid, spec.front, spec.back
        ),
        json: json!({
            "detached": fdir,
            "backend": bdir,
            "domain": spec.front,
            "backend_id": spec.back,
            "devid": spec.devid,
        }),
    });
    Ok(out)
}

/// One device as `list` shows it.
pub(crate) struct DeviceInfo {
    domid: u16,
    devid: u32,
    /// `backend-id`, if present and valid.
    backend_id: Option<u16>,
    front_state: EndState,
    back_state: EndState,
}

/// The children of `path` that are numbers, in increasing order; an
/// absent `path` has none.
fn numbered_children<S: Read + Write, T: std::str::FromStr + Ord>(
    xs: &mut XsClient<S>,
    path: &str,
) -> Result<Vec<T>, String> {
    let mut out: Vec<T> = match xs.directory(path) {
        Ok(names) => names.iter().filter_map(|n| n.parse().ok()).collect(),
        Err(XsError::Daemon(e)) if e == "ENOENT" => Vec::new(),
        Err(e) => return Err(xs_failure("listing", path, &e)),
    };
    out.sort();
    Ok(out)
}

/// The devices of `domid`, or of every domain.
pub(crate) fn list(domid: Option<u16>) -> Result<Vec<DeviceInfo>, String> {
    let mut xs = XsClient::open().map_err(|e| e.to_string())?;
    list_on(&mut xs, domid)
}

/// [`list`] over an open client.
fn list_on<S: Read + Write>(
    xs: &mut XsClient<S>,
    domid: Option<u16>,
) -> Result<Vec<DeviceInfo>, String> {
    let domains: Vec<u16> = match domid {
        Some(d) => vec![d],
        None => numbered_children(xs, "/local/domain")?,
    };
    let mut out = Vec::new();
    for d in domains {
        let base = format!("/local/domain/{d}/device/{}", schema::DEVICE_TYPE);
        for devid in numbered_children::<_, u32>(xs, &base)? {
            let fdir = NodePath::frontend_dir(d, devid).map_err(|e| e.to_string())?;
            let id_path = format!("{fdir}/{}", schema::NODE_BACKEND_ID);
            let backend_id = match xs.read_value(&id_path) {
                Ok(v) => v.and_then(|v| parse::parse_domid(v.as_bytes()).ok()),
                Err(e) => return Err(xs_failure("reading", &id_path, &e)),
            };
            let front_state = end_state(xs, fdir.as_str())?;
            // The backend directory is derived from `backend-id`, not read
            // from the frontend's `backend` node: the guest owns its
            // directory and could point that node anywhere in dom0's tree.
            let back_state = match backend_id {
                Some(b) => {
                    let bdir = NodePath::backend_dir(b, d, devid).map_err(|e| e.to_string())?;
                    end_state(xs, bdir.as_str())?
                }
                None => EndState::Absent,
            };
            out.push(DeviceInfo {
                domid: d,
                devid,
                backend_id,
                front_state,
                back_state,
            });
        }
    }
    // Backend directories without their frontend: what a destroyed guest
    // leaves behind when nothing (`hdmabuf xl daemon`) removes it.
    for b in numbered_children::<_, u16>(xs, "/local/domain")? {
        let base = format!("/local/domain/{b}/backend/{}", schema::DEVICE_TYPE);
        for front in numbered_children::<_, u16>(xs, &base)? {
            if domid.is_some_and(|d| d != front) {
                continue;
            }
            for devid in numbered_children::<_, u32>(xs, &format!("{base}/{front}"))? {
                if out
                    .iter()
                    .any(|i| (i.domid, i.devid, i.backend_id) == (front, devid, Some(b)))
                {
                    continue;
                }
                let bdir = NodePath::backend_dir(b, front, devid).map_err(|e| e.to_string())?;
                out.push(DeviceInfo {
                    domid: front,
                    devid,
                    backend_id: Some(b),
                    front_state: EndState::Absent,
                    back_state: end_state(xs, bdir.as_str())?,
                });
            }
        }
    }
    Ok(out)
}

/// The header of `list`'s text output.
pub(crate) const LIST_HEADER: &str = "domain  devid  backend  frontend      backend-state";

impl DeviceInfo {
    /// One line of `list`, under [`LIST_HEADER`].
    pub(crate) fn line(&self) -> String {
        let backend = self
            .backend_id
            .map_or_else(|| "?".to_string(), |b| b.to_string());
        format!(
            "{:>6}  {:>5}  {backend:>7}  {:<12}  {}",
            self.domid,
            self.devid,
            self.front_state.name(),
            self.back_state.name(),
        )
    }

    /// As JSON.
    pub(crate) fn json(&self) -> Value {
        json!({
            "domain": self.domid,
            "devid": self.devid,
            "backend_id": self.backend_id,
            "frontend_state": self.front_state.json(),
            "backend_state": self.back_state.json(),
        })
    }
}

/// A store that records what would be written, for `--dry-run`: nodes in
/// creation order, each with its value and permissions (a new node takes
/// its parent's, as in xenstored).
#[derive(Default)]
struct Recorder {
    order: Vec<String>,
    nodes: BTreeMap<String, (Vec<u8>, Vec<Perm>)>,
}

impl Recorder {
    /// The permissions a new node at `path` gets: its nearest recorded
    /// ancestor's, else dom0-only (what xenstored gives under dom0's
    /// nodes; the real parent's are not known without asking it).
    fn parent_perms(&self, path: &str) -> Vec<Perm> {
        let mut p = path;
        while let Some(i) = p.rfind('/') {
            p = &p[..i];
            if let Some((_, perms)) = self.nodes.get(p) {
                return perms.clone();
            }
        }
        vec![Perm {
            domid: 0,
            kind: PermKind::None,
        }]
    }

    /// Creates `path` if it is new.
    fn touch(&mut self, path: &str) {
        if !self.nodes.contains_key(path) {
            let perms = self.parent_perms(path);
            self.nodes.insert(path.to_string(), (Vec::new(), perms));
            self.order.push(path.to_string());
        }
    }

    /// The recorded nodes, in creation order.
    fn lines(&self) -> Vec<Line> {
        self.order
            .iter()
            .filter_map(|p| {
                let (value, perms) = self.nodes.get(p)?;
                let value = String::from_utf8_lossy(value);
                let perms = perms_text(perms);
                Some(Line {
                    text: format!("{p} = \"{value}\" ({perms})"),
                    json: json!({ "path": p, "value": value, "perms": perms }),
                })
            })
            .collect()
    }
}

impl Store for Recorder {
    fn read(&mut self, _txn: Txn, path: &str, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        let Some((value, _)) = self.nodes.get(path) else {
            return Ok(None);
        };
        let dst = buf.get_mut(..value.len()).ok_or(Error::ValueTooLong)?;
        dst.copy_from_slice(value);
        Ok(Some(value.len()))
    }
    fn write(&mut self, _txn: Txn, path: &str, value: &[u8]) -> Result<(), Error> {
        self.touch(path);
        if let Some(node) = self.nodes.get_mut(path) {
            node.0 = value.to_vec();
        }
        Ok(())
    }
    fn remove(&mut self, _txn: Txn, path: &str) -> Result<(), Error> {
        let below = format!("{path}/");
        self.nodes
            .retain(|p, _| p != path && !p.starts_with(&below));
        self.order.retain(|p| p != path && !p.starts_with(&below));
        Ok(())
    }
    fn transaction_start(&mut self) -> Result<Txn, Error> {
        Ok(Txn(1))
    }
    fn transaction_end(&mut self, _txn: Txn, _commit: bool) -> Result<(), Error> {
        Ok(())
    }
    fn mkdir(&mut self, _txn: Txn, path: &str) -> Result<(), Error> {
        self.touch(path);
        Ok(())
    }
    fn set_perms(&mut self, _txn: Txn, path: &str, perms: &[Perm]) -> Result<(), Error> {
        self.touch(path);
        if let Some(node) = self.nodes.get_mut(path) {
            node.1 = perms.to_vec();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn spec(front: u16, back: u16, devid: u32) -> DeviceSpec {
        DeviceSpec {
            front,
            back,
            devid,
            max_ring_page_order: None,
            max_buffer_size: None,
            feature_rw: Some(true),
        }
    }

    #[test]
    fn dry_run_shows_libxl_layout_and_permissions() {
        let lines = attach(&spec(5, 0, 0), true).unwrap();
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        let expect = [
            "/local/domain/5/device/hyper_dmabuf/0 = \"\" (n5,r0)",
            "/local/domain/0/backend/hyper_dmabuf/5/0 = \"\" (n0,r5)",
            "/local/domain/5/device/hyper_dmabuf/0/backend = \"/local/domain/0/backend/hyper_dmabuf/5/0\" (n5,r0)",
            "/local/domain/5/device/hyper_dmabuf/0/backend-id = \"0\" (n5,r0)",
            "/local/domain/5/device/hyper_dmabuf/0/state = \"1\" (n5,r0)",
            "/local/domain/0/backend/hyper_dmabuf/5/0/frontend = \"/local/domain/5/device/hyper_dmabuf/0\" (n0,r5)",
            "/local/domain/0/backend/hyper_dmabuf/5/0/frontend-id = \"5\" (n0,r5)",
            "/local/domain/0/backend/hyper_dmabuf/5/0/online = \"1\" (n0,r5)",
            "/local/domain/0/backend/hyper_dmabuf/5/0/state = \"1\" (n0,r5)",
            "/local/domain/0/backend/hyper_dmabuf/5/0/feature-rw = \"1\" (n0,r5)",
        ];
        assert_eq!(texts, expect);
        assert_eq!(
            lines[3].json,
            json!({
                "path": "/local/domain/5/device/hyper_dmabuf/0/backend-id",
                "value": "0",
                "perms": "n5,r0",
            })
        );
    }

    #[test]
    fn dry_run_refuses_what_create_device_refuses() {
        let mut s = spec(5, 0, 0);
        s.max_ring_page_order = Some(5);
        assert!(attach(&s, true).is_err());
        assert!(attach(&spec(0x7ff0, 0, 0), true).is_err());
    }

    /// A scripted xenstored over a socket pair: each request must carry
    /// the next expected payload (a path alone gets its NUL added), and
    /// gets the scripted reply, or `ENOENT` for `None`.
    fn scripted(answers: Vec<(&'static str, Option<&'static [u8]>)>) -> XsClient<UnixStream> {
        let (a, mut b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut answers = answers.into_iter();
            loop {
                let mut header = [0u8; 16];
                if b.read_exact(&mut header).is_err() {
                    return;
                }
                let w = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
                let mut req = vec![0u8; w(12) as usize];
                b.read_exact(&mut req).unwrap();
                let (path, answer) = answers.next().expect("an unexpected request");
                let expect = if path.contains('\0') {
                    path.to_string()
                } else {
                    format!("{path}\0")
                };
                assert_eq!(String::from_utf8_lossy(&req), expect);
                let (ty, body) = match answer {
                    Some(v) => (w(0), v.to_vec()),
                    None => (16, b"ENOENT\0".to_vec()),
                };
                let mut msg = Vec::new();
                for word in [ty, w(4), w(8), body.len() as u32] {
                    msg.extend_from_slice(&word.to_le_bytes());
                }
                msg.extend_from_slice(&body);
                b.write_all(&msg).unwrap();
            }
        });
        XsClient::over(a)
    }

    #[test]
    fn list_reads_both_states_through_backend_id() {
        let mut xs = scripted(vec![
            ("/local/domain", Some(b"0\0junk\x005\0")),
            ("/local/domain/0/device/hyper_dmabuf", None),
            ("/local/domain/5/device/hyper_dmabuf", Some(b"1\x000\0")),
            (
                "/local/domain/5/device/hyper_dmabuf/0/backend-id",
                Some(b"0"),
            ),
            ("/local/domain/5/device/hyper_dmabuf/0/state", Some(b"4")),
            ("/local/domain/0/backend/hyper_dmabuf/5/0/state", Some(b"4")),
            (
                "/local/domain/5/device/hyper_dmabuf/1/backend-id",
                Some(b"x"),
            ),
            ("/local/domain/5/device/hyper_dmabuf/1/state", Some(b"0")),
            // Then the backend directories: one of a guest that is gone.
            ("/local/domain", Some(b"0\0junk\x005\0")),
            ("/local/domain/0/backend/hyper_dmabuf", Some(b"5\x007\0")),
            ("/local/domain/0/backend/hyper_dmabuf/5", Some(b"0\0")),
            ("/local/domain/0/backend/hyper_dmabuf/7", Some(b"2\0")),
            ("/local/domain/0/backend/hyper_dmabuf/7/2/state", Some(b"6")),
            ("/local/domain/5/backend/hyper_dmabuf", None),
        ]);
        let devices = list_on(&mut xs, None).unwrap();
        let lines: Vec<String> = devices.iter().map(DeviceInfo::line).collect();
        assert_eq!(
            lines,
            [
                "     5      0        0  Connected     Connected",
                "     5      1        ?  invalid       absent",
                "     7      2        0  absent        Closed",
            ]
        );
        assert_eq!(
            devices[0].json(),
            json!({
                "domain": 5, "devid": 0, "backend_id": 0,
                "frontend_state": "Connected", "backend_state": "Connected",
            })
        );
        assert_eq!(devices[1].json()["backend_state"], Value::Null);
    }

    #[test]
    fn list_names_the_path_it_could_not_read() {
        let (a, mut b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut req = [0u8; 16 + 14];
            b.read_exact(&mut req).unwrap();
            let mut msg = Vec::new();
            for word in [16u32, 1, 0, 7] {
                msg.extend_from_slice(&word.to_le_bytes());
            }
            msg.extend_from_slice(b"EACCES\0");
            b.write_all(&msg).unwrap();
        });
        let mut xs = XsClient::over(a);
        let e = list_on(&mut xs, None).err().unwrap();
        assert_eq!(e, "listing /local/domain: xenstored says EACCES");
    }

    const F: &str = "/local/domain/5/device/hyper_dmabuf/0";
    const B: &str = "/local/domain/0/backend/hyper_dmabuf/5/0";

    #[test]
    fn detach_waits_for_both_ends_to_close() {
        let mut xs = scripted(vec![
            ("/local/domain/5/device/hyper_dmabuf/0/state", Some(b"4")),
            ("/local/domain/0/backend/hyper_dmabuf/5/0/state", Some(b"4")),
            // begin_remove_device, in a transaction.
            ("\0", Some(b"9\0")),
            ("/local/domain/0/backend/hyper_dmabuf/5/0/state", Some(b"4")),
            (
                "/local/domain/0/backend/hyper_dmabuf/5/0/online\x000",
                Some(b"OK\0"),
            ),
            (
                "/local/domain/0/backend/hyper_dmabuf/5/0/state\x005",
                Some(b"OK\0"),
            ),
            ("T\0", Some(b"OK\0")),
            // The frontend closes first: not enough, the backend may still
            // hold mappings.
            ("/local/domain/5/device/hyper_dmabuf/0/state", Some(b"6")),
            ("/local/domain/0/backend/hyper_dmabuf/5/0/state", Some(b"5")),
            ("/local/domain/5/device/hyper_dmabuf/0/state", Some(b"6")),
            ("/local/domain/0/backend/hyper_dmabuf/5/0/state", Some(b"6")),
            // remove_device_dirs, in a transaction.
            ("\0", Some(b"10\0")),
            ("/local/domain/5/device/hyper_dmabuf/0", Some(b"OK\0")),
            ("/local/domain/0/backend/hyper_dmabuf/5/0", Some(b"OK\0")),
            ("T\0", Some(b"OK\0")),
        ]);
        let lines = detach_on(&mut xs, &spec(5, 0, 0), Duration::from_secs(10)).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(
            lines[0].text,
            "detached device 0 of domain 5 (backend domain 0)"
        );
        assert_eq!(lines[0].json["detached"], F);
    }

    #[test]
    fn detach_warns_at_the_timeout_and_removes_anyway() {
        let mut xs = scripted(vec![
            ("/local/domain/5/device/hyper_dmabuf/0/state", Some(b"4")),
            ("/local/domain/0/backend/hyper_dmabuf/5/0/state", None),
            // No backend: nothing is written to ask it to close (that
            // would create its directory again).
            ("\0", Some(b"9\0")),
            ("/local/domain/5/device/hyper_dmabuf/0", Some(b"OK\0")),
            ("/local/domain/0/backend/hyper_dmabuf/5/0", None),
            ("T\0", Some(b"OK\0")),
        ]);
        let lines = detach_on(&mut xs, &spec(5, 0, 0), Duration::ZERO).unwrap();
        assert_eq!(
            lines[0].text,
            "warning: the device did not close within 0 s (frontend Connected, backend absent); \
             removing it anyway"
        );
        assert_eq!(lines.len(), 2);
    }

    #[test]
    fn detach_of_nothing_names_the_paths() {
        let mut xs = scripted(vec![
            ("/local/domain/5/device/hyper_dmabuf/0/state", None),
            ("/local/domain/0/backend/hyper_dmabuf/5/0/state", None),
        ]);
        let e = detach_on(&mut xs, &spec(5, 0, 0), Duration::ZERO)
            .err()
            .unwrap();
        assert!(
            e.contains(&format!("{F}/state")) && e.contains(&format!("{B}/state")),
            "{e}"
        );
    }

    #[test]
    fn attach_refuses_an_existing_device() {
        let mut xs = scripted(vec![
            ("\0", Some(b"3\0")),
            ("/local/domain/5/device/hyper_dmabuf/0", Some(b"")),
            ("F\0", Some(b"OK\0")),
        ]);
        let e = attach_on(&mut xs, &spec(5, 0, 0), "device 0")
            .err()
            .unwrap();
        assert_eq!(
            e,
            format!("device 0 exists already ({F}); `hdmabuf xl detach` it first")
        );
    }

    #[test]
    fn attach_names_the_node_xenstored_refused() {
        let mut xs = scripted(vec![
            ("\0", Some(b"3\0")),
            ("/local/domain/5/device/hyper_dmabuf/0", None),
            ("/local/domain/0/backend/hyper_dmabuf/5/0", None),
            ("/local/domain/5/device/hyper_dmabuf/0", Some(b"OK\0")),
            ("/local/domain/5/device/hyper_dmabuf/0\0n5\0r0\0", None),
            ("F\0", Some(b"OK\0")),
        ]);
        let e = attach_on(&mut xs, &spec(5, 0, 0), "device 0")
            .err()
            .unwrap();
        assert_eq!(
            e,
            format!("creating device 0: xenstore error 2 (set perms {F}: ENOENT)")
        );
    }
}
