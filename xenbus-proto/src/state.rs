// SPDX-License-Identifier: MIT
//! `enum xenbus_state` of Xen's `io/xenbus.h`.

use core::fmt;

/// The state of one end of a split device, as written in its `state` node.
///
/// The numbers are those of Xen's `io/xenbus.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XenbusState {
    /// 0: the `state` node is absent or unreadable. Never written.
    Unknown,
    /// 1: the end is being set up (written by the toolstack when it creates
    /// the device, and by a driver instance when it starts).
    Initialising,
    /// 2: the backend published its parameters and waits for the frontend.
    InitWait,
    /// 3: the frontend published its rings and waits for the backend.
    Initialised,
    /// 4: the rings are mapped and in use.
    Connected,
    /// 5: the end is shutting down and asks the other to do the same.
    Closing,
    /// 6: the end holds no shared resources.
    Closed,
    /// 7: the frontend lost its backend and is releasing the old session.
    Reconfiguring,
    /// 8: not used by this protocol.
    Reconfigured,
}

impl XenbusState {
    /// Every state, in numeric order.
    pub const ALL: [Self; 9] = [
        Self::Unknown,
        Self::Initialising,
        Self::InitWait,
        Self::Initialised,
        Self::Connected,
        Self::Closing,
        Self::Closed,
        Self::Reconfiguring,
        Self::Reconfigured,
    ];

    /// The number written in the `state` node.
    pub const fn as_u32(self) -> u32 {
        match self {
            Self::Unknown => 0,
            Self::Initialising => 1,
            Self::InitWait => 2,
            Self::Initialised => 3,
            Self::Connected => 4,
            Self::Closing => 5,
            Self::Closed => 6,
            Self::Reconfiguring => 7,
            Self::Reconfigured => 8,
        }
    }

    /// The state with number `v`, if any (0 gives [`Self::Unknown`]).
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Unknown,
            1 => Self::Initialising,
            2 => Self::InitWait,
            3 => Self::Initialised,
            4 => Self::Connected,
            5 => Self::Closing,
            6 => Self::Closed,
            7 => Self::Reconfiguring,
            8 => Self::Reconfigured,
            _ => return None,
        })
    }

    /// The name Linux's `xenbus_strstate` prints.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unknown => "Unknown",
            Self::Initialising => "Initialising",
            Self::InitWait => "InitWait",
            Self::Initialised => "Initialised",
            Self::Connected => "Connected",
            Self::Closing => "Closing",
            Self::Closed => "Closed",
            Self::Reconfiguring => "Reconfiguring",
            Self::Reconfigured => "Reconfigured",
        }
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
