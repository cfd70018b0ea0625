// SPDX-License-Identifier: GPL-2.0

//! The frontend role: a `hyper_dmabuf` device in a guest's `device/`
//! directory. It allocates and grants both rings and the event channel,
//! publishes them once the backend waits, and connects when the backend
//! does. `xenbus-proto`'s `FrontendMachine` decides every step; this file
//! carries the steps out.

use kernel::c_str;
use kernel::prelude::*;
use kernel::str::CString;
use kernel::sync::{new_mutex, Arc, Mutex};

use super::common::channel::ChannelConfig;
use super::common::limits::{max_buffer_bytes_from_mib, MAX_RING_PAGE_ORDER};
use super::common::ring;
use super::common::xen::DomId;
use super::xenbus_proto::schema::{self, FrontendLimits, FrontendRings, Negotiated};
use super::xenbus_proto::{Action, Actions, FrontendMachine, XenbusState};
use crate::conn::{Conn, Link};
use crate::ffi::params;
use crate::ffi::xenbus::{self, Irq, SharedRing, XenbusDev};
use crate::peerlog::Level;
use crate::registry::Driver;
use crate::xenstore::{self, StepError, XenStore};

/// Rings and event channel allocated and published, not yet in use.
struct Offer {
    ours: SharedRing,
    theirs: SharedRing,
    irq: Irq<Conn>,
    config: ChannelConfig,
}

struct FrontState {
    machine: FrontendMachine,
    negotiated: Option<Negotiated>,
    offer: Option<Offer>,
    /// A transport we stopped using whose pages the backend may still map.
    parked: Option<Link>,
}

/// One frontend device.
#[pin_data]
pub(crate) struct FrontDevice {
    dev: XenbusDev,
    conn: Arc<Conn>,
    #[pin]
    state: Mutex<FrontState>,
}

impl FrontDevice {
    /// Probe: a connection (not yet connected) registered with the driver.
    ///
    /// # Errors
    ///
    /// `EINVAL` if the backend's domain id is not one, `ENOMEM`.
    pub(crate) fn probe(driver: &Driver, dev: XenbusDev) -> Result<Arc<Self>> {
        let peer = DomId::new(u32::from(dev.otherend_id())).map_err(|_| EINVAL)?;
        let name = CString::try_from_fmt(kernel::fmt!("{}", dev.nodename()))?;
        let conn = Conn::new(driver.next_id(), peer, name)?;
        driver.add_conn(conn.clone())?;
        let id = conn.id;
        let device = Arc::pin_init(
            pin_init!(FrontDevice {
                dev,
                conn,
                state <- new_mutex!(FrontState {
                    machine: FrontendMachine::default(),
                    negotiated: None,
                    offer: None,
                    parked: None,
                }, "FrontDevice::state"),
            }),
            GFP_KERNEL,
        );
        if device.is_err() {
            driver.remove_conn(id);
        }
        device
    }

    /// Starts the handshake.
    pub(crate) fn start(&self, driver: &Driver) {
        let mut st = self.state.lock();
        let peer = xenstore::peer_state(&self.dev).unwrap_or(XenbusState::Unknown);
        let _ = st.machine.on_peer_state(peer);
        let acts = st.machine.start();
        self.run(driver, &mut st, acts);
    }

    /// The backend's state changed.
    pub(crate) fn peer_changed(&self, driver: &Driver) {
        let mut st = self.state.lock();
        let acts = match xenstore::peer_state(&self.dev) {
            Ok(peer) => st.machine.on_peer_state(peer),
            Err(e) => {
                // Every watch event reads the node again: a peer that
                // leaves it malformed is reported once, until a new
                // instance of it clears the error.
                if !st.machine.failed() {
                    driver.peer_log(
                        self.conn.peer,
                        Level::Warn,
                        format_args!(
                            "{}: unreadable backend state of dom{}: {}",
                            self.conn.name(),
                            self.conn.peer.get(),
                            e
                        ),
                    );
                }
                st.machine.on_local_error()
            }
        };
        self.run(driver, &mut st, acts);
    }

    /// The device goes away (unbind, unload, or its directory was removed).
    pub(crate) fn remove(&self, driver: &Driver) {
        {
            let mut st = self.state.lock();
            let acts = st.machine.on_remove();
            self.run(driver, &mut st, acts);
            // Whatever the machine's state, nothing may outlive the device.
            self.teardown(driver, &mut st);
        }
        driver.remove_conn(self.conn.id);
    }

    fn run(&self, driver: &Driver, st: &mut FrontState, acts: Actions) {
        for &action in acts.as_slice() {
            if let Err(e) = self.step(driver, st, action) {
                driver.peer_log(
                    self.conn.peer,
                    Level::Warn,
                    format_args!(
                        "{}: {:?} with dom{} failed: {}",
                        self.conn.name(),
                        action,
                        self.conn.peer.get(),
                        e
                    ),
                );
                let recovery = st.machine.on_local_error();
                for &action in recovery.as_slice() {
                    let _ = self.step(driver, st, action);
                }
                return;
            }
        }
    }

    fn step(&self, driver: &Driver, st: &mut FrontState, action: Action) -> Result<(), StepError> {
        let (ours, theirs) = xenstore::dirs(&self.dev)?;
        match action {
            Action::SwitchState(XenbusState::Closed) => self.dev.frontend_closed(),
            Action::SwitchState(s) => self.dev.switch_state(s.as_u32()),
            Action::ReadBackendNodes => {
                let offer = schema::read_backend_config(&mut XenStore, theirs)?;
                let limits = FrontendLimits {
                    max_ring_page_order: params::ring_page_order().min(MAX_RING_PAGE_ORDER),
                    max_buffer_size: max_buffer_bytes_from_mib(params::max_buffer_mib()),
                };
                st.negotiated = Some(schema::negotiate(&offer, &limits)?);
            }
            Action::AllocRingsAndPublish => {
                let neg = st.negotiated.ok_or(EINVAL)?;
                st.offer = None;
                let pages = 1usize << neg.ring_page_order;
                let ours_ring = self.dev.setup_ring(pages)?;
                let theirs_ring = self.dev.setup_ring(pages)?;
                ring::init_shared(&ours_ring).map_err(|_| EINVAL)?;
                ring::init_shared(&theirs_ring).map_err(|_| EINVAL)?;
                let port = self.dev.alloc_evtchn()?;
                let irq = match xenbus::bind_evtchn(port) {
                    Ok(irq) => irq,
                    Err(e) => {
                        self.dev.free_evtchn(port);
                        return Err(e.into());
                    }
                };
                let irq = Irq::request(irq, self.conn.clone(), c_str!("hyper_dmabuf-front"))?;
                let rings = FrontendRings::new(
                    neg.version,
                    neg.ring_page_order,
                    ours_ring.refs(),
                    theirs_ring.refs(),
                    port,
                )?;
                schema::publish_frontend(&mut XenStore, ours, &rings)?;
                st.offer = Some(Offer {
                    ours: ours_ring,
                    theirs: theirs_ring,
                    irq,
                    config: ChannelConfig {
                        version: neg.version,
                        max_buffer_bytes: neg.max_buffer_size,
                        allow_rw: neg.feature_rw,
                    },
                });
            }
            Action::Connect => {
                let offer = st.offer.take().ok_or(EINVAL)?;
                let link = Link::new(self.dev, offer.config, offer.ours, offer.theirs, offer.irq)?;
                self.conn.attach(driver, link, offer.config);
            }
            Action::Disconnect => {
                if let Some(link) = self.conn.detach(driver) {
                    st.parked = Some(link);
                }
            }
            Action::Teardown => {
                self.teardown(driver, st);
                let _ = schema::clear_frontend(&mut XenStore, ours);
            }
            Action::AwaitPeerRelease => {
                if !xenstore::await_peer_release(&self.dev, FrontendMachine::peer_released) {
                    driver.peer_log(
                        self.conn.peer,
                        Level::Warn,
                        format_args!(
                            "{}: backend did not release our pages in time; the grant layer ends access once it does",
                            self.conn.name()
                        ),
                    );
                }
            }
            Action::LogProtocolError { ours, peer } => {
                driver.peer_log(
                    self.conn.peer,
                    Level::Warn,
                    format_args!(
                        "{}: backend dom{} moved to {} while we are {}: protocol error, closing",
                        self.conn.name(),
                        self.conn.peer.get(),
                        peer.name(),
                        ours.name()
                    ),
                );
            }
            Action::PublishBackendNodes | Action::MapRingsAndBind => return Err(EINVAL.into()),
        }
        Ok(())
    }

    /// Releases everything the session holds. Idempotent.
    fn teardown(&self, driver: &Driver, st: &mut FrontState) {
        drop(self.conn.detach(driver));
        drop(st.parked.take());
        drop(st.offer.take());
    }
}
