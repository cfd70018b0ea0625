// SPDX-License-Identifier: GPL-2.0

//! Log lines a peer can trigger, each charged to that peer's budget
//! (`common::logbudget`: a burst, then a line every few seconds, kept
//! across the peer's sessions and keyed by its exact domain id); and the
//! lines no peer causes that could still come in floods (a local process,
//! a driver bug in a fault handler), charged to one budget of the
//! driver's own. The C shim prints nothing of these: it reports, and the
//! budgets here decide.

use kernel::alloc::flags::GFP_NOWAIT;
use kernel::prelude::*;
use kernel::rbtree::{RBTree, RBTreeNodeReservation};
use kernel::sync::{new_mutex, Mutex};

use super::common::logbudget::{LogBudget, Verdict};
use super::common::xen::DomId;
use crate::{ffi, stats};

/// How bad a line is.
#[derive(Clone, Copy)]
pub(crate) enum Level {
    /// `pr_err`: the driver is at fault.
    Err,
    /// `pr_warn`: the peer did something wrong, or we could not serve it.
    Warn,
    /// `pr_info`: a normal event the peer decides the rate of.
    Info,
}

/// Every peer's budget, by domain id; only peers that logged recently.
/// And the driver's own.
#[pin_data]
pub(crate) struct PeerLogs {
    #[pin]
    budgets: Mutex<RBTree<u16, LogBudget>>,
    #[pin]
    local: Mutex<LogBudget>,
}

impl PeerLogs {
    /// No budget spent yet.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(PeerLogs {
            budgets <- new_mutex!(RBTree::new(), "PeerLogs::budgets"),
            local <- new_mutex!(LogBudget::new(ffi::now_ms()), "PeerLogs::local"),
        })
    }

    /// Prints the line `args`, which no peer caused, if the driver's own
    /// budget allows. What it suppresses is not counted in
    /// `log_lines_suppressed`, which counts the peers' lines.
    pub(crate) fn local_line(&self, level: Level, args: core::fmt::Arguments<'_>) {
        let verdict = self.local.lock().admit(ffi::now_ms());
        match verdict {
            Verdict::Print { suppressed: 0 } => print(level, args),
            Verdict::Print { suppressed } => print(
                level,
                format_args!("{} ({} earlier lines suppressed)", args, suppressed),
            ),
            Verdict::Suppress => {}
        }
    }

    /// Prints the line `args` about `peer` if its budget allows.
    pub(crate) fn line(&self, peer: DomId, level: Level, args: core::fmt::Arguments<'_>) {
        let now = ffi::now_ms();
        // Allocated before locking, without waiting for memory (a
        // connection's lock may be held: `conn::UNDER_LOCK`); without it
        // the line is dropped.
        let node = RBTreeNodeReservation::new(GFP_NOWAIT).ok();
        let verdict = {
            let mut budgets = self.budgets.lock();
            forget_idle(&mut budgets, now);
            match (budgets.get_mut(&peer.get()), node) {
                (Some(budget), _) => budget.admit(now),
                (None, Some(node)) => {
                    let mut budget = LogBudget::new(now);
                    let verdict = budget.admit(now);
                    budgets.insert(node.into_node(peer.get(), budget));
                    verdict
                }
                (None, None) => Verdict::Suppress,
            }
        };
        let suppressed = match verdict {
            Verdict::Print { suppressed } => suppressed,
            Verdict::Suppress => {
                stats::LOG_SUPPRESSED.inc();
                return;
            }
        };
        if suppressed == 0 {
            print(level, args);
        } else {
            print(
                level,
                format_args!(
                    "{} ({} earlier lines about dom{} suppressed)",
                    args,
                    suppressed,
                    peer.get()
                ),
            );
        }
    }
}

/// Prints one line at `level`.
fn print(level: Level, args: core::fmt::Arguments<'_>) {
    match level {
        Level::Err => pr_err!("{}\n", args),
        Level::Warn => pr_warn!("{}\n", args),
        Level::Info => pr_info!("{}\n", args),
    }
}

/// Drops the budgets that are full again: a fresh one is the same.
fn forget_idle(budgets: &mut RBTree<u16, LogBudget>, now: u64) {
    let mut cursor = budgets.cursor_front();
    while let Some(c) = cursor {
        cursor = if c.current().1.is_idle(now) {
            c.remove_current().0
        } else {
            c.move_next()
        };
    }
}
