// SPDX-License-Identifier: MIT
//! The XenBus state machines of both ends, as pure logic.
//!
//! A machine is told what happened ([`FrontendMachine::on_peer_state`],
//! `on_local_error`, `on_remove`, ...) and answers with an ordered list of
//! [`Action`]s for the driver to execute. It never touches xenstore, never
//! allocates, never panics: every pair (our state, peer state) has a
//! defined answer — a list of actions, nothing ("ignore"), or a protocol
//! error, which moves the device to Closing with a log line.
//!
//! # Driver contract
//!
//! * The driver delivers events one at a time, and executes the whole
//!   action list of one event, in order, before it delivers the next (one
//!   work queue per device).
//! * `on_peer_state` gets the peer's state as read *when the event is
//!   handled* (watches coalesce: intermediate states may be missed, and
//!   the tables are built so that missing one is harmless). An absent
//!   `state` node is [`XenbusState::Unknown`]; a malformed one (see
//!   [`super::schema::read_state`]) is reported with `on_local_error`.
//! * If an action fails, the driver stops executing the list and calls
//!   `on_local_error`, then executes what that returns.
//! * [`Action::Teardown`] is idempotent: it releases whatever the session
//!   holds (all of it, part of it after a failed setup, or nothing).
//! * Each driver watches the peer's `state` node; the backend driver also
//!   watches its own `online` node and calls
//!   [`BackendMachine::on_online_changed`], and passes the current
//!   `online` with every [`BackendMachine::on_peer_state`].
//! * Probe calls `start`; removal (unbind, module unload, directory
//!   deleted) calls `on_remove`, whose [`Action::AwaitPeerRelease`] polls
//!   the peer's `state` because no watch fires during removal.
//! * A machine never reconnects by itself after an error of its own or a
//!   protocol error of its peer ("failed"): the frontend stays down until
//!   its driver instance is probed again; the backend until a new frontend
//!   instance writes Initialising. This bounds the work a broken or
//!   hostile peer can cause to one handshake per peer restart.
//!
//! # State diagrams
//!
//! Normal connection (Linux's `xenbus_switch_state` writes each state):
//!
//! ```text
//!         Frontend                               Backend
//!
//!    Initialising (toolstack)               Initialising (toolstack)
//!         |                                      |  PublishBackendNodes
//!    start(): Initialising                       V
//!         |                                   InitWait
//!         |  sees InitWait:                      |
//!         |  ReadBackendNodes,                   |
//!         |  AllocRingsAndPublish (one txn)      |
//!         V                                      |
//!    Initialised  ------------------------->     |  sees Initialised:
//!         |                                      |  MapRingsAndBind
//!         |                                      V
//!         |  sees Connected: Connect         Connected
//!         V
//!     Connected
//! ```
//!
//! Close started by the backend (its error, its removal, or the
//! toolstack's removal, which writes backend `online` = 0 and `state` = 5):
//!
//! ```text
//!         Frontend                               Backend
//!
//!     Connected                               Connected
//!         |                                      |  Teardown (unmap)
//!         |  sees Closing:                       V
//!         |  Teardown (end access)            Closing
//!         V                                      |
//!      Closing                                   |
//!         V                                      |  sees Closed
//!       Closed  -------------------------->      V
//!         |                                    Closed
//!         |                                      |  online = 1 and no error
//!         |                                      |  of its own: PublishBackendNodes
//!         |  sees InitWait, no error of          V
//!         |  our own: reconnect               InitWait
//!         V
//!    Initialised ...
//! ```
//!
//! Close started by the frontend (its error, or its removal):
//!
//! ```text
//!         Frontend                               Backend
//!
//!     Connected                               Connected
//!         |                                      |
//!         V                                      |  sees Closing:
//!      Closing  -------------------------->      |  Teardown (unmap)
//!         |                                      V
//!         |  sees Closing:                    Closing
//!         |  Teardown (end access)               |
//!         V                                      |  sees Closed
//!       Closed  -------------------------->      V
//!                                              Closed
//!                                                |  online = 1 and no error:
//!                                                V  PublishBackendNodes
//!                                             InitWait  (a reloaded frontend
//!                                                        connects from here)
//! ```
//!
//! The frontend ends access to its ring pages only once the backend says
//! it unmapped them (or is gone): no page is freed while the peer maps it.
//!
//! Recovery after peer loss:
//!
//! ```text
//!   Backend lost (state Unknown/absent,     Frontend lost (state Initialising
//!   Initialising, InitWait or Closed        after a reload, Closed, Unknown or
//!   while we are Initialised/Connected):    Reconfiguring while we are
//!                                           Connected):
//!         Frontend                               Backend
//!     Connected                               Connected
//!         |                                      |  Teardown
//!         V                                      |  online = 1: PublishBackendNodes
//!    Reconfiguring                               V
//!         |  Teardown                         InitWait  (online = 0: Closed)
//!         V
//!    Initialising
//!         |  sees InitWait: reconnect
//!         V
//!    Initialised ...
//! ```
//!
//! The full tables are in the documentation of
//! [`FrontendMachine::on_peer_state`] and [`BackendMachine::on_peer_state`].

use core::fmt;

use super::state::XenbusState;

/// One step for the driver to execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Write our `state` node (`xenbus_switch_state`).
    SwitchState(XenbusState),
    /// Backend: read the toolstack's configuration
    /// ([`super::schema::read_toolstack_config`]) and publish the backend
    /// nodes ([`super::schema::publish_backend`]).
    PublishBackendNodes,
    /// Frontend: read and validate the backend nodes
    /// ([`super::schema::read_backend_config`]) and choose the session
    /// parameters ([`super::schema::negotiate`]).
    ReadBackendNodes,
    /// Frontend: allocate and grant both rings of `2^ring-page-order`
    /// pages, allocate one unbound event channel for the backend, and
    /// publish them in one transaction
    /// ([`super::schema::publish_frontend`]).
    AllocRingsAndPublish,
    /// Backend: read and validate the frontend nodes
    /// ([`super::schema::read_frontend_rings`]), map both rings, bind the
    /// event channel and start serving the rings.
    MapRingsAndBind,
    /// Frontend: start using the rings (the backend is Connected).
    Connect,
    /// Frontend: stop using the rings (mask the event channel, fail the
    /// outstanding requests, accept no new ones) but keep the pages
    /// granted: the backend may still map them. [`Action::Teardown`]
    /// follows once the backend released them.
    Disconnect,
    /// Both: stop using the rings and release everything the session
    /// holds: unmap (backend) or end foreign access to (frontend) the ring
    /// pages, unbind the event channel, fail outstanding requests, tear
    /// down buffers shared with the peer as the revocation rules say,
    /// remove the frontend nodes ([`super::schema::clear_frontend`]).
    /// Idempotent.
    Teardown,
    /// Before releasing: wait, for a bounded time, until the peer's state
    /// says it released what it mapped (see
    /// [`FrontendMachine::peer_released`] and
    /// [`BackendMachine::peer_released`]), reading the peer's `state`
    /// node directly (no watch events arrive during removal). On timeout,
    /// go on: the release must then defer freeing pages the peer may
    /// still map.
    AwaitPeerRelease,
    /// The peer broke the protocol: log it (then the list moves the device
    /// to Closing).
    LogProtocolError {
        /// Our state when it happened.
        ours: XenbusState,
        /// The peer's state that was not allowed.
        peer: XenbusState,
    },
}

/// Most actions one event produces.
pub const MAX_ACTIONS: usize = 8;

/// An ordered list of at most [`MAX_ACTIONS`] actions.
///
/// # Invariants
///
/// `len <= MAX_ACTIONS`. No transition pushes more than 6 actions, so
/// [`Actions::overflowed`] is always false; tests and the fuzz target
/// check it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    items: [Action; MAX_ACTIONS],
    len: usize,
    overflowed: bool,
}

impl Actions {
    /// An empty list ("ignore").
    pub const fn new() -> Self {
        Self {
            items: [Action::Teardown; MAX_ACTIONS],
            len: 0,
            overflowed: false,
        }
    }

    fn push(&mut self, a: Action) {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = a;
                // INVARIANT: the slot existed, so len + 1 <= MAX_ACTIONS.
                self.len += 1;
            }
            None => self.overflowed = true,
        }
    }

    /// The actions, in execution order.
    pub fn as_slice(&self) -> &[Action] {
        self.items.get(..self.len).unwrap_or(&[])
    }

    /// Whether the event is to be ignored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of actions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether an action was dropped for lack of room (a bug of this
    /// crate; never true).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Whether the list reports a protocol error of the peer.
    pub fn is_protocol_error(&self) -> bool {
        self.as_slice()
            .iter()
            .any(|a| matches!(a, Action::LogProtocolError { .. }))
    }

    /// The last state the list switches to, if any.
    pub fn final_switch(&self) -> Option<XenbusState> {
        self.as_slice().iter().rev().find_map(|a| match a {
            Action::SwitchState(s) => Some(*s),
            _ => None,
        })
    }
}

impl Default for Actions {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl<'a> IntoIterator for &'a Actions {
    type Item = &'a Action;
    type IntoIter = core::slice::Iter<'a, Action>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

/// The states the frontend rests in between events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Front {
    Initialising,
    Initialised,
    Connected,
    Closing,
    Closed,
}

impl Front {
    fn xenbus(self) -> XenbusState {
        match self {
            Self::Initialising => XenbusState::Initialising,
            Self::Initialised => XenbusState::Initialised,
            Self::Connected => XenbusState::Connected,
            Self::Closing => XenbusState::Closing,
            Self::Closed => XenbusState::Closed,
        }
    }
}

/// The frontend's XenBus state machine.
///
/// # Invariants
///
/// Between events the frontend is in Initialising, Initialised,
/// Connected, Closing or Closed (Reconfiguring only appears inside one
/// action list). Once the action list of an event has run, the session
/// holds rings only in Initialised, Connected and Closing (where it waits
/// for the backend to unmap them before [`Action::Teardown`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendMachine {
    state: Front,
    peer: XenbusState,
    started: bool,
    /// Set by a local or protocol error: do not reconnect on our own.
    failed: bool,
    removed: bool,
}

impl Default for FrontendMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl FrontendMachine {
    /// A machine for a device the toolstack created (state Initialising).
    pub const fn new() -> Self {
        Self {
            state: Front::Initialising,
            peer: XenbusState::Unknown,
            started: false,
            failed: false,
            removed: false,
        }
    }

    /// Our state.
    pub fn state(&self) -> XenbusState {
        self.state.xenbus()
    }

    /// The backend state last delivered.
    pub fn peer(&self) -> XenbusState {
        self.peer
    }

    /// Whether an error stopped the device (it stays Closed until the
    /// driver instance is removed and probed again).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Whether [`Self::on_remove`] was called; every later event is
    /// ignored.
    pub fn removed(&self) -> bool {
        self.removed
    }

    /// Whether a backend in state `peer` holds no mapping of our pages
    /// (for [`Action::AwaitPeerRelease`]): Unknown, Initialising,
    /// InitWait, Closing or Closed. The backend releases before it enters
    /// Closing.
    pub fn peer_released(peer: XenbusState) -> bool {
        matches!(
            peer,
            XenbusState::Unknown
                | XenbusState::Initialising
                | XenbusState::InitWait
                | XenbusState::Closing
                | XenbusState::Closed
        )
    }

    /// The driver instance starts (probe): `[SwitchState(Initialising)]`,
    /// followed by the answer to the backend state delivered so far (so a
    /// backend already in InitWait is answered at once). Calling it again
    /// does nothing.
    pub fn start(&mut self) -> Actions {
        let mut acts = Actions::new();
        if self.started || self.removed {
            return acts;
        }
        self.started = true;
        acts.push(Action::SwitchState(XenbusState::Initialising));
        self.state = Front::Initialising;
        self.step(self.peer, &mut acts);
        acts
    }

    /// The backend's `state` changed (or its watch fired) and now reads
    /// `peer`.
    ///
    /// Before [`Self::start`] and after [`Self::on_remove`] the state is
    /// only recorded. Otherwise (rows: our state; `ign` is no action):
    ///
    /// ```text
    /// backend ->    Unknown Initialising InitWait Initialised Connected Closing Closed Reconfiguring Reconfigured
    /// Initialising  ign     ign          CONNECT  ERR         ign       ign     ign    ERR           ERR
    /// Initialised   RECOVER RECOVER      ign      ERR         UP        CLOSE   RECOV  ERR           ERR
    /// Connected     RECOVER RECOVER      RECOV+C  ERR         ign       CLOSE   RECOV  ERR           ERR
    /// Closing       DONE    DONE         DONE     ign         ign       DONE    DONE   ign           ign
    /// Closed        ign     ign          CONNECT* ign         ign       ign     ign    ign           ign
    ///
    /// CONNECT  = ReadBackendNodes, AllocRingsAndPublish, SwitchState(Initialised)
    /// CONNECT* = CONNECT unless an error stopped the device, else ign
    /// UP       = Connect, SwitchState(Connected)
    /// CLOSE    = Teardown, SwitchState(Closing), SwitchState(Closed)
    /// RECOVER  = SwitchState(Reconfiguring), Teardown, SwitchState(Initialising)
    /// RECOV+C  = RECOVER, then CONNECT
    /// DONE     = Teardown, SwitchState(Closed)
    /// ERR      = LogProtocolError, Disconnect, SwitchState(Closing), and no
    ///            reconnection (Teardown waits for DONE: the backend may
    ///            still map our pages)
    /// ```
    ///
    /// Why: the backend never writes Initialised or Reconfiguring/
    /// Reconfigured. In Initialising we hold nothing, and a Connected,
    /// Closing or Closed backend is still finishing with an earlier
    /// frontend instance: it will come to InitWait when it sees our
    /// Initialising (or Closed, if the toolstack is removing the device:
    /// the backend then answers the toolstack itself, see
    /// [`BackendMachine::on_online_changed`]). An InitWait seen while
    /// Initialised is our own publish racing with the watch (a restarted
    /// backend that only shows InitWait finds our rings still published and
    /// connects to them). In Closing we wait for the backend to release
    /// (Closing, Closed, InitWait, Initialising or gone) before we end
    /// access to our pages.
    pub fn on_peer_state(&mut self, peer: XenbusState) -> Actions {
        let mut acts = Actions::new();
        self.peer = peer;
        if self.started && !self.removed {
            self.step(peer, &mut acts);
        }
        acts
    }

    fn step(&mut self, peer: XenbusState, acts: &mut Actions) {
        use XenbusState as S;
        match (self.state, peer) {
            (Front::Initialising, S::InitWait) => self.connect(acts),
            (
                Front::Initialising,
                S::Unknown | S::Initialising | S::Connected | S::Closing | S::Closed,
            ) => {}
            (Front::Initialising, S::Initialised | S::Reconfiguring | S::Reconfigured) => {
                self.protocol_error(peer, acts)
            }

            (Front::Initialised, S::Unknown | S::Initialising | S::Closed) => self.recover(acts),
            (Front::Initialised, S::InitWait) => {}
            (Front::Initialised, S::Connected) => {
                acts.push(Action::Connect);
                acts.push(Action::SwitchState(S::Connected));
                self.state = Front::Connected;
            }
            (Front::Connected, S::Unknown | S::Initialising | S::Closed) => self.recover(acts),
            (Front::Connected, S::InitWait) => {
                self.recover(acts);
                self.connect(acts);
            }
            (Front::Connected, S::Connected) => {}
            (Front::Initialised | Front::Connected, S::Closing) => {
                acts.push(Action::Teardown);
                acts.push(Action::SwitchState(S::Closing));
                acts.push(Action::SwitchState(S::Closed));
                self.state = Front::Closed;
            }
            (
                Front::Initialised | Front::Connected,
                S::Initialised | S::Reconfiguring | S::Reconfigured,
            ) => self.protocol_error(peer, acts),

            (
                Front::Closing,
                S::Unknown | S::Initialising | S::InitWait | S::Closing | S::Closed,
            ) => {
                acts.push(Action::Teardown);
                acts.push(Action::SwitchState(S::Closed));
                self.state = Front::Closed;
            }
            (
                Front::Closing,
                S::Initialised | S::Connected | S::Reconfiguring | S::Reconfigured,
            ) => {}

            (Front::Closed, S::InitWait) if !self.failed => self.connect(acts),
            (Front::Closed, _) => {}
        }
    }

    fn connect(&mut self, acts: &mut Actions) {
        acts.push(Action::ReadBackendNodes);
        acts.push(Action::AllocRingsAndPublish);
        acts.push(Action::SwitchState(XenbusState::Initialised));
        self.state = Front::Initialised;
    }

    fn recover(&mut self, acts: &mut Actions) {
        acts.push(Action::SwitchState(XenbusState::Reconfiguring));
        acts.push(Action::Teardown);
        acts.push(Action::SwitchState(XenbusState::Initialising));
        self.state = Front::Initialising;
    }

    fn protocol_error(&mut self, peer: XenbusState, acts: &mut Actions) {
        acts.push(Action::LogProtocolError {
            ours: self.state(),
            peer,
        });
        self.close_on_error(acts);
    }

    fn close_on_error(&mut self, acts: &mut Actions) {
        self.failed = true;
        match self.state {
            Front::Initialising | Front::Initialised | Front::Connected => {
                // Our pages are released only once the backend no longer
                // maps them: now if it already says so, else when it
                // answers our Closing (see the Closing row).
                if Self::peer_released(self.peer) {
                    acts.push(Action::Teardown);
                } else {
                    acts.push(Action::Disconnect);
                }
                acts.push(Action::SwitchState(XenbusState::Closing));
                self.state = Front::Closing;
            }
            Front::Closing | Front::Closed => {}
        }
    }

    /// An action failed, or the driver found an error of its own (for
    /// example a malformed backend `state`, or a bad backend node in
    /// [`Action::ReadBackendNodes`]). From Initialising, Initialised or
    /// Connected: `[Teardown, SwitchState(Closing)]` if the backend's last
    /// state says it maps nothing ([`Self::peer_released`]), else
    /// `[Disconnect, SwitchState(Closing)]` and the Teardown comes when the
    /// backend answers. Nothing from Closing or Closed. The device then stays
    /// down: it does not reconnect on the next backend InitWait.
    pub fn on_local_error(&mut self) -> Actions {
        let mut acts = Actions::new();
        if !self.removed {
            self.close_on_error(&mut acts);
        }
        acts
    }

    /// The device is being removed (driver unbind, module unload, or the
    /// toolstack deleted the frontend directory):
    ///
    /// * Initialising: `[SwitchState(Closed)]`;
    /// * Initialised, Connected: `[SwitchState(Closing), AwaitPeerRelease,
    ///   Teardown, SwitchState(Closed)]`;
    /// * Closing: `[AwaitPeerRelease, Teardown, SwitchState(Closed)]`;
    /// * Closed: nothing.
    ///
    /// Every later event is ignored.
    pub fn on_remove(&mut self) -> Actions {
        let mut acts = Actions::new();
        if self.removed {
            return acts;
        }
        self.removed = true;
        match self.state {
            Front::Initialising => acts.push(Action::SwitchState(XenbusState::Closed)),
            Front::Initialised | Front::Connected => {
                acts.push(Action::SwitchState(XenbusState::Closing));
                acts.push(Action::AwaitPeerRelease);
                acts.push(Action::Teardown);
                acts.push(Action::SwitchState(XenbusState::Closed));
            }
            Front::Closing => {
                acts.push(Action::AwaitPeerRelease);
                acts.push(Action::Teardown);
                acts.push(Action::SwitchState(XenbusState::Closed));
            }
            Front::Closed => {}
        }
        self.state = Front::Closed;
        acts
    }
}

/// The states the backend rests in between events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Back {
    Initialising,
    InitWait,
    Connected,
    Closing,
    Closed,
}

impl Back {
    fn xenbus(self) -> XenbusState {
        match self {
            Self::Initialising => XenbusState::Initialising,
            Self::InitWait => XenbusState::InitWait,
            Self::Connected => XenbusState::Connected,
            Self::Closing => XenbusState::Closing,
            Self::Closed => XenbusState::Closed,
        }
    }
}

/// The backend's XenBus state machine.
///
/// # Invariants
///
/// Between events the backend is in Initialising (before
/// [`Self::start`]), InitWait, Connected, Closing or Closed. Once the
/// action list of an event has run, the session holds mappings only in
/// Connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendMachine {
    state: Back,
    peer: XenbusState,
    online: bool,
    started: bool,
    /// Set by a local or protocol error; cleared when a new frontend
    /// instance appears (frontend Initialising).
    failed: bool,
    removed: bool,
}

impl Default for BackendMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl BackendMachine {
    /// A machine for a device the toolstack created (state Initialising).
    pub const fn new() -> Self {
        Self {
            state: Back::Initialising,
            peer: XenbusState::Unknown,
            online: true,
            started: false,
            failed: false,
            removed: false,
        }
    }

    /// Our state.
    pub fn state(&self) -> XenbusState {
        self.state.xenbus()
    }

    /// The frontend state last delivered.
    pub fn peer(&self) -> XenbusState {
        self.peer
    }

    /// Whether an error stopped the device (until a new frontend
    /// instance appears).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Whether [`Self::on_remove`] was called; every later event is
    /// ignored.
    pub fn removed(&self) -> bool {
        self.removed
    }

    /// Whether a frontend in state `peer` holds no mapping of our pages
    /// (for [`Action::AwaitPeerRelease`]): Unknown, Initialising or Closed.
    /// (A frontend in Closing may still be on its way to Teardown.)
    pub fn peer_released(peer: XenbusState) -> bool {
        matches!(
            peer,
            XenbusState::Unknown | XenbusState::Initialising | XenbusState::Closed
        )
    }

    /// The driver instance starts (probe): `[PublishBackendNodes,
    /// SwitchState(InitWait)]`, followed by the answer to the frontend
    /// state delivered so far. Calling it again does nothing.
    pub fn start(&mut self) -> Actions {
        let mut acts = Actions::new();
        if self.started || self.removed {
            return acts;
        }
        self.started = true;
        self.rewait(&mut acts);
        self.step(self.peer, &mut acts);
        acts
    }

    /// The frontend's `state` changed (or its watch fired) and now reads
    /// `peer`; `online` is the current value of our `online` node
    /// ([`super::schema::read_online`]).
    ///
    /// Before [`Self::start`] and after [`Self::on_remove`] the state is
    /// only recorded. Otherwise (rows: our state; `ERR` is a protocol
    /// error: `[LogProtocolError, Teardown, SwitchState(Closing)]`; `ign`
    /// is no action):
    ///
    /// ```text
    /// frontend ->  Unknown Initialising InitWait Initialised Connected Closing Closed   Reconfiguring Reconfigured
    /// InitWait     ign     NEW          ERR      MAP         ign       CLOSING OFF      ign           ERR
    /// Connected    DROP    NEW+DROP     ERR      ign         ign       CLOSING DROP     DROP          ERR
    /// Closing      DONE    NEW+DONE     ign      ign         ign       ign     DONE     ign           ign
    /// Closed       ign     NEW+REWAIT   ign      ign         ign       ign     ign      ign           ign
    ///
    /// MAP     = MapRingsAndBind, SwitchState(Connected)
    /// CLOSING = Teardown (Connected only), SwitchState(Closing)
    /// OFF     = SwitchState(Closed) if online = 0, else ign
    /// DROP    = Teardown, then REWAIT if possible, else SwitchState(Closed)
    /// DONE    = SwitchState(Closed), then REWAIT if possible
    /// REWAIT  = PublishBackendNodes, SwitchState(InitWait)
    ///           -- "possible": online = 1 and no error stopped the device
    /// NEW     = a new frontend instance: clears the error latch
    /// ```
    ///
    /// Why: the frontend never writes InitWait or Reconfigured; a
    /// frontend Connected while we are InitWait belongs to an earlier
    /// backend instance and will recover through Reconfiguring; Initialised
    /// while we are Connected is the frontend that has not yet seen our
    /// Connected (a watch can deliver its state twice).
    pub fn on_peer_state(&mut self, peer: XenbusState, online: bool) -> Actions {
        let mut acts = Actions::new();
        self.peer = peer;
        self.online = online;
        if self.started && !self.removed {
            self.step(peer, &mut acts);
        }
        acts
    }

    fn step(&mut self, peer: XenbusState, acts: &mut Actions) {
        use XenbusState as S;
        if peer == S::Initialising {
            // A new frontend instance gets a new chance.
            self.failed = false;
        }
        match (self.state, peer) {
            // Not started: `start` answers the recorded state later.
            (Back::Initialising, _) => {}

            (Back::InitWait, S::Unknown | S::Initialising | S::Connected | S::Reconfiguring) => {}
            (Back::InitWait, S::Initialised) => {
                acts.push(Action::MapRingsAndBind);
                acts.push(Action::SwitchState(S::Connected));
                self.state = Back::Connected;
            }
            (Back::InitWait, S::Closing) => {
                acts.push(Action::SwitchState(S::Closing));
                self.state = Back::Closing;
            }
            (Back::InitWait, S::Closed) => {
                if !self.online {
                    acts.push(Action::SwitchState(S::Closed));
                    self.state = Back::Closed;
                }
            }
            (Back::InitWait, S::InitWait | S::Reconfigured) => self.protocol_error(peer, acts),

            (Back::Connected, S::Unknown | S::Initialising | S::Closed | S::Reconfiguring) => {
                acts.push(Action::Teardown);
                if !self.rewait(acts) {
                    acts.push(Action::SwitchState(S::Closed));
                    self.state = Back::Closed;
                }
            }
            (Back::Connected, S::Initialised | S::Connected) => {}
            (Back::Connected, S::Closing) => {
                acts.push(Action::Teardown);
                acts.push(Action::SwitchState(S::Closing));
                self.state = Back::Closing;
            }
            (Back::Connected, S::InitWait | S::Reconfigured) => self.protocol_error(peer, acts),

            (Back::Closing, S::Unknown | S::Initialising | S::Closed) => {
                acts.push(Action::SwitchState(S::Closed));
                self.state = Back::Closed;
                self.rewait(acts);
            }
            (
                Back::Closing,
                S::InitWait
                | S::Initialised
                | S::Connected
                | S::Closing
                | S::Reconfiguring
                | S::Reconfigured,
            ) => {}

            (Back::Closed, S::Initialising) => {
                self.rewait(acts);
            }
            (Back::Closed, _) => {}
        }
    }

    /// Goes back to InitWait if `online` and no error stopped the device;
    /// returns whether it did.
    fn rewait(&mut self, acts: &mut Actions) -> bool {
        if !self.online || self.failed {
            return false;
        }
        acts.push(Action::PublishBackendNodes);
        acts.push(Action::SwitchState(XenbusState::InitWait));
        self.state = Back::InitWait;
        true
    }

    fn protocol_error(&mut self, peer: XenbusState, acts: &mut Actions) {
        acts.push(Action::LogProtocolError {
            ours: self.state(),
            peer,
        });
        self.close_on_error(acts);
    }

    fn close_on_error(&mut self, acts: &mut Actions) {
        self.failed = true;
        match self.state {
            Back::Initialising | Back::InitWait | Back::Connected => {
                acts.push(Action::Teardown);
                acts.push(Action::SwitchState(XenbusState::Closing));
                self.state = Back::Closing;
            }
            Back::Closing | Back::Closed => {}
        }
    }

    /// An action failed, or the driver found an error of its own (for
    /// example a malformed frontend `state` or a bad frontend node in
    /// [`Action::MapRingsAndBind`]): `[Teardown, SwitchState(Closing)]`
    /// from Initialising, InitWait or Connected, nothing from Closing or
    /// Closed. The device does not go back to InitWait until a new
    /// frontend instance appears (frontend Initialising).
    pub fn on_local_error(&mut self) -> Actions {
        let mut acts = Actions::new();
        if !self.removed {
            self.close_on_error(&mut acts);
        }
        acts
    }

    /// Our `online` node changed and now reads `online` (the driver
    /// watches it).
    ///
    /// The toolstack removes a device by writing `online` = 0 and then our
    /// `state` = 5 itself, and waits for `state` = 6. A connected frontend
    /// sees that Closing and closes, and we follow it to Closed. A frontend
    /// that maps nothing (Unknown, Initialising or Closed) will not move,
    /// so we answer at once: `[Teardown, SwitchState(Closed)]` (Teardown
    /// only from Connected). Otherwise, and when `online` is 1, nothing.
    pub fn on_online_changed(&mut self, online: bool) -> Actions {
        let mut acts = Actions::new();
        self.online = online;
        if online || !self.started || self.removed || !Self::peer_released(self.peer) {
            return acts;
        }
        if self.state == Back::Connected {
            acts.push(Action::Teardown);
        }
        // Written even if we already are Closed: the toolstack overwrote
        // our state with Closing.
        acts.push(Action::SwitchState(XenbusState::Closed));
        self.state = Back::Closed;
        acts
    }

    /// The device is being removed (driver unbind, module unload, or the
    /// toolstack deleted the backend directory):
    ///
    /// * Initialising, InitWait: `[SwitchState(Closed)]` (nothing mapped);
    /// * Connected: `[Teardown, SwitchState(Closing), AwaitPeerRelease,
    ///   SwitchState(Closed)]` (we unmap first; the wait lets the frontend
    ///   unmap what we granted to it before we end access);
    /// * Closing: `[AwaitPeerRelease, SwitchState(Closed)]`;
    /// * Closed: nothing.
    ///
    /// Every later event is ignored.
    pub fn on_remove(&mut self) -> Actions {
        let mut acts = Actions::new();
        if self.removed {
            return acts;
        }
        self.removed = true;
        match self.state {
            Back::Initialising | Back::InitWait => {
                acts.push(Action::SwitchState(XenbusState::Closed))
            }
            Back::Connected => {
                acts.push(Action::Teardown);
                acts.push(Action::SwitchState(XenbusState::Closing));
                acts.push(Action::AwaitPeerRelease);
                acts.push(Action::SwitchState(XenbusState::Closed));
            }
            Back::Closing => {
                acts.push(Action::AwaitPeerRelease);
                acts.push(Action::SwitchState(XenbusState::Closed));
            }
            Back::Closed => {}
        }
        self.state = Back::Closed;
        acts
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec::Vec;

    use super::*;
    use XenbusState as S;

    /// Peer states in the column order of the tables.
    const COLS: [S; 9] = S::ALL;

    fn front_in(state: S, failed: bool) -> FrontendMachine {
        let mut m = FrontendMachine::new();
        let _ = m.start();
        match (state, failed) {
            (S::Initialising, false) => {}
            (S::Initialised, false) => {
                let _ = m.on_peer_state(S::InitWait);
            }
            (S::Connected, false) => {
                let _ = m.on_peer_state(S::InitWait);
                let _ = m.on_peer_state(S::Connected);
            }
            (S::Closing, true) => {
                let _ = m.on_peer_state(S::InitWait);
                let _ = m.on_local_error();
            }
            (S::Closed, false) => {
                let _ = m.on_peer_state(S::InitWait);
                let _ = m.on_peer_state(S::Closing);
            }
            (S::Closed, true) => {
                let _ = m.on_peer_state(S::InitWait);
                let _ = m.on_local_error();
                let _ = m.on_peer_state(S::Closed);
            }
            _ => unreachable!("test setup"),
        }
        assert_eq!((m.state(), m.failed()), (state, failed));
        m
    }

    fn expand(code: &str, ours: S, peer: S) -> Vec<Action> {
        use Action::*;
        let connect = [
            ReadBackendNodes,
            AllocRingsAndPublish,
            SwitchState(S::Initialised),
        ];
        let recover = [
            SwitchState(S::Reconfiguring),
            Teardown,
            SwitchState(S::Initialising),
        ];
        match code {
            "ign" => Vec::new(),
            // The bad peer state is never one that releases our pages.
            "ERR" => std::vec![
                LogProtocolError { ours, peer },
                Disconnect,
                SwitchState(S::Closing)
            ],
            "CONNECT" => connect.to_vec(),
            "UP" => std::vec![Connect, SwitchState(S::Connected)],
            "CLOSE" => std::vec![Teardown, SwitchState(S::Closing), SwitchState(S::Closed)],
            "RECOVER" => recover.to_vec(),
            "RECOV+C" => recover.iter().chain(&connect).copied().collect(),
            "DONE" => std::vec![Teardown, SwitchState(S::Closed)],
            other => panic!("unknown table code {other}"),
        }
    }

    /// The frontend table of the documentation, row by row.
    const FRONT_TABLE: [(S, bool, [&str; 9]); 6] = [
        (
            S::Initialising,
            false,
            [
                "ign", "ign", "CONNECT", "ERR", "ign", "ign", "ign", "ERR", "ERR",
            ],
        ),
        (
            S::Initialised,
            false,
            [
                "RECOVER", "RECOVER", "ign", "ERR", "UP", "CLOSE", "RECOVER", "ERR", "ERR",
            ],
        ),
        (
            S::Connected,
            false,
            [
                "RECOVER", "RECOVER", "RECOV+C", "ERR", "ign", "CLOSE", "RECOVER", "ERR", "ERR",
            ],
        ),
        (
            S::Closing,
            true,
            [
                "DONE", "DONE", "DONE", "ign", "ign", "DONE", "DONE", "ign", "ign",
            ],
        ),
        (
            S::Closed,
            false,
            [
                "ign", "ign", "CONNECT", "ign", "ign", "ign", "ign", "ign", "ign",
            ],
        ),
        (
            S::Closed,
            true,
            [
                "ign", "ign", "ign", "ign", "ign", "ign", "ign", "ign", "ign",
            ],
        ),
    ];

    #[test]
    fn frontend_table_matches_documentation() {
        for (ours, failed, row) in FRONT_TABLE {
            for (peer, code) in COLS.iter().zip(row) {
                let mut m = front_in(ours, failed);
                let acts = m.on_peer_state(*peer);
                assert!(!acts.overflowed());
                assert_eq!(
                    acts.as_slice(),
                    &expand(code, ours, *peer)[..],
                    "frontend {ours} (failed {failed}) sees {peer}"
                );
                if let Some(s) = acts.final_switch() {
                    assert_eq!(m.state(), s);
                }
                if acts.is_protocol_error() {
                    assert!(m.failed());
                }
            }
        }
    }

    fn back_in(state: S, failed: bool, online: bool) -> BackendMachine {
        let mut m = BackendMachine::new();
        let _ = m.start();
        match (state, failed) {
            (S::InitWait, false) => {}
            (S::Connected, false) => {
                let _ = m.on_peer_state(S::Initialised, true);
            }
            (S::Closing, false) => {
                let _ = m.on_peer_state(S::Initialised, true);
                let _ = m.on_peer_state(S::Closing, true);
            }
            (S::Closing, true) => {
                let _ = m.on_peer_state(S::Initialised, true);
                let _ = m.on_local_error();
            }
            (S::Closed, false) => {
                let _ = m.on_peer_state(S::Closed, false);
            }
            (S::Closed, true) => {
                let _ = m.on_local_error();
                let _ = m.on_peer_state(S::Closed, true);
            }
            _ => unreachable!("test setup"),
        }
        assert_eq!((m.state(), m.failed()), (state, failed));
        // The `online` value for the event under test.
        m.online = online;
        m
    }

    fn expand_back(code: &str, ours: S, peer: S, failed: bool, online: bool) -> Vec<Action> {
        use Action::*;
        let rewait_possible = online && (!failed || peer == S::Initialising);
        let rewait = || {
            if rewait_possible {
                std::vec![PublishBackendNodes, SwitchState(S::InitWait)]
            } else {
                Vec::new()
            }
        };
        match code {
            "ign" => Vec::new(),
            "ERR" => std::vec![
                LogProtocolError { ours, peer },
                Teardown,
                SwitchState(S::Closing)
            ],
            "MAP" => std::vec![MapRingsAndBind, SwitchState(S::Connected)],
            "CLOSING" if ours == S::Connected => std::vec![Teardown, SwitchState(S::Closing)],
            "CLOSING" => std::vec![SwitchState(S::Closing)],
            "OFF" if !online => std::vec![SwitchState(S::Closed)],
            "OFF" => Vec::new(),
            "DROP" => {
                let mut v = std::vec![Teardown];
                let r = rewait();
                if r.is_empty() {
                    v.push(SwitchState(S::Closed));
                }
                v.extend(r);
                v
            }
            "DONE" => {
                let mut v = std::vec![SwitchState(S::Closed)];
                v.extend(rewait());
                v
            }
            "REWAIT" => rewait(),
            other => panic!("unknown table code {other}"),
        }
    }

    /// The backend table of the documentation (NEW is implied by the
    /// Initialising column).
    const BACK_TABLE: [(S, bool, [&str; 9]); 6] = [
        (
            S::InitWait,
            false,
            [
                "ign", "ign", "ERR", "MAP", "ign", "CLOSING", "OFF", "ign", "ERR",
            ],
        ),
        (
            S::Connected,
            false,
            [
                "DROP", "DROP", "ERR", "ign", "ign", "CLOSING", "DROP", "DROP", "ERR",
            ],
        ),
        (
            S::Closing,
            false,
            [
                "DONE", "DONE", "ign", "ign", "ign", "ign", "DONE", "ign", "ign",
            ],
        ),
        (
            S::Closing,
            true,
            [
                "DONE", "DONE", "ign", "ign", "ign", "ign", "DONE", "ign", "ign",
            ],
        ),
        (
            S::Closed,
            false,
            [
                "ign", "REWAIT", "ign", "ign", "ign", "ign", "ign", "ign", "ign",
            ],
        ),
        (
            S::Closed,
            true,
            [
                "ign", "REWAIT", "ign", "ign", "ign", "ign", "ign", "ign", "ign",
            ],
        ),
    ];

    #[test]
    fn backend_table_matches_documentation() {
        for (ours, failed, row) in BACK_TABLE {
            for online in [false, true] {
                for (peer, code) in COLS.iter().zip(row) {
                    let mut m = back_in(ours, failed, online);
                    let acts = m.on_peer_state(*peer, online);
                    assert!(!acts.overflowed());
                    assert_eq!(
                        acts.as_slice(),
                        &expand_back(code, ours, *peer, failed, online)[..],
                        "backend {ours} (failed {failed}, online {online}) sees {peer}"
                    );
                    if let Some(s) = acts.final_switch() {
                        assert_eq!(m.state(), s);
                    }
                }
            }
        }
    }

    #[test]
    fn events_before_start_are_recorded_and_answered_by_start() {
        let mut f = FrontendMachine::new();
        assert!(f.on_peer_state(S::InitWait).is_empty());
        let acts = f.start();
        assert_eq!(
            acts.as_slice(),
            &[
                Action::SwitchState(S::Initialising),
                Action::ReadBackendNodes,
                Action::AllocRingsAndPublish,
                Action::SwitchState(S::Initialised)
            ]
        );
        assert!(f.start().is_empty());

        let mut b = BackendMachine::new();
        assert!(b.on_peer_state(S::Initialised, true).is_empty());
        let acts = b.start();
        assert_eq!(
            acts.as_slice(),
            &[
                Action::PublishBackendNodes,
                Action::SwitchState(S::InitWait),
                Action::MapRingsAndBind,
                Action::SwitchState(S::Connected)
            ]
        );
    }

    #[test]
    fn remove_paths() {
        let mut f = front_in(S::Connected, false);
        assert_eq!(
            f.on_remove().as_slice(),
            &[
                Action::SwitchState(S::Closing),
                Action::AwaitPeerRelease,
                Action::Teardown,
                Action::SwitchState(S::Closed)
            ]
        );
        assert!(f.on_remove().is_empty());
        for p in COLS {
            assert!(f.on_peer_state(p).is_empty());
        }
        assert!(f.on_local_error().is_empty());
        assert!(f.start().is_empty());
        assert_eq!(f.state(), S::Closed);

        let mut b = back_in(S::Connected, false, true);
        assert_eq!(
            b.on_remove().as_slice(),
            &[
                Action::Teardown,
                Action::SwitchState(S::Closing),
                Action::AwaitPeerRelease,
                Action::SwitchState(S::Closed)
            ]
        );
        for p in COLS {
            assert!(b.on_peer_state(p, true).is_empty());
        }
        assert_eq!(b.state(), S::Closed);

        assert_eq!(
            FrontendMachine::new().on_remove().as_slice(),
            &[Action::SwitchState(S::Closed)]
        );
        assert_eq!(
            front_in(S::Closing, true).on_remove().as_slice(),
            &[
                Action::AwaitPeerRelease,
                Action::Teardown,
                Action::SwitchState(S::Closed)
            ]
        );
        assert!(front_in(S::Closed, false).on_remove().is_empty());
        assert_eq!(
            back_in(S::InitWait, false, true).on_remove().as_slice(),
            &[Action::SwitchState(S::Closed)]
        );
        assert_eq!(
            back_in(S::Closing, true, true).on_remove().as_slice(),
            &[Action::AwaitPeerRelease, Action::SwitchState(S::Closed)]
        );
        assert!(back_in(S::Closed, false, true).on_remove().is_empty());
    }

    #[test]
    fn local_errors() {
        for s in [S::Initialising, S::Initialised, S::Connected] {
            let mut f = front_in(s, false);
            // A Connected backend may map our pages: Teardown waits.
            let expected: &[Action] = if s == S::Connected {
                &[Action::Disconnect, Action::SwitchState(S::Closing)]
            } else {
                &[Action::Teardown, Action::SwitchState(S::Closing)]
            };
            assert_eq!(f.on_local_error().as_slice(), expected);
            assert!(f.failed());
            if s == S::Connected {
                assert_eq!(f.on_peer_state(S::Connected).as_slice(), &[] as &[Action]);
                assert_eq!(
                    f.on_peer_state(S::Closing).as_slice(),
                    &[Action::Teardown, Action::SwitchState(S::Closed)]
                );
            }
            // A failed frontend does not reconnect by itself.
            let _ = f.on_peer_state(S::Closed);
            assert!(f.on_peer_state(S::InitWait).is_empty());
        }
        assert!(front_in(S::Closed, false).on_local_error().is_empty());
        for s in [S::InitWait, S::Connected] {
            let mut b = back_in(s, false, true);
            assert_eq!(
                b.on_local_error().as_slice(),
                &[Action::Teardown, Action::SwitchState(S::Closing)]
            );
            // No re-wait after an error of our own ...
            let acts = b.on_peer_state(S::Closed, true);
            assert_eq!(acts.as_slice(), &[Action::SwitchState(S::Closed)]);
            // ... until a new frontend instance appears.
            let acts = b.on_peer_state(S::Initialising, true);
            assert_eq!(acts.final_switch(), Some(S::InitWait));
            assert!(!b.failed());
        }
        let mut b = BackendMachine::new();
        assert_eq!(
            b.on_local_error().as_slice(),
            &[Action::Teardown, Action::SwitchState(S::Closing)]
        );
    }

    #[test]
    fn toolstack_offline() {
        // The frontend never loaded: answer the toolstack at once.
        let mut b = back_in(S::InitWait, false, true);
        assert_eq!(
            b.on_online_changed(false).as_slice(),
            &[Action::SwitchState(S::Closed)]
        );
        assert_eq!(b.state(), S::Closed);
        // No re-wait for a new frontend while offline.
        assert!(b.on_peer_state(S::Initialising, false).is_empty());
        // A connected frontend answers the toolstack's Closing itself.
        let mut b = back_in(S::Connected, false, true);
        assert!(b.on_online_changed(false).is_empty());
        assert_eq!(
            b.on_peer_state(S::Closed, false).as_slice(),
            &[Action::Teardown, Action::SwitchState(S::Closed)]
        );
        // Going online does nothing; before start nothing either.
        assert!(b.on_online_changed(true).is_empty());
        assert!(BackendMachine::new().on_online_changed(false).is_empty());
    }

    #[test]
    fn peer_released_sets() {
        let front_ok: Vec<S> = COLS
            .into_iter()
            .filter(|s| FrontendMachine::peer_released(*s))
            .collect();
        assert_eq!(
            front_ok,
            [
                S::Unknown,
                S::Initialising,
                S::InitWait,
                S::Closing,
                S::Closed
            ]
        );
        let back_ok: Vec<S> = COLS
            .into_iter()
            .filter(|s| BackendMachine::peer_released(*s))
            .collect();
        assert_eq!(back_ok, [S::Unknown, S::Initialising, S::Closed]);
    }

    #[test]
    fn actions_container() {
        let mut a = Actions::new();
        assert!(a.is_empty());
        for _ in 0..MAX_ACTIONS {
            a.push(Action::Teardown);
        }
        assert!(!a.overflowed());
        a.push(Action::Connect);
        assert!(a.overflowed());
        assert_eq!(a.len(), MAX_ACTIONS);
        assert_eq!(a.as_slice().last(), Some(&Action::Teardown));
        assert_eq!((&a).into_iter().count(), MAX_ACTIONS);
    }
}
