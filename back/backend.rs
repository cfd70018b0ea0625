// SPDX-License-Identifier: GPL-2.0

//! The backend role: a `hyper_dmabuf` device in this domain's `backend/`
//! directory (dom0 or a driver domain). It publishes its limits, maps the
//! frontend's rings and binds its event channel when the frontend has
//! published them. `xenbus-proto`'s `BackendMachine` decides every step;
//! this file carries the steps out.

use kernel::c_str;
use kernel::prelude::*;
use kernel::str::CString;
use kernel::sync::{new_mutex, Arc, Mutex};

use super::common::channel::ChannelConfig;
use super::common::limits::{max_buffer_bytes_from_mib, MAX_RING_PAGE_ORDER};
use super::common::xen::DomId;
use super::xenbus_proto::schema::{self, BackendConfig, BackendLimits};
use super::xenbus_proto::{Action, Actions, BackendMachine, XenbusState};
use crate::conn::{Conn, Link};
use crate::ffi::params;
use crate::ffi::xenbus::{Irq, OnlineWatch, XenbusDev};
use crate::peerlog::Level;
use crate::registry::Driver;
use crate::xenstore::{self, StepError, XenStore};

struct BackState {
    machine: BackendMachine,
    offered: Option<BackendConfig>,
}

/// One backend device.
#[pin_data]
pub(crate) struct BackDevice {
    dev: XenbusDev,
    conn: Arc<Conn>,
    #[pin]
    state: Mutex<BackState>,
    /// The watch on our `online` node. Not under `state`: its callback
    /// takes `state`, and dropping the watch waits for the callback.
    #[pin]
    online_watch: Mutex<Option<OnlineWatch>>,
}

impl BackDevice {
    /// Probe: a connection (not yet connected) registered with the driver.
    ///
    /// # Errors
    ///
    /// `EINVAL` if the frontend's domain id is not one, `ENOMEM`.
    pub(crate) fn probe(driver: &Driver, dev: XenbusDev) -> Result<Arc<Self>> {
        let peer = DomId::new(u32::from(dev.otherend_id())).map_err(|_| EINVAL)?;
        let name = CString::try_from_fmt(kernel::fmt!("{}", dev.nodename()))?;
        let conn = Conn::new(driver.next_id(), peer, name)?;
        driver.add_conn(conn.clone())?;
        let id = conn.id;
        let device = Arc::pin_init(
            pin_init!(BackDevice {
                dev,
                conn,
                state <- new_mutex!(BackState {
                    machine: BackendMachine::default(),
                    offered: None,
                }, "BackDevice::state"),
                online_watch <- new_mutex!(None, "BackDevice::online_watch"),
            }),
            GFP_KERNEL,
        );
        if device.is_err() {
            driver.remove_conn(id);
        }
        device
    }

    fn online(&self) -> bool {
        let Ok((ours, _)) = xenstore::dirs(&self.dev) else {
            return false;
        };
        schema::read_online(&mut XenStore, ours).unwrap_or(false)
    }

    /// Publishes our limits and waits for the frontend.
    pub(crate) fn start(&self, driver: &Driver) {
        {
            let mut st = self.state.lock();
            let peer = xenstore::peer_state(&self.dev).unwrap_or(XenbusState::Unknown);
            let _ = st.machine.on_peer_state(peer, self.online());
            let acts = st.machine.start();
            self.run(driver, &mut st, acts);
        }
        // The toolstack removes a device by writing `online` = 0; with a
        // frontend that is gone, only this watch tells us.
        match self.dev.watch_online() {
            Ok(w) => *self.online_watch.lock() = Some(w),
            Err(e) => pr_warn!("{}: cannot watch online: {:?}\n", self.conn.name(), e),
        }
    }

    /// Our `online` node changed.
    pub(crate) fn online_changed(&self, driver: &Driver) {
        let mut st = self.state.lock();
        let acts = st.machine.on_online_changed(self.online());
        self.run(driver, &mut st, acts);
    }

    /// The frontend's state changed.
    pub(crate) fn peer_changed(&self, driver: &Driver) {
        let mut st = self.state.lock();
        let acts = match xenstore::peer_state(&self.dev) {
            Ok(peer) => st.machine.on_peer_state(peer, self.online()),
            Err(e) => {
                // Every watch event reads the node again: a peer that
                // leaves it malformed is reported once, until a new
                // instance of it clears the error.
                if !st.machine.failed() {
                    driver.peer_log(
                        self.conn.peer,
                        Level::Warn,
                        format_args!(
                            "{}: unreadable frontend state of dom{}: {}",
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

    /// The device goes away.
    pub(crate) fn remove(&self, driver: &Driver) {
        // Unregistered first, outside `state`: it waits for its callback.
        let watch = self.online_watch.lock().take();
        drop(watch);
        {
            let mut st = self.state.lock();
            let acts = st.machine.on_remove();
            self.run(driver, &mut st, acts);
            drop(self.conn.detach(driver));
        }
        driver.remove_conn(self.conn.id);
    }

    fn run(&self, driver: &Driver, st: &mut BackState, acts: Actions) {
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

    fn step(&self, driver: &Driver, st: &mut BackState, action: Action) -> Result<(), StepError> {
        let (ours, theirs) = xenstore::dirs(&self.dev)?;
        match action {
            Action::SwitchState(s) => self.dev.switch_state(s.as_u32()),
            Action::PublishBackendNodes => {
                let max_buffer = max_buffer_bytes_from_mib(params::max_buffer_mib());
                let limits = BackendLimits {
                    default_ring_page_order: params::ring_page_order().min(MAX_RING_PAGE_ORDER),
                    max_ring_page_order: MAX_RING_PAGE_ORDER,
                    default_max_buffer_size: max_buffer,
                    max_buffer_size_ceiling: max_buffer,
                };
                let mut config = schema::read_toolstack_config(&mut XenStore, ours, &limits)?;
                config.feature_rw &= params::allow_rw();
                schema::publish_backend(&mut XenStore, ours, &config)?;
                st.offered = Some(config);
            }
            Action::MapRingsAndBind => {
                let offered = st.offered.ok_or(EINVAL)?;
                let rings = schema::read_frontend_rings(&mut XenStore, theirs, &offered)?;
                // The frontend requests on `ring-ref`, we on `back-ring-ref`.
                let ours_ring = self.dev.map_ring(rings.back_ring_refs())?;
                let theirs_ring = self.dev.map_ring(rings.ring_refs())?;
                let irq = self.dev.bind_interdomain(rings.event_channel())?;
                let irq = Irq::request(irq, self.conn.clone(), c_str!("hyper_dmabuf-back"))?;
                let config = ChannelConfig {
                    version: rings.version(),
                    max_buffer_bytes: offered.max_buffer_size,
                    allow_rw: offered.feature_rw,
                };
                let link = Link::new(self.dev, config, ours_ring, theirs_ring, irq)?;
                self.conn.attach(driver, link, config);
            }
            Action::Teardown | Action::Disconnect => drop(self.conn.detach(driver)),
            Action::AwaitPeerRelease => {
                if !xenstore::await_peer_release(&self.dev, BackendMachine::peer_released) {
                    driver.peer_log(
                        self.conn.peer,
                        Level::Warn,
                        format_args!(
                            "{}: frontend did not release our pages in time; the grant layer ends access once it does",
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
                        "{}: frontend dom{} moved to {} while we are {}: protocol error, closing",
                        self.conn.name(),
                        self.conn.peer.get(),
                        peer.name(),
                        ours.name()
                    ),
                );
            }
            Action::ReadBackendNodes | Action::AllocRingsAndPublish | Action::Connect => {
                return Err(EINVAL.into())
            }
        }
        Ok(())
    }
}
