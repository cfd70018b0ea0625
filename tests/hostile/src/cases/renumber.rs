// SPDX-License-Identifier: MIT
//! A peer whose driver was reloaded numbers its buffers from 1 again, and
//! another implementation may unload while the victim still maps one of
//! its buffers. The victim's import of the previous session then lives
//! on, orphaned, under the same number as the new session's first buffer:
//! the victim must accept the new buffer (the orphan moves aside, still
//! found by its full id), keep both readable, and keep them apart when
//! they are released: the orphan's release must not reach the new
//! session, where a RELEASE of that number would end the new buffer.

use std::time::{Duration, Instant};

use hyper_dmabuf_client::testing::pattern;
use hyper_dmabuf_common::id::HyperDmabufId;
use hyper_dmabuf_common::limits::XEN_PAGE_SIZE;
use hyper_dmabuf_common::wire::{MapEpoch, Message, Request, VERSION_3};
use hyper_dmabuf_common::xen::Status;
use hyper_dmabuf_xenbus_proto::XenbusState;

use super::{dir_page, expect_status, put_page, root_over, Ctx, Expect, REFEREE_ANSWER};
use crate::ffi::{self, Granted};
use crate::limits::scaled;
use crate::peer::{Conn, ANSWER};

/// The number both sessions give their first buffer.
const NUMBER: u64 = 1;

/// Pages of each buffer.
const PAGES: u32 = 4;

/// Bytes of each buffer.
const SIZE: u64 = PAGES as u64 * XEN_PAGE_SIZE as u64;

/// The patterns of the first session's buffer and of the second's.
const OLD_SEED: u64 = 31;
const NEW_SEED: u64 = 32;

/// How long we go on listening once the requests we wait for came (or,
/// when none may come, at all).
const LINGER: Duration = Duration::from_secs(2);

/// A buffer of ours the victim can import: data pages holding a
/// pattern and their root page, granted read-only to the victim.
struct Readable<'g> {
    _data: Granted<'g>,
    root: Granted<'g>,
}

impl<'g> Readable<'g> {
    fn new(ctx: &Ctx<'g>, seed: u64) -> Result<Self, String> {
        let data = ffi::grant_pages(ctx.gntalloc, ctx.dev.backend_id, PAGES, false)
            .map_err(|e| format!("gntalloc: {e}"))?;
        let mut bytes = vec![0u8; SIZE as usize];
        pattern::fill(seed, &mut bytes);
        put_page(data.words(), &bytes);
        let root = dir_page(ctx, &root_over(SIZE, data.grefs(), |_| {})?)?;
        Ok(Readable { _data: data, root })
    }

    /// Announces it as `hid`; the victim must answer `want`.
    fn announce(
        &self,
        ctx: &mut Ctx<'_>,
        conn: &mut Conn<'_>,
        hid: HyperDmabufId,
        what: &str,
        want: Status,
    ) -> Result<(), String> {
        let slot = ctx.export(hid, SIZE, self.root.grefs()[0]);
        expect_status(what, conn.ask(&slot)?, want)
    }
}

/// The victim's requests in one session, each answered OK.
#[derive(Default)]
struct Asked(Vec<Message>);

impl Asked {
    /// Answers what the victim sent, noting it.
    fn take(&mut self, conn: &mut Conn<'_>) -> Result<(), String> {
        let mut bad = None;
        conn.serve_noting(|slot| match Request::decode(slot, u64::MAX, VERSION_3) {
            Ok(request) => self.0.push(request.message),
            Err(e) => bad = Some(format!("the victim sent a request we cannot decode: {e:?}")),
        })?;
        bad.map_or(Ok(()), Err)
    }

    /// Has the referee judge `command`, answering the victim meanwhile.
    fn judged(
        &mut self,
        ctx: &mut Ctx<'_>,
        conn: &mut Conn<'_>,
        command: &str,
    ) -> Result<(), String> {
        let seq = ctx.post(command)?;
        ctx.await_referee(seq, command, scaled(REFEREE_ANSWER), |_, _| self.take(conn))
    }

    /// Waits for the victim to have sent `want` in this session (at most
    /// [`ANSWER`]), listens [`LINGER`] more, and then it must have sent
    /// exactly that.
    fn expect(&mut self, conn: &mut Conn<'_>, want: &[Message]) -> Result<(), String> {
        let deadline = Instant::now() + scaled(ANSWER);
        let mut linger_until = None;
        loop {
            self.take(conn)?;
            let now = Instant::now();
            if linger_until.is_none() && (self.0.len() >= want.len() || now >= deadline) {
                linger_until = Some(now + LINGER);
            }
            if linger_until.is_some_and(|t| now >= t) {
                break;
            }
            conn.wait(Duration::from_millis(100))?;
        }
        if self.0 == want {
            Ok(())
        } else {
            Err(format!(
                "the victim sent {:?} in this session, expected {want:?}",
                self.0
            ))
        }
    }
}

/// Closes the session as an unloading frontend does: Closing, and Closed
/// once the backend closes too; it then waits for a new instance.
fn unload(ctx: &mut Ctx<'_>) -> Result<(), String> {
    ctx.dev.set_state(&mut ctx.xs, XenbusState::Closing)?;
    ctx.await_closing()?;
    ctx.dev.set_state(&mut ctx.xs, XenbusState::Closed)?;
    ctx.dev.await_backend(&mut ctx.xs, XenbusState::InitWait)
}

/// Buffer [`NUMBER`] of a session, with a key of its own.
fn numbered(ctx: &mut Ctx<'_>) -> HyperDmabufId {
    HyperDmabufId::new(NUMBER, *ctx.hid().key()).expect("NUMBER is not zero")
}

/// We announce buffer 1 with one key; the referee imports it and keeps
/// reading it while our "driver" unloads and reloads (a new session),
/// and the new session announces buffer 1 again with another key.
pub(super) fn renumber(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let old_buffer = Readable::new(ctx, OLD_SEED)?;
    let new_buffer = Readable::new(ctx, NEW_SEED)?;
    let (old, new) = (numbered(ctx), numbered(ctx));
    if old == new {
        return Err("two random keys are equal".into());
    }
    let mapped = |hid| Message::Mapped {
        hid,
        epoch: MapEpoch::FIRST,
    };
    let released = |hid| Message::Release {
        hid,
        epoch: MapEpoch::FIRST,
    };

    // The first session: the victim imports and maps `old`.
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    let mut asked = Asked::default();
    old_buffer.announce(ctx, &mut conn, old, "EXPORT", Status::Ok)?;
    asked.judged(ctx, &mut conn, &format!("map old {old} {OLD_SEED} {SIZE}"))?;
    asked.expect(&mut conn, &[mapped(old)])?;
    asked.judged(ctx, &mut conn, &format!("imports 1 {PAGES} 1"))?;
    // Unloaded under the mapping: the import lives on, orphaned, and our
    // grants with it.
    unload(ctx)?;
    drop(rings);
    ctx.dev.reset(&mut ctx.xs)?;
    ctx.referee("verify old", None)?;
    ctx.referee("listed old unexported", None)?;
    ctx.referee(&format!("imports 1 {PAGES} 1"), None)?;

    // The reloaded driver numbers from 1 again. The old full id stays
    // taken, whether its import still holds the number or has moved
    // aside for the new buffer.
    let rings = ctx.rings()?;
    let mut conn = ctx.connect(&rings)?;
    let mut asked = Asked::default();
    let c = &mut conn;
    old_buffer.announce(ctx, c, old, "EXPORT of the orphan's id", Status::Exists)?;
    new_buffer.announce(ctx, c, new, "EXPORT of its number", Status::Ok)?;
    old_buffer.announce(ctx, c, old, "EXPORT of the id moved aside", Status::Exists)?;
    // The orphan cannot be imported again; the new buffer can.
    asked.judged(ctx, c, &format!("import {old} ENOENT"))?;
    asked.judged(ctx, c, &format!("map new {new} {NEW_SEED} {SIZE}"))?;
    asked.expect(c, &[mapped(new)])?;
    for command in [
        "verify old",
        "listed old unexported",
        "listed new live",
        &format!("imports 2 {} 2", 2 * PAGES),
        // The orphan let go: forgotten, and nothing of it reaches this
        // session, where it would release buffer 1.
        "unmap old",
        "listed old gone",
        &format!("imports 1 {PAGES} 1"),
        "verify new",
        "listed new live",
    ] {
        asked.judged(ctx, c, command)?;
    }
    asked.expect(c, &[mapped(new)])?;
    drop(old_buffer);
    asked.judged(ctx, c, "unmap new")?;
    asked.expect(c, &[mapped(new), released(new)])?;
    asked.judged(ctx, c, "imports 1 0 0")?;
    let unexport = ctx.request(Message::Unexport(new));
    expect_status("UNEXPORT", c.ask(&unexport)?, Status::Ok)?;
    ctx.referee("imports 0 0 0", None)?;
    println!(
        "renumber: buffer {NUMBER} announced as {old}, orphaned mapped, then as {new}: \
         both read their patterns, one RELEASE (of the new one)"
    );
    // Two connections, each logged when made and when closed.
    Ok(Expect {
        info_lines: Some(4),
        ..Expect::QUIET
    })
}
