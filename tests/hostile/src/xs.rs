// SPDX-License-Identifier: MIT
//! Xenstore for the hostile peer and its referee: `hdmabuf-xl`'s client,
//! plus waiting for a node to reach a value (through a watch, with a
//! deadline), and the mailbox the two use to work in lockstep.

use std::time::{Duration, Instant};

use hdmabuf_xl::xsclient::{Transport, XsClient};
use hyper_dmabuf_xenbus_proto::{Store, Txn};

/// A xenstore connection.
pub(crate) struct Xs {
    client: XsClient<Transport>,
    watched: Vec<String>,
}

impl Xs {
    /// Connects to xenstored (socket in dom0, `/dev/xen/xenbus` in a domU).
    pub(crate) fn open() -> Result<Self, String> {
        let client = XsClient::open().map_err(|e| format!("xenstore: {e}"))?;
        Ok(Xs {
            client,
            watched: Vec::new(),
        })
    }

    /// The store, for `xenbus-proto`'s schema functions.
    pub(crate) fn store(&mut self) -> &mut XsClient<Transport> {
        &mut self.client
    }

    /// The value of `path`, `None` if absent.
    pub(crate) fn read(&mut self, path: &str) -> Result<Option<String>, String> {
        self.client
            .read_value(path)
            .map_err(|e| format!("reading {path}: {e}"))
    }

    /// Writes `value` (any bytes: the attacks write malformed ones).
    pub(crate) fn write(&mut self, path: &str, value: &str) -> Result<(), String> {
        self.client
            .write(Txn::NONE, path, value.as_bytes())
            .map_err(|e| format!("writing {path} = {value:?}: {e:?}"))
    }

    /// Removes `path` (absent is fine).
    pub(crate) fn remove(&mut self, path: &str) -> Result<(), String> {
        self.client
            .remove(Txn::NONE, path)
            .map_err(|e| format!("removing {path}: {e:?}"))
    }

    /// Watches `path` (once per connection).
    pub(crate) fn watch(&mut self, path: &str) -> Result<(), String> {
        if !self.watched.iter().any(|w| w == path) {
            self.client
                .watch(path, "hostile")
                .map_err(|e| format!("watching {path}: {e}"))?;
            self.watched.push(path.to_string());
        }
        Ok(())
    }

    /// Waits at most `step` for any watch event.
    pub(crate) fn settle(&mut self, step: Duration) -> Result<(), String> {
        self.client
            .next_event(step)
            .map(drop)
            .map_err(|e| format!("watch events: {e}"))
    }

    /// Waits until `done` accepts the value of `path` (re-read on every
    /// watch event, and at least every 200 ms in case an event was
    /// coalesced), at most `timeout`. Returns the accepted value.
    pub(crate) fn wait_for(
        &mut self,
        path: &str,
        timeout: Duration,
        mut done: impl FnMut(Option<&str>) -> bool,
    ) -> Result<Option<String>, String> {
        self.watch(path)?;
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.read(path)?;
            if done(value.as_deref()) {
                return Ok(value);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("{path} is {value:?} after {} s", timeout.as_secs()));
            }
            self.settle((deadline - now).min(Duration::from_millis(200)))?;
        }
    }
}

/// Where the hostile peer and the referee exchange commands:
/// `/local/domain/<hostile>/data/hostile/{cmd,ack}`. The hostile domain
/// owns its `data` directory; dom0 may write anywhere.
pub(crate) fn mailbox(hostile: u16) -> (String, String) {
    let dir = format!("/local/domain/{hostile}/data/hostile");
    (format!("{dir}/cmd"), format!("{dir}/ack"))
}

/// The referee's end of a mailbox: the commands, in order, and their
/// verdicts (`<seq> ok [more]`, or `<seq> <why not>`).
pub(crate) struct Inbox {
    cmd: String,
    ack: String,
    last: u64,
}

impl Inbox {
    /// The mailbox of domain `domid` (a verdict left there is removed).
    pub(crate) fn new(xs: &mut Xs, domid: u16) -> Result<Self, String> {
        let (cmd, ack) = mailbox(domid);
        xs.remove(&ack)?;
        Ok(Inbox { cmd, ack, last: 0 })
    }

    /// Waits, until `deadline`, for the next command: its number and text.
    pub(crate) fn next(&mut self, xs: &mut Xs, deadline: Instant) -> Result<(u64, String), String> {
        let last = self.last;
        let seq_of = |v: Option<&str>| {
            v.and_then(|v| v.split_once(' '))
                .and_then(|(s, _)| s.parse::<u64>().ok())
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let value = xs
            .wait_for(&self.cmd, left, |v| seq_of(v).is_some_and(|s| s > last))
            .map_err(|e| format!("no command came: {e}"))?;
        let seq = seq_of(value.as_deref()).unwrap_or(last + 1);
        self.last = seq;
        let text = value
            .as_deref()
            .and_then(|v| v.split_once(' '))
            .map_or("", |(_, c)| c);
        Ok((seq, text.to_string()))
    }

    /// Answers command `seq`.
    pub(crate) fn answer(
        &self,
        xs: &mut Xs,
        seq: u64,
        verdict: &Result<(), String>,
    ) -> Result<(), String> {
        let text = match verdict {
            Ok(()) => "ok",
            Err(e) => e.as_str(),
        };
        xs.write(&self.ack, &format!("{seq} {text}"))
    }
}
