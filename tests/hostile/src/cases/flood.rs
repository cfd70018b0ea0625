// SPDX-License-Identifier: MIT
//! Floods that cost the victim time rather than memory: reconnecting
//! again and again (every connection and disconnection is a line of its
//! log, charged to this domain's budget), and keeping its ring of answers
//! full (the victim answers a bounded number per pass, so that a local
//! process and the other peers still get their turn).

use std::time::{Duration, Instant};

use hdmabuf_agent::rng::Rng;
use hyper_dmabuf_common::limits::MAX_RING_PAGE_ORDER;
use hyper_dmabuf_common::wire::{self, Message, Request, Response, Slot};
use hyper_dmabuf_common::xen::Status;
use hyper_dmabuf_xenbus_proto::XenbusState;

use super::{random_hid, still_serves, Ctx, Expect, REFEREE_ANSWER};
use crate::limits::scaled;
use crate::peer::Rings;

/// How long the referee measures latency, with this domain idle and
/// then while it floods.
const MEASURE_SECONDS: u64 = 15;

/// Cycles the device Closing → Closed → Initialising → connected
/// (`--reconnects` times), as fast as the backend follows: each
/// connection and each disconnection makes the victim want to log a line
/// about us. The referee checks that the lines it printed and those it
/// suppressed add up to that number, and that it printed no more than our
/// budget allows; then a request on the last connection shows the backend
/// still serves. A new instance would grant new rings; we keep ours (our
/// nodes stay as published), which takes fewer xenstore round trips, so
/// more cycles a second: the backend maps them and binds our port again
/// each time all the same.
pub(super) fn reconnect_flood(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let cycles = ctx.reconnects;
    let t0 = Instant::now();
    let rings = ctx.rings()?;
    ctx.connect(&rings)?;
    use XenbusState as S;
    // Our state, then the backend's answer to wait for.
    const CYCLE: [(S, Option<S>); 5] = [
        (S::Closing, Some(S::Closing)),
        (S::Closed, Some(S::InitWait)),
        (S::Initialising, None),
        (S::Initialised, Some(S::Connected)),
        (S::Connected, None),
    ];
    for cycle in 0..cycles {
        for (ours, theirs) in CYCLE {
            if ours == S::Initialised {
                // The backend has unmapped the rings: they start afresh.
                rings.reinit()?;
            }
            ctx.dev.set_state(&mut ctx.xs, ours)?;
            match theirs {
                // It may be Closed already.
                Some(S::Closing) => ctx.await_closing(),
                Some(state) => ctx.dev.await_backend(&mut ctx.xs, state),
                None => Ok(()),
            }
            .map_err(|e| format!("cycle {cycle}: {e}"))?;
        }
    }
    let took = t0.elapsed();
    println!(
        "reconnect-flood: {cycles} cycles in {:.1} s",
        took.as_secs_f64()
    );
    still_serves(ctx, &mut rings.conn()?, "the reconnections")?;
    // One connection before the cycles and one per cycle, each
    // disconnected (the last by the reset that ends the case).
    Ok(Expect {
        info_lines: Some(2 * (u64::from(cycles) + 1)),
        reconnects: Some((cycles, took.as_millis() as u64)),
        ..Expect::QUIET
    })
}

/// UNEXPORTs of ids nobody exported: valid requests, each answered
/// `NoSuchBuffer`, neither counted as an error nor logged.
struct Unknown {
    rng: Rng,
    req_id: u32,
}

impl Unknown {
    fn slot(&mut self) -> Slot {
        self.req_id = self.req_id.wrapping_add(1);
        Request {
            req_id: self.req_id,
            message: Message::Unexport(random_hid(&mut self.rng)),
        }
        .encode()
    }
}

fn no_such_buffer(raw: &Slot) -> Result<(), String> {
    let rsp = Response::decode(raw).map_err(|e| format!("a flood response: {e:?}"))?;
    if rsp.status == Status::NoSuchBuffer && rsp.op == wire::Op::Unexport as u8 {
        Ok(())
    } else {
        Err(format!("a flood request was answered {rsp:?}"))
    }
}

/// Connects with the largest rings the backend allows and keeps the ring
/// it answers on full: each slot whose answer came is refilled at once.
/// The referee measures what a local process and the well-behaved peer
/// wait for, first with this domain connected and idle, then while it
/// floods; the flood runs until the referee has judged.
pub(super) fn refill_flood(ctx: &mut Ctx<'_>) -> Result<Expect, String> {
    let negotiated = ctx.dev.negotiate_order(&mut ctx.xs, MAX_RING_PAGE_ORDER)?;
    let rings = Rings::with_order(ctx.gntalloc, &ctx.dev, negotiated.ring_page_order)?;
    let nodes = rings.nodes(&negotiated)?;
    let mut conn = rings.connect(&mut ctx.xs, &ctx.dev, &nodes)?;
    ctx.referee(
        &format!("measure baseline {MEASURE_SECONDS}"),
        Some(&mut conn),
    )?;
    let mut unknown = Unknown {
        rng: Rng::new(ctx.rng.next_u64()),
        req_id: 0,
    };
    let command = format!("measure flood {MEASURE_SECONDS}");
    let t0 = Instant::now();
    // The ring fills first; then the referee is asked to measure, and the
    // flood goes on until it has answered.
    let mut posted = None;
    let mut verdict = None;
    let mut look_at = t0 + Duration::from_secs(1);
    let answered = conn.refill(
        || unknown.slot(),
        no_such_buffer,
        || {
            if verdict.is_some() {
                return Ok(false);
            }
            let now = Instant::now();
            if now < look_at {
                return Ok(true);
            }
            look_at = now + Duration::from_millis(200);
            match posted {
                None => posted = Some(ctx.post(&command)?),
                Some(seq) => verdict = ctx.verdict(seq)?,
            }
            if verdict.is_none()
                && now > t0 + Duration::from_secs(MEASURE_SECONDS) + scaled(REFEREE_ANSWER)
            {
                return Err(format!("the referee did not answer {command:?}"));
            }
            Ok(verdict.is_none())
        },
    )?;
    let took = t0.elapsed().as_secs_f64();
    println!(
        "refill-flood: {answered} requests answered in {took:.1} s ({:.0}/s), ring of {} slots",
        answered as f64 / took,
        conn.size()
    );
    verdict.ok_or("the flood ended without the referee's verdict")??;
    Ok(Expect::QUIET)
}
