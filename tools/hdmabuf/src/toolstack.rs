//! `hdmabuf xl ...`: the toolstack's part for `hyper_dmabuf` devices,
//! which xl itself does not know. It creates and removes the two device
//! directories with libxl's layout and permissions (`schema::create_device`
//! in `xenbus-proto`, one transaction) and lists devices with their
//! states. Runs in the domain with xenstored (dom0).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hyper_dmabuf_xenbus_proto::schema::{self, DeviceSpec};
use hyper_dmabuf_xenbus_proto::store::{NodePath, Perm, PermKind};
use hyper_dmabuf_xenbus_proto::{Error, Store, Txn, XenbusState};
use serde_json::json;

use crate::xsclient::{perms_text, XsClient};

/// What `attach` needs.
pub(crate) struct AttachArgs {
    pub(crate) spec: DeviceSpec,
    pub(crate) dry_run: bool,
}

/// Creates a device (or prints what it would write).
pub(crate) fn attach(args: &AttachArgs) -> Result<Vec<String>, String> {
    let what = format!(
        "device {} of domain {} (backend domain {})",
        args.spec.devid, args.spec.front, args.spec.back
    );
    if args.dry_run {
        let mut rec = Recorder::default();
        schema::create_device(&mut rec, &args.spec).map_err(|e| format!("{what}: {e}"))?;
        return Ok(rec.lines());
    }
    let mut xs = XsClient::open().map_err(|e| e.to_string())?;
    schema::create_device(&mut xs, &args.spec).map_err(|e| match e {
        Error::Denied => format!("{what}: xenstore refused the write (run this as root in dom0)"),
        e => format!("creating {what}: {e}"),
    })?;
    Ok(vec![format!("attached {what}")])
}

fn read_state(xs: &mut XsClient, dir: &str) -> Option<XenbusState> {
    let path = format!("{dir}/state");
    match xs.read_value(&path) {
        Ok(Some(v)) => v
            .trim_end_matches('\0')
            .parse::<u32>()
            .ok()
            .and_then(XenbusState::from_u32),
        _ => None,
    }
}

/// Removes a device: asks the drivers to close, waits (bounded) for the
/// backend to reach Closed or the frontend to be gone, removes the nodes.
pub(crate) fn detach(spec: &DeviceSpec, timeout: Duration) -> Result<Vec<String>, String> {
    let mut xs = XsClient::open().map_err(|e| e.to_string())?;
    let fdir = NodePath::frontend_dir(spec.front, spec.devid).map_err(|e| e.to_string())?;
    let bdir =
        NodePath::backend_dir(spec.back, spec.front, spec.devid).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if read_state(&mut xs, bdir.as_str()).is_none() && read_state(&mut xs, fdir.as_str()).is_none()
    {
        return Err(format!(
            "no hyper_dmabuf device {} of domain {} with backend domain {}",
            spec.devid, spec.front, spec.back
        ));
    }
    schema::begin_remove_device(&mut xs, spec).map_err(|e| format!("closing {bdir}: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        let back = read_state(&mut xs, bdir.as_str());
        let front = read_state(&mut xs, fdir.as_str());
        let closed =
            back == Some(XenbusState::Closed) || matches!(front, None | Some(XenbusState::Closed));
        if closed {
            break;
        }
        if Instant::now() >= deadline {
            out.push(format!(
                "warning: the device did not close within {} s (backend {}, frontend {}); removing it anyway",
                timeout.as_secs(),
                back.map_or("absent", XenbusState::name),
                front.map_or("absent", XenbusState::name),
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    schema::remove_device_dirs(&mut xs, spec).map_err(|e| format!("removing the nodes: {e}"))?;
    out.push(format!(
        "detached device {} of domain {} (backend domain {})",
        spec.devid, spec.front, spec.back
    ));
    Ok(out)
}

/// One device as `list` shows it.
pub(crate) struct DeviceInfo {
    domid: u16,
    devid: u32,
    backend: String,
    front_state: Option<XenbusState>,
    back_state: Option<XenbusState>,
}

/// The devices of `domid`, or of every domain.
pub(crate) fn list(domid: Option<u16>) -> Result<Vec<DeviceInfo>, String> {
    let mut xs = XsClient::open().map_err(|e| e.to_string())?;
    let domains: Vec<u16> = match domid {
        Some(d) => vec![d],
        None => xs
            .directory("/local/domain")
            .map_err(|e| format!("listing domains: {e}"))?
            .iter()
            .filter_map(|d| d.parse().ok())
            .collect(),
    };
    let mut out = Vec::new();
    for d in domains {
        let base = format!("/local/domain/{d}/device/hyper_dmabuf");
        let Ok(devs) = xs.directory(&base) else {
            continue;
        };
        for dev in devs {
            let Ok(devid) = dev.parse::<u32>() else {
                continue;
            };
            let fdir = format!("{base}/{devid}");
            let backend = xs
                .read_value(&format!("{fdir}/backend"))
                .ok()
                .flatten()
                .unwrap_or_default();
            let front_state = read_state(&mut xs, &fdir);
            let back_state = if backend.is_empty() {
                None
            } else {
                read_state(&mut xs, &backend)
            };
            out.push(DeviceInfo {
                domid: d,
                devid,
                backend,
                front_state,
                back_state,
            });
        }
    }
    Ok(out)
}

impl DeviceInfo {
    /// One human line.
    pub(crate) fn line(&self) -> String {
        format!(
            "domain {:>4} device {:>2}  frontend {:<13} backend {:<13} {}",
            self.domid,
            self.devid,
            self.front_state.map_or("absent", XenbusState::name),
            self.back_state.map_or("absent", XenbusState::name),
            self.backend
        )
    }

    /// As JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        json!({
            "domain": self.domid,
            "devid": self.devid,
            "backend": self.backend,
            "frontend_state": self.front_state.map(XenbusState::name),
            "backend_state": self.back_state.map(XenbusState::name),
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

    fn touch(&mut self, path: &str) {
        if !self.nodes.contains_key(path) {
            let perms = self.parent_perms(path);
            self.nodes.insert(path.to_string(), (Vec::new(), perms));
            self.order.push(path.to_string());
        }
    }

    fn lines(&self) -> Vec<String> {
        self.order
            .iter()
            .filter_map(|p| {
                let (value, perms) = self.nodes.get(p)?;
                Some(format!(
                    "{p} = \"{}\" ({})",
                    String::from_utf8_lossy(value),
                    perms_text(perms)
                ))
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
        self.nodes.remove(path);
        self.order.retain(|p| p != path);
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

    #[test]
    fn dry_run_shows_libxl_layout_and_permissions() {
        let spec = DeviceSpec {
            front: 5,
            back: 0,
            devid: 0,
            max_ring_page_order: None,
            max_buffer_size: None,
            feature_rw: Some(true),
        };
        let lines = attach(&AttachArgs {
            spec,
            dry_run: true,
        })
        .unwrap();
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
        assert_eq!(lines, expect);
    }
}
