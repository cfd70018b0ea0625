// SPDX-License-Identifier: MIT
//! `hdmabuf xl daemon`: the part of a toolstack that follows domains
//! through their lives.
//!
//! libxl removes the devices it knows when a domain dies, and recreates
//! them when xl restarts a rebooting domain under a new domid. It knows
//! nothing of `hyper_dmabuf`, so without this daemon a destroyed guest
//! leaves its backend directory behind in the backend domain (and a
//! driver domain that dies leaves its guests' frontend directories), and
//! a guest that reboots comes back without its devices.
//!
//! `hdmabuf xl create` keeps a *record* of the domain's devices in
//! xenstore, keyed by the domain's UUID (which xl keeps across a reboot,
//! while the domid changes):
//!
//! ```text
//! /tool/hyper_dmabuf/<uuid>/name = "guest1"
//! /tool/hyper_dmabuf/<uuid>/device/<devid> = "backend=dd1, devid=4, rw=1"
//! ```
//!
//! `xl attach` and `xl detach` keep the record of a recorded domain up to
//! date. The daemon watches `@introduceDomain` and `@releaseDomain` and,
//! at each event (and every [`TICK`], in case an event came while it was
//! busy), compares what xenstore holds with what should be, and
//! reconciles: [`plan`] decides from a [`Snapshot`], [`apply`] acts.
//!
//! A domain started without this tool, by plain `xl create` or by
//! `xendomains` at boot, is adopted from its configuration file when one
//! in `/etc/xen/auto` or `/etc/xen` names it (`crate::xladopt`). While
//! `hdmabuf xl create` creates a domain, a *marker*
//! `/tool/hyper_dmabuf/creating/<pid>` = its name keeps the daemon from
//! adopting it at the same time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hyper_dmabuf_xenbus_proto::parse;
use hyper_dmabuf_xenbus_proto::schema::{self, DeviceSpec};
use hyper_dmabuf_xenbus_proto::store::NodePath;
use hyper_dmabuf_xenbus_proto::{Store, Txn};
use serde_json::{json, Value};

use crate::toolstack::{self, Line};
use crate::xladopt::{self, Candidate};
use crate::xlcfg::{Domain, Entry};
use crate::xsclient::{XsClient, XsError};

/// Where the records live (dom0-only, like everything under `/tool`).
pub(crate) const RECORDS: &str = "/tool/hyper_dmabuf";

/// The markers of domains `hdmabuf xl create` is creating, by its pid.
pub(crate) const CREATING: &str = "/tool/hyper_dmabuf/creating";

/// How often the daemon reconciles without an event.
const TICK: Duration = Duration::from_secs(5);

/// How long a record outlives its domain. xl destroys a rebooting domain
/// before it creates the new one, so for a moment no domain has the UUID;
/// a record is dropped only once its domain has been gone this long.
const RECORD_GRACE: Duration = Duration::from_secs(60);

/// A pause before reconnecting after xenstored failed us.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// A running domain, as xenstore describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Running {
    pub(crate) domid: u16,
    /// `/local/domain/<domid>/name`, if present.
    pub(crate) name: Option<String>,
    /// The UUID of `/local/domain/<domid>/vm` (`/vm/<uuid>`), if present.
    pub(crate) uuid: Option<String>,
}

/// The devices a domain created through this tool should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) uuid: String,
    pub(crate) name: String,
    /// Each device's entry, by devid.
    pub(crate) devices: BTreeMap<u32, Entry>,
}

/// A frontend directory: `/local/domain/<front>/device/hyper_dmabuf/<devid>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frontend {
    pub(crate) front: u16,
    pub(crate) devid: u32,
    /// Its `backend-id`, if it parses (the guest owns the node).
    pub(crate) backend_id: Option<u16>,
}

/// What the daemon reads of xenstore before deciding anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) running: Vec<Running>,
    /// Every `/local/domain/<back>/backend/hyper_dmabuf/<front>`, as
    /// `(back, front)`.
    pub(crate) backends: Vec<(u16, u16)>,
    pub(crate) frontends: Vec<Frontend>,
    pub(crate) records: Vec<Record>,
    /// Configuration files a domain may be adopted from.
    pub(crate) candidates: Vec<Candidate>,
    /// The names of the domains `hdmabuf xl create` is creating.
    pub(crate) creating: BTreeSet<String>,
    /// Markers whose `hdmabuf xl create` is gone (killed mid-way), by pid.
    pub(crate) stale_markers: Vec<u32>,
}

/// One step of a reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Remove `/local/domain/<back>/backend/hyper_dmabuf/<front>`: the
    /// frontend domain is gone.
    RemoveBackends { back: u16, front: u16 },
    /// Remove a frontend directory: its backend domain is gone.
    RemoveFrontend { front: u16, devid: u32, back: u16 },
    /// Create a recorded device that is missing.
    Attach { name: String, spec: DeviceSpec },
    /// Drop the record of a domain gone for longer than [`RECORD_GRACE`].
    Forget { uuid: String, name: String },
    /// Record a domain started without this tool with the devices of the
    /// one configuration file that names it; `Attach` actions follow.
    Adopt {
        uuid: String,
        name: String,
        path: PathBuf,
        devices: BTreeMap<u32, Entry>,
    },
    /// More than one file names an unrecorded domain: none is chosen.
    Ambiguous { name: String, paths: Vec<PathBuf> },
    /// Remove the marker of an `hdmabuf xl create` that died.
    DropMarker { pid: u32 },
}

/// When each recorded domain was first seen gone (the daemon's memory
/// between reconciliations).
#[derive(Debug, Default)]
pub(crate) struct Retention {
    gone_since: HashMap<String, Instant>,
    /// Domains reported as ambiguous, so that each is reported once.
    ambiguous: BTreeSet<String>,
}

/// Decides what to do about `snap`.
pub(crate) fn plan(snap: &Snapshot, retention: &mut Retention, now: Instant) -> Vec<Action> {
    let live: BTreeSet<u16> = snap.running.iter().map(|d| d.domid).collect();
    let mut actions = Vec::new();
    for &(back, front) in &snap.backends {
        if live.contains(&back) && !live.contains(&front) {
            actions.push(Action::RemoveBackends { back, front });
        }
    }
    // A frontend whose backend-id does not parse is left alone: its
    // owner may be writing it, and it names no domain we could check.
    let mut present: BTreeSet<(u16, u32)> = BTreeSet::new();
    for f in &snap.frontends {
        match f.backend_id {
            Some(back) if !live.contains(&back) => actions.push(Action::RemoveFrontend {
                front: f.front,
                devid: f.devid,
                back,
            }),
            _ => {
                present.insert((f.front, f.devid));
            }
        }
    }
    let adopted = adoptions(snap, retention, &mut actions);
    for record in snap.records.iter().chain(&adopted) {
        let Some(domain) = snap
            .running
            .iter()
            .find(|d| d.uuid.as_deref() == Some(record.uuid.as_str()))
        else {
            let since = *retention
                .gone_since
                .entry(record.uuid.clone())
                .or_insert(now);
            if now.duration_since(since) >= RECORD_GRACE {
                retention.gone_since.remove(&record.uuid);
                actions.push(Action::Forget {
                    uuid: record.uuid.clone(),
                    name: record.name.clone(),
                });
            }
            continue;
        };
        retention.gone_since.remove(&record.uuid);
        for (&devid, entry) in &record.devices {
            if present.contains(&(domain.domid, devid)) {
                continue;
            }
            // A backend that is not running (yet): its introduction is an
            // event, and the device is created then.
            let back = match &entry.backend {
                Domain::Id(b) => live.contains(b).then_some(*b),
                Domain::Name(n) => snap
                    .running
                    .iter()
                    .find(|d| d.name.as_deref() == Some(n.as_str()))
                    .map(|d| d.domid),
            };
            if let Some(back) = back.filter(|b| *b != domain.domid) {
                actions.push(Action::Attach {
                    name: record.name.clone(),
                    spec: entry.spec(domain.domid, back),
                });
            }
        }
    }
    // Records of domains that vanished from the store entirely.
    retention
        .gone_since
        .retain(|uuid, _| snap.records.iter().any(|r| &r.uuid == uuid));
    actions.extend(
        snap.stale_markers
            .iter()
            .map(|&pid| Action::DropMarker { pid }),
    );
    actions
}

/// The running domains to adopt (see `crate::xladopt`): each has a name
/// and a UUID, no record, no `hdmabuf xl create` creating it, and exactly
/// one candidate file naming it. Pushes their `Adopt` actions (and an
/// `Ambiguous` one, once, for a name several files claim) and returns
/// the records they make.
fn adoptions(snap: &Snapshot, retention: &mut Retention, actions: &mut Vec<Action>) -> Vec<Record> {
    let mut adopted = Vec::new();
    let mut ambiguous = BTreeSet::new();
    for (name, uuid) in adoptable(snap) {
        let claims: Vec<&Candidate> = snap.candidates.iter().filter(|c| &c.name == name).collect();
        // Copies that say the same (a file and its copy in auto/) are one.
        let agree = claims.windows(2).all(|w| w[0].devices == w[1].devices);
        match claims[..] {
            [] => {}
            [only, ..] if agree => {
                actions.push(Action::Adopt {
                    uuid: uuid.clone(),
                    name: name.clone(),
                    path: only.path.clone(),
                    devices: only.devices.clone(),
                });
                adopted.push(Record {
                    uuid: uuid.clone(),
                    name: name.clone(),
                    devices: only.devices.clone(),
                });
            }
            _ => {
                if !retention.ambiguous.contains(name) {
                    actions.push(Action::Ambiguous {
                        name: name.clone(),
                        paths: claims.iter().map(|c| c.path.clone()).collect(),
                    });
                }
                ambiguous.insert(name.clone());
            }
        }
    }
    retention.ambiguous = ambiguous;
    adopted
}

/// The name and UUID of each running domain that could be adopted: a
/// domU with both, no record, and no `hdmabuf xl create` creating it.
fn adoptable(snap: &Snapshot) -> impl Iterator<Item = (&String, &String)> {
    snap.running.iter().filter_map(|d| {
        let (Some(name), Some(uuid)) = (&d.name, &d.uuid) else {
            return None;
        };
        let unrecorded = d.domid != 0
            && !snap.creating.contains(name)
            && !snap.records.iter().any(|r| &r.uuid == uuid);
        unrecorded.then_some((name, uuid))
    })
}

/// The children of `path` that parse as `T` (none if `path` is absent).
fn children<S: Read + Write, T: std::str::FromStr>(
    xs: &mut XsClient<S>,
    path: &str,
) -> Result<Vec<T>, String> {
    Ok(listing(xs, path)?
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect())
}

/// The children of `path`, none if it is absent.
fn listing<S: Read + Write>(xs: &mut XsClient<S>, path: &str) -> Result<Vec<String>, String> {
    match xs.directory(path) {
        Ok(names) => Ok(names),
        Err(XsError::Daemon(e)) if e == "ENOENT" => Ok(Vec::new()),
        Err(e) => Err(format!("listing {path}: {e}")),
    }
}

/// The value of `path`, `None` if absent.
fn value<S: Read + Write>(xs: &mut XsClient<S>, path: &str) -> Result<Option<String>, String> {
    xs.read_value(path)
        .map_err(|e| format!("reading {path}: {e}"))
}

/// Whether `text` is a UUID in its usual spelling (it becomes a path
/// component, so nothing else is accepted).
fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The UUID of domain `domid`, from its `vm` node (`/vm/<uuid>`), which
/// the toolstack writes and the guest cannot.
pub(crate) fn uuid_of<S: Read + Write>(
    xs: &mut XsClient<S>,
    domid: u16,
) -> Result<Option<String>, String> {
    let vm = value(xs, &format!("/local/domain/{domid}/vm"))?;
    Ok(vm
        .as_deref()
        .and_then(|v| v.strip_prefix("/vm/"))
        .filter(|u| is_uuid(u))
        .map(str::to_string))
}

/// Reads everything [`plan`] needs.
pub(crate) fn snapshot<S: Read + Write>(xs: &mut XsClient<S>) -> Result<Snapshot, String> {
    let mut snap = Snapshot::default();
    for domid in children::<_, u16>(xs, "/local/domain")? {
        let base = format!("/local/domain/{domid}");
        let name = value(xs, &format!("{base}/name"))?;
        let uuid = uuid_of(xs, domid)?;
        snap.running.push(Running { domid, name, uuid });
        let backs = format!("{base}/backend/{}", schema::DEVICE_TYPE);
        for front in children::<_, u16>(xs, &backs)? {
            snap.backends.push((domid, front));
        }
        let fronts = format!("{base}/device/{}", schema::DEVICE_TYPE);
        for devid in children::<_, u32>(xs, &fronts)? {
            let id = value(xs, &format!("{fronts}/{devid}/{}", schema::NODE_BACKEND_ID))?;
            snap.frontends.push(Frontend {
                front: domid,
                devid,
                backend_id: id.and_then(|v| parse::parse_domid(v.as_bytes()).ok()),
            });
        }
    }
    // Marks before records: `hdmabuf xl create` records its domain before
    // it removes its mark, so a domain is seen with one or the other (or
    // both), never with neither while it is being created.
    for pid in children::<_, u32>(xs, CREATING)? {
        let Some(name) = value(xs, &format!("{CREATING}/{pid}"))? else {
            continue;
        };
        // The daemon and `hdmabuf xl create` run in the same domain.
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            snap.creating.insert(name);
        } else {
            snap.stale_markers.push(pid);
        }
    }
    for uuid in listing(xs, RECORDS)? {
        if let Some(record) = read_record(xs, &uuid)? {
            snap.records.push(record);
        }
    }
    Ok(snap)
}

/// Marks domain `name` as being created by this process, until
/// [`unmark_creating`].
pub(crate) fn mark_creating<S: Read + Write>(
    xs: &mut XsClient<S>,
    name: &str,
) -> Result<(), String> {
    write(xs, &format!("{CREATING}/{}", std::process::id()), name)
}

/// Removes this process's marker.
pub(crate) fn unmark_creating<S: Read + Write>(xs: &mut XsClient<S>) -> Result<(), String> {
    remove(xs, &format!("{CREATING}/{}", std::process::id()))
}

/// The record of `uuid`; `None` if it is absent or not one of ours
/// (the daemon never acts on a record it cannot read whole).
fn read_record<S: Read + Write>(
    xs: &mut XsClient<S>,
    uuid: &str,
) -> Result<Option<Record>, String> {
    if !is_uuid(uuid) {
        return Ok(None);
    }
    let base = format!("{RECORDS}/{uuid}");
    let Some(name) = value(xs, &format!("{base}/name"))? else {
        return Ok(None);
    };
    let mut devices = BTreeMap::new();
    for devid in children::<_, u32>(xs, &format!("{base}/device"))? {
        let path = format!("{base}/device/{devid}");
        let Some(text) = value(xs, &path)? else {
            continue;
        };
        match Entry::parse(&text, 0) {
            Ok(entry) if entry.devid == devid => {
                devices.insert(devid, entry);
            }
            _ => return Err(format!("{path}: {text:?} is not a device entry")),
        }
    }
    Ok(Some(Record {
        uuid: uuid.to_string(),
        name,
        devices,
    }))
}

/// Records that domain `domid` (named `name`) has the device `entry`,
/// creating the record if `create`; without `create` only an existing
/// record is updated (a domain not created through this tool has none,
/// and the daemon leaves it alone).
pub(crate) fn record_device<S: Read + Write>(
    xs: &mut XsClient<S>,
    domid: u16,
    name: &str,
    entry: &Entry,
    create: bool,
) -> Result<(), String> {
    let Some(uuid) = uuid_of(xs, domid)? else {
        return Ok(());
    };
    let base = format!("{RECORDS}/{uuid}");
    let name_path = format!("{base}/name");
    if !create && value(xs, &name_path)?.is_none() {
        return Ok(());
    }
    let path = format!("{base}/device/{}", entry.devid);
    write(xs, &name_path, name)?;
    write(xs, &path, &entry.render())
}

/// Records domain `domid` (named `name`) with no device yet: a domain
/// created through this tool is followed, and never adopted, even with no
/// device.
pub(crate) fn record_domain<S: Read + Write>(
    xs: &mut XsClient<S>,
    domid: u16,
    name: &str,
) -> Result<(), String> {
    let Some(uuid) = uuid_of(xs, domid)? else {
        return Ok(());
    };
    write(xs, &format!("{RECORDS}/{uuid}/name"), name)
}

/// Drops device `devid` from domain `domid`'s record, if it has one, so
/// that the daemon does not create it again.
pub(crate) fn forget_device<S: Read + Write>(
    xs: &mut XsClient<S>,
    domid: u16,
    devid: u32,
) -> Result<(), String> {
    let Some(uuid) = uuid_of(xs, domid)? else {
        return Ok(());
    };
    remove(xs, &format!("{RECORDS}/{uuid}/device/{devid}"))
}

fn write<S: Read + Write>(xs: &mut XsClient<S>, path: &str, text: &str) -> Result<(), String> {
    xs.write(Txn::NONE, path, text.as_bytes())
        .map_err(|e| format!("writing {path}: {e}"))
}

fn remove<S: Read + Write>(xs: &mut XsClient<S>, path: &str) -> Result<(), String> {
    xs.remove(Txn::NONE, path)
        .map_err(|e| format!("removing {path}: {e}"))
}

/// Carries out one action; the line says what was done.
pub(crate) fn apply<S: Read + Write>(
    xs: &mut XsClient<S>,
    action: &Action,
) -> Result<Line, String> {
    let (text, value): (String, Value) = match action {
        Action::RemoveBackends { back, front } => {
            let path = format!(
                "/local/domain/{back}/backend/{}/{front}",
                schema::DEVICE_TYPE
            );
            remove(xs, &path)?;
            (
                format!("removed {path}: domain {front} is gone"),
                json!({ "removed": path, "gone": front }),
            )
        }
        Action::RemoveFrontend { front, devid, back } => {
            let path = NodePath::frontend_dir(*front, *devid).map_err(|e| e.to_string())?;
            remove(xs, path.as_str())?;
            (
                format!("removed {path}: its backend domain {back} is gone"),
                json!({ "removed": path.as_str(), "gone": back }),
            )
        }
        Action::Attach { name, spec } => {
            let what = format!(
                "device {} of domain {name} ({}) on backend domain {}",
                spec.devid, spec.front, spec.back
            );
            toolstack::attach_on(xs, spec, &what)?;
            (
                format!("attached {what}"),
                json!({ "attached": name, "domid": spec.front, "devid": spec.devid,
                        "backend_id": spec.back }),
            )
        }
        Action::Adopt {
            uuid,
            name,
            path,
            devices,
        } => {
            let base = format!("{RECORDS}/{uuid}");
            write(xs, &format!("{base}/name"), name)?;
            for (devid, entry) in devices {
                write(xs, &format!("{base}/device/{devid}"), &entry.render())?;
            }
            (
                format!(
                    "adopted domain {name} ({uuid}) with the {} device(s) of {}",
                    devices.len(),
                    path.display()
                ),
                json!({ "adopted": name, "uuid": uuid, "config": path.display().to_string(),
                        "devices": devices.keys().collect::<Vec<_>>() }),
            )
        }
        Action::Ambiguous { name, paths } => {
            let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            (
                format!(
                    "warning: not adopting domain {name}: several files name it ({}); \
                     use hdmabuf xl attach, or keep one",
                    paths.join(", ")
                ),
                json!({ "warning": "ambiguous", "domain": name, "configs": paths }),
            )
        }
        Action::DropMarker { pid } => {
            let path = format!("{CREATING}/{pid}");
            remove(xs, &path)?;
            (
                format!("removed {path}: its hdmabuf xl create is gone"),
                json!({ "removed": path }),
            )
        }
        Action::Forget { uuid, name } => {
            remove(xs, &format!("{RECORDS}/{uuid}"))?;
            (
                format!(
                    "forgot domain {name} ({uuid}): gone for {} s",
                    RECORD_GRACE.as_secs()
                ),
                json!({ "forgot": name, "uuid": uuid }),
            )
        }
    };
    Ok(Line { text, json: value })
}

/// One reconciliation: every action's line, and a line for each that
/// failed (the others still run; the next event or tick retries).
pub(crate) fn reconcile<S: Read + Write>(
    xs: &mut XsClient<S>,
    daemon: &mut Daemon,
) -> Result<Vec<Line>, String> {
    let mut snap = snapshot(xs)?;
    // The configuration files are read only while a domain could be
    // adopted, not at every event and tick of a settled host.
    let mut out = Vec::new();
    if adoptable(&snap).next().is_some() {
        let (candidates, warnings) = xladopt::scan(&daemon.adopt_from, &mut daemon.reported);
        snap.candidates = candidates;
        out = warnings;
    }
    let mut failing = BTreeSet::new();
    for action in plan(&snap, &mut daemon.retention, Instant::now()) {
        match apply(xs, &action) {
            Ok(line) => out.push(line),
            Err(e) => {
                if !daemon.failing.contains(&e) {
                    out.push(Line {
                        json: json!({ "warning": e }),
                        text: format!("warning: {e}"),
                    });
                }
                failing.insert(e);
            }
        }
    }
    daemon.failing = failing;
    Ok(out)
}

/// What the daemon keeps from one reconciliation to the next.
#[derive(Debug, Default)]
pub(crate) struct Daemon {
    /// The directories domains are adopted from (none: no adoption).
    pub(crate) adopt_from: Vec<PathBuf>,
    retention: Retention,
    reported: xladopt::Reported,
    /// The failures of the last reconciliation: one that recurs at every
    /// event and tick (a guest that removed its own frontend directory
    /// keeps its device from being created) is said once.
    failing: BTreeSet<String>,
}

/// `hdmabuf xl daemon`: reconciles now, then at every domain event and
/// every [`TICK`], until killed (or once, with `once`). Each line goes to
/// `emit`. Losing xenstored is not fatal: the daemon reconnects.
pub(crate) fn run(once: bool, adopt_from: Vec<PathBuf>, emit: &dyn Fn(Line)) -> Result<(), String> {
    let mut daemon = Daemon {
        adopt_from,
        ..Daemon::default()
    };
    if once {
        let mut xs = XsClient::open().map_err(|e| e.to_string())?;
        reconcile(&mut xs, &mut daemon)?.into_iter().for_each(emit);
        return Ok(());
    }
    loop {
        let why = match serve(&mut daemon, emit) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        emit(Line {
            json: json!({ "warning": why, "reconnecting": true }),
            text: format!("warning: {why}; reconnecting"),
        });
        std::thread::sleep(RECONNECT_PAUSE);
    }
}

/// Watches and reconciles until xenstored fails us.
fn serve(daemon: &mut Daemon, emit: &dyn Fn(Line)) -> Result<std::convert::Infallible, String> {
    let mut watcher = XsClient::open().map_err(|e| e.to_string())?;
    for (path, token) in [
        ("@introduceDomain", "introduce"),
        ("@releaseDomain", "release"),
    ] {
        watcher
            .watch(path, token)
            .map_err(|e| format!("watching {path}: {e}"))?;
    }
    let mut xs = XsClient::open().map_err(|e| e.to_string())?;
    emit(Line {
        text: "watching @introduceDomain and @releaseDomain".into(),
        json: json!({ "watching": ["@introduceDomain", "@releaseDomain"] }),
    });
    loop {
        reconcile(&mut xs, daemon)?.into_iter().for_each(emit);
        // Events that came in a burst make one reconciliation.
        let mut wait = TICK;
        while watcher
            .next_event(wait)
            .map_err(|e| format!("waiting for domain events: {e}"))?
            .is_some()
        {
            wait = Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str = "00000000-0000-0000-0000-0000000000a1";

    fn running(domid: u16, name: &str, uuid: Option<&str>) -> Running {
        Running {
            domid,
            name: Some(name.into()),
            uuid: uuid.map(str::to_string),
        }
    }

    fn record(devices: &[&str]) -> Record {
        Record {
            uuid: U1.into(),
            name: "guest".into(),
            devices: devices
                .iter()
                .map(|t| {
                    let e = Entry::parse(t, 0).unwrap();
                    (e.devid, e)
                })
                .collect(),
        }
    }

    fn front(front: u16, devid: u32, back: u16) -> Frontend {
        Frontend {
            front,
            devid,
            backend_id: Some(back),
        }
    }

    #[test]
    fn a_destroyed_guest_loses_its_backend_directories() {
        let snap = Snapshot {
            running: vec![running(0, "Domain-0", None), running(3, "dd", None)],
            backends: vec![(0, 5), (3, 5), (3, 3)],
            ..Snapshot::default()
        };
        let actions = plan(&snap, &mut Retention::default(), Instant::now());
        assert_eq!(
            actions,
            [
                Action::RemoveBackends { back: 0, front: 5 },
                Action::RemoveBackends { back: 3, front: 5 },
            ]
        );
    }

    #[test]
    fn a_dead_driver_domain_takes_its_frontends_with_it() {
        let snap = Snapshot {
            running: vec![running(0, "Domain-0", None), running(5, "g", None)],
            frontends: vec![
                front(5, 0, 0),
                front(5, 1, 3),
                Frontend {
                    front: 5,
                    devid: 2,
                    backend_id: None,
                },
            ],
            ..Snapshot::default()
        };
        let actions = plan(&snap, &mut Retention::default(), Instant::now());
        assert_eq!(
            actions,
            [Action::RemoveFrontend {
                front: 5,
                devid: 1,
                back: 3
            }]
        );
    }

    #[test]
    fn a_rebooted_guest_gets_its_devices_again_under_its_new_domid() {
        let snap = Snapshot {
            running: vec![
                running(0, "Domain-0", None),
                running(3, "dd", None),
                running(9, "guest", Some(U1)),
            ],
            // The old domid 7's backend directory is still there.
            backends: vec![(0, 7)],
            records: vec![record(&["backend=0, devid=0, rw=1", "backend=dd, devid=4"])],
            ..Snapshot::default()
        };
        let actions = plan(&snap, &mut Retention::default(), Instant::now());
        let spec = |back, devid, rw| DeviceSpec {
            front: 9,
            back,
            devid,
            max_ring_page_order: None,
            max_buffer_size: None,
            feature_rw: Some(rw),
        };
        assert_eq!(
            actions,
            [
                Action::RemoveBackends { back: 0, front: 7 },
                Action::Attach {
                    name: "guest".into(),
                    spec: spec(0, 0, true)
                },
                Action::Attach {
                    name: "guest".into(),
                    spec: spec(3, 4, false)
                },
            ]
        );
    }

    #[test]
    fn present_devices_and_absent_backends_are_left_alone() {
        let snap = Snapshot {
            running: vec![running(0, "Domain-0", None), running(9, "guest", Some(U1))],
            frontends: vec![front(9, 0, 0)],
            backends: vec![(0, 9)],
            // devid 4's driver domain is not running: nothing to do yet.
            records: vec![record(&["backend=0, devid=0", "backend=dd, devid=4"])],
            ..Snapshot::default()
        };
        assert_eq!(plan(&snap, &mut Retention::default(), Instant::now()), []);
    }

    #[test]
    fn a_record_outlives_its_domain_for_the_grace_only() {
        let snap = Snapshot {
            running: vec![running(0, "Domain-0", None)],
            records: vec![record(&["backend=0"])],
            ..Snapshot::default()
        };
        let mut retention = Retention::default();
        let t0 = Instant::now();
        assert_eq!(plan(&snap, &mut retention, t0), []);
        assert_eq!(
            plan(&snap, &mut retention, t0 + RECORD_GRACE / 2),
            [],
            "a reboot's gap must not lose the record"
        );
        assert_eq!(
            plan(&snap, &mut retention, t0 + RECORD_GRACE),
            [Action::Forget {
                uuid: U1.into(),
                name: "guest".into()
            }]
        );
        // Seen again in between: the clock starts over.
        let mut retention = Retention::default();
        plan(&snap, &mut retention, t0);
        let back = Snapshot {
            running: vec![running(0, "Domain-0", None), running(4, "guest", Some(U1))],
            frontends: vec![front(4, 0, 0)],
            ..snap.clone()
        };
        assert_eq!(plan(&back, &mut retention, t0 + RECORD_GRACE / 2), []);
        assert_eq!(plan(&snap, &mut retention, t0 + RECORD_GRACE), []);
    }

    #[test]
    fn a_guest_is_never_its_own_backend() {
        let snap = Snapshot {
            running: vec![running(0, "Domain-0", None), running(9, "guest", Some(U1))],
            records: vec![record(&["backend=guest, devid=0"])],
            ..Snapshot::default()
        };
        assert_eq!(plan(&snap, &mut Retention::default(), Instant::now()), []);
    }

    fn candidate(path: &str, name: &str, entries: &[&str]) -> Candidate {
        Candidate {
            path: path.into(),
            name: name.into(),
            devices: record(entries).devices,
        }
    }

    #[test]
    fn a_domain_started_by_plain_xl_is_adopted_from_the_file_naming_it() {
        let snap = Snapshot {
            running: vec![running(0, "Domain-0", None), running(6, "guest", Some(U1))],
            candidates: vec![
                candidate("/etc/xen/other.cfg", "other", &["backend=0"]),
                candidate("/etc/xen/auto/guest.cfg", "guest", &["backend=0, devid=2"]),
            ],
            ..Snapshot::default()
        };
        let actions = plan(&snap, &mut Retention::default(), Instant::now());
        assert_eq!(
            actions,
            [
                Action::Adopt {
                    uuid: U1.into(),
                    name: "guest".into(),
                    path: "/etc/xen/auto/guest.cfg".into(),
                    devices: record(&["backend=0, devid=2"]).devices,
                },
                Action::Attach {
                    name: "guest".into(),
                    spec: DeviceSpec {
                        front: 6,
                        back: 0,
                        devid: 2,
                        max_ring_page_order: None,
                        max_buffer_size: None,
                        feature_rw: Some(false),
                    }
                },
            ]
        );
    }

    #[test]
    fn recorded_marked_nameless_and_dom0_domains_are_not_adopted() {
        let files = vec![
            candidate("/etc/xen/guest.cfg", "guest", &["backend=0"]),
            candidate("/etc/xen/new.cfg", "new", &["backend=0"]),
            candidate("/etc/xen/d0.cfg", "Domain-0", &["backend=0"]),
        ];
        // A record with no device left (all detached) still counts.
        let detached = Record {
            devices: BTreeMap::new(),
            ..record(&[])
        };
        let snap = Snapshot {
            running: vec![
                running(0, "Domain-0", Some("00000000-0000-0000-0000-000000000000")),
                running(6, "guest", Some(U1)),
                running(7, "new", Some("00000000-0000-0000-0000-0000000000b2")),
                running(8, "nouuid", None),
            ],
            records: vec![detached],
            creating: ["new".to_string()].into(),
            candidates: files,
            ..Snapshot::default()
        };
        assert_eq!(plan(&snap, &mut Retention::default(), Instant::now()), []);
    }

    #[test]
    fn a_name_two_files_claim_is_reported_once_and_not_adopted() {
        let snap = Snapshot {
            running: vec![running(6, "guest", Some(U1))],
            candidates: vec![
                candidate("/etc/xen/auto/a.cfg", "guest", &["backend=0"]),
                candidate("/etc/xen/b.cfg", "guest", &["backend=0, rw=1"]),
            ],
            ..Snapshot::default()
        };
        // Copies that agree are one file.
        let copies = Snapshot {
            candidates: vec![snap.candidates[0].clone(), snap.candidates[0].clone()],
            ..snap.clone()
        };
        assert!(matches!(
            plan(&copies, &mut Retention::default(), Instant::now())[0],
            Action::Adopt { .. }
        ));
        let mut retention = Retention::default();
        assert_eq!(
            plan(&snap, &mut retention, Instant::now()),
            [Action::Ambiguous {
                name: "guest".into(),
                paths: vec!["/etc/xen/auto/a.cfg".into(), "/etc/xen/b.cfg".into()],
            }]
        );
        assert_eq!(plan(&snap, &mut retention, Instant::now()), []);
        // One file left: adopted.
        let one = Snapshot {
            candidates: snap.candidates[..1].to_vec(),
            ..snap.clone()
        };
        assert!(matches!(
            plan(&one, &mut retention, Instant::now())[0],
            Action::Adopt { .. }
        ));
    }

    #[test]
    fn the_marker_of_a_dead_create_is_dropped() {
        let snap = Snapshot {
            stale_markers: vec![4242],
            ..Snapshot::default()
        };
        assert_eq!(
            plan(&snap, &mut Retention::default(), Instant::now()),
            [Action::DropMarker { pid: 4242 }]
        );
    }

    #[test]
    fn uuids_are_checked_before_they_become_paths() {
        assert!(is_uuid("6f1a2b3c-0000-4d5e-8f90-abcdefABCDEF"));
        for bad in [
            "",
            "../../local/domain/0",
            "6f1a2b3c-0000-4d5e-8f90-abcdefABCDE",
            "6f1a2b3c/0000-4d5e-8f90-abcdefABCDEF",
            "6f1a2b3c-0000-4d5e-8f90-abcdefABCDEFx",
        ] {
            assert!(!is_uuid(bad), "{bad:?}");
        }
    }
}
