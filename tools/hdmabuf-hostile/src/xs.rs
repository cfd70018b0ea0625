//! Xenstore for the hostile peer and its referee: `hdmabuf`'s client,
//! plus waiting for a node to reach a value (through a watch, with a
//! deadline), and the mailbox the two use to work in lockstep.

use std::time::{Duration, Instant};

use hdmabuf::xsclient::{Transport, XsClient};
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
