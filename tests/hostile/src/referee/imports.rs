// SPDX-License-Identifier: MIT
//! The referee's side of `renumber`: this domain imports the hostile
//! peer's buffers and keeps them mapped, reading them again and again,
//! across the peer's sessions. A session that ends while an import is
//! mapped leaves it orphaned; the peer's next session may announce a
//! buffer of the same number, and the two must stay apart: both readable,
//! both listed, and each released on its own.
//!
//! Commands (see `referee.rs` for the mailbox):
//!
//! * `map NAME ID SEED SIZE` — import ID read-only, map it and check that
//!   its SIZE bytes hold the test pattern of SEED; keep it mapped as NAME;
//! * `verify NAME` — read every byte of NAME again;
//! * `listed NAME live|unexported|gone` — within 10 s LIST and QUERY agree
//!   that NAME's id is imported from the hostile domain and mapped, still
//!   exported (`live`) or not (`unexported`: revoked or orphaned), or
//!   neither knows it (`gone`);
//! * `unmap NAME` — unmap and close it: the driver releases the import.

use std::collections::BTreeMap;

use hyper_dmabuf_client::testing::{ImportError, Verified};
use hyper_dmabuf_client::Device;
use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::uapi::{
    QueryItem, DEVICE_PATH, KIND_IMPORTED, STATE_BUSY, STATE_UNEXPORTED,
};

use super::importer::{await_values, number};

/// One import: its id, and its mapping until `unmap`.
struct Kept {
    hid: HyperDmabufId,
    mapped: Option<Verified>,
}

/// The imports of one case, by name.
#[derive(Default)]
pub(crate) struct Imports(BTreeMap<String, Kept>);

fn open() -> Result<Device, String> {
    Device::open_path(DEVICE_PATH).map_err(|e| e.to_string())
}

/// What QUERY says of `item` of `hid`; `None` if it knows no such buffer.
fn query(dev: &Device, hid: &HyperDmabufId, item: QueryItem) -> Result<Option<u64>, String> {
    match dev.query(hid, item) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// How LIST and QUERY show `hid`, imported from `peer`: `live`,
/// `unexported`, `gone`, or what disagrees.
fn shown(peer: u16, hid: &HyperDmabufId) -> Result<String, String> {
    let dev = open()?;
    let listed = dev.list().map_err(|e| e.to_string())?;
    let entry = listed.iter().find(|e| e.hid == *hid);
    let busy = query(&dev, hid, QueryItem::Busy)?;
    let unexported = query(&dev, hid, QueryItem::Unexported)?;
    Ok(match (entry, busy, unexported) {
        (None, None, None) => "gone".to_string(),
        (Some(e), Some(1), Some(u))
            if e.peer.get() == peer
                && e.kind == KIND_IMPORTED
                && e.state & STATE_BUSY != 0
                && u64::from(e.state & STATE_UNEXPORTED != 0) == u =>
        {
            if u == 1 { "unexported" } else { "live" }.to_string()
        }
        (e, busy, unexported) => format!(
            "inconsistent (LIST {:?}, QUERY BUSY {busy:?}, QUERY UNEXPORTED {unexported:?})",
            e.map(|e| (e.peer.get(), e.kind, e.state))
        ),
    })
}

impl Imports {
    fn kept(&mut self, name: &str) -> Result<&mut Kept, String> {
        self.0
            .get_mut(name)
            .ok_or_else(|| format!("no import {name:?} in this case"))
    }

    /// `map NAME ID SEED SIZE`.
    pub(crate) fn map(
        &mut self,
        name: &str,
        id: &str,
        seed: &str,
        size: &str,
    ) -> Result<(), String> {
        if self.0.contains_key(name) {
            return Err(format!("import {name:?} exists already"));
        }
        let hid: HyperDmabufId = id.parse().map_err(|e| format!("id {id}: {e:?}"))?;
        let mapped = Verified::import(&open()?, &hid, false, number(seed)?, number(size)?)
            .map_err(|e| match e {
                ImportError::Import(e) => e.to_string(),
                ImportError::Other(why) => format!("import of {hid}: {why}"),
            })?;
        println!("referee: imported {name} as {hid}, every byte its pattern");
        self.0.insert(
            name.to_string(),
            Kept {
                hid,
                mapped: Some(mapped),
            },
        );
        Ok(())
    }

    /// `verify NAME`.
    pub(crate) fn verify(&mut self, name: &str) -> Result<(), String> {
        self.kept(name)?
            .mapped
            .as_ref()
            .ok_or_else(|| format!("{name} was unmapped"))?
            .check()
            .map_err(|e| format!("{name}: {e}"))
    }

    /// `listed NAME STATE`, of the imports from `peer`.
    pub(crate) fn listed(&mut self, peer: u16, name: &str, state: &str) -> Result<(), String> {
        let hid = self.kept(name)?.hid;
        await_values(
            &format!("{name} ({hid}) is"),
            || shown(peer, &hid),
            state.to_string(),
        )
    }

    /// `unmap NAME`: unmapped and closed; its id stays known, for
    /// `listed`.
    pub(crate) fn unmap(&mut self, name: &str) -> Result<(), String> {
        self.kept(name)?
            .mapped
            .take()
            .map(drop)
            .ok_or_else(|| format!("{name} was unmapped already"))
    }

    /// Lets go of every import of the case.
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}
