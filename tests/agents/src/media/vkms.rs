// SPDX-License-Identifier: MIT
//! vkms, the kernel's virtual KMS driver, as a display: a dma-buf
//! imported with PRIME becomes a framebuffer, an atomic commit puts it on
//! the primary plane, and the writeback connector gives the composed
//! frame back in a buffer of ours, whose fence says when it is there
//! (docs/kernel-notes.md, section 11.3).
//!
//! Through the `drm` crate; the mode is our own, 1280x720 at 10 Hz: vkms
//! simulates vblanks with a timer, which overruns at 60 Hz on the
//! platform's emulated CPUs, and each commit waits for one.

use std::cell::Cell;
use std::collections::HashMap;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use drm::buffer::{Buffer, DrmFourcc, DrmModifier, Handle as GemHandle, PlanarBuffer};
use drm::control::atomic::AtomicModeReq;
use drm::control::dumbbuffer::DumbBuffer;
use drm::control::property::{self, Value};
use drm::control::{
    connector, crtc, framebuffer, plane, AtomicCommitFlags, Device as ControlDevice, FbCmd2Flags,
    ResourceHandle,
};
use drm::{ClientCapability, Device as DrmDevice};

use super::card::Card;
use drm_ffi::drm_mode_modeinfo;
use hdmabuf::Failure;
use rustix::event::{poll, PollFd, PollFlags, Timespec};

/// The mode: CEA-861's 1280x720 timings with a sixth of the pixel clock,
/// 10 frames a second.
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const REFRESH_HZ: u32 = 10;

/// How long a commit's writeback may take before it counts as lost: it
/// normally takes two vblanks at 10 Hz and vkms's composition on an
/// emulated CPU (the demo's medians are 180 to 220 ms, the worst 480 ms).
const LOST_WRITEBACK: Duration = Duration::from_secs(5);

/// Commits of one frame's writeback before [`Display::show`] gives up.
const WRITEBACK_ATTEMPTS: u32 = 4;

fn kms_error(what: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::Error(format!("vkms: {what}: {e}"))
}

/// A property's handle on one object, by name.
fn property<H: ResourceHandle>(
    card: &Card,
    object: H,
    name: &str,
) -> Result<property::Handle, Failure> {
    let props = card
        .get_properties(object)
        .map_err(kms_error("reading properties"))?;
    let named: HashMap<String, property::Info> = props
        .as_hashmap(card)
        .map_err(kms_error("reading properties"))?;
    named
        .get(name)
        .map(property::Info::handle)
        .ok_or_else(|| Failure::Error(format!("vkms: no property {name}")))
}

/// A frame to show: a GEM object (a PRIME import), single-plane XRGB8888.
struct Frame {
    handle: GemHandle,
    pitch: u32,
}

impl PlanarBuffer for Frame {
    fn size(&self) -> (u32, u32) {
        (WIDTH, HEIGHT)
    }
    fn format(&self) -> DrmFourcc {
        DrmFourcc::Xrgb8888
    }
    fn modifier(&self) -> Option<DrmModifier> {
        None
    }
    fn pitches(&self) -> [u32; 4] {
        [self.pitch, 0, 0, 0]
    }
    fn handles(&self) -> [Option<GemHandle>; 4] {
        [Some(self.handle), None, None, None]
    }
    fn offsets(&self) -> [u32; 4] {
        [0; 4]
    }
}

/// A dma-buf made a framebuffer of vkms's ([`Display::framebuffer`]).
pub(crate) struct Shown {
    gem: GemHandle,
    fb: framebuffer::Handle,
}

/// The properties a commit sets.
struct Props {
    crtc_active: property::Handle,
    crtc_mode: property::Handle,
    plane_fb: property::Handle,
    plane_crtc: property::Handle,
    plane_geometry: [property::Handle; 8],
    wb_crtc: property::Handle,
    wb_fb: property::Handle,
    wb_fence: property::Handle,
}

/// vkms set up to show 1280x720 XRGB8888 frames and write each back.
pub(crate) struct Display {
    card: Card,
    crtc: crtc::Handle,
    plane: plane::Handle,
    writeback: connector::Handle,
    props: Props,
    mode: Value<'static>,
    wb_buffer: DumbBuffer,
    wb_fb: framebuffer::Handle,
    /// Whether the mode is set (the first commit sets it).
    lit: bool,
    /// Writeback fences not seen signalled yet.
    outstanding: Vec<OwnedFd>,
    /// Writebacks committed again ([`Display::show`]).
    lost_writebacks: u32,
}

impl Display {
    /// The frame size every framebuffer must have.
    pub(crate) const SIZE: (u32, u32) = (WIDTH, HEIGHT);

    /// Opens vkms's card (`modprobe vkms` first), becomes its master and
    /// finds its CRTC, primary plane and writeback connector.
    pub(crate) fn open() -> Result<Self, Failure> {
        let card = Card::open("vkms")?;
        card.set_client_capability(ClientCapability::Atomic, true)
            .map_err(kms_error("atomic modesetting"))?;
        // Only after ATOMIC: the other order is EINVAL.
        card.set_client_capability(ClientCapability::WritebackConnectors, true)
            .map_err(kms_error("writeback connectors"))?;
        let resources = card.resource_handles().map_err(kms_error("resources"))?;
        let crtc = *resources
            .crtcs()
            .first()
            .ok_or_else(|| Failure::Error("vkms: no CRTC".into()))?;
        let writeback = resources
            .connectors()
            .iter()
            .copied()
            .find(|&c| {
                card.get_connector(c, false)
                    .is_ok_and(|info| info.interface() == connector::Interface::Writeback)
            })
            .ok_or_else(|| {
                Failure::Error("vkms: no writeback connector (enable_writeback=1)".into())
            })?;
        let plane = primary_plane(&card)?;
        let props = Props {
            crtc_active: property(&card, crtc, "ACTIVE")?,
            crtc_mode: property(&card, crtc, "MODE_ID")?,
            plane_fb: property(&card, plane, "FB_ID")?,
            plane_crtc: property(&card, plane, "CRTC_ID")?,
            plane_geometry: [
                property(&card, plane, "SRC_X")?,
                property(&card, plane, "SRC_Y")?,
                property(&card, plane, "SRC_W")?,
                property(&card, plane, "SRC_H")?,
                property(&card, plane, "CRTC_X")?,
                property(&card, plane, "CRTC_Y")?,
                property(&card, plane, "CRTC_W")?,
                property(&card, plane, "CRTC_H")?,
            ],
            wb_crtc: property(&card, writeback, "CRTC_ID")?,
            wb_fb: property(&card, writeback, "WRITEBACK_FB_ID")?,
            wb_fence: property(&card, writeback, "WRITEBACK_OUT_FENCE_PTR")?,
        };
        let mode = card
            .create_property_blob(&mode_10hz())
            .map_err(kms_error("mode blob"))?;
        let wb_buffer = card
            .create_dumb_buffer((WIDTH, HEIGHT), DrmFourcc::Xrgb8888, 32)
            .map_err(kms_error("writeback buffer"))?;
        let wb_fb = card
            .add_framebuffer(&wb_buffer, 24, 32)
            .map_err(kms_error("writeback framebuffer"))?;
        Ok(Display {
            card,
            crtc,
            plane,
            writeback,
            props,
            mode,
            wb_buffer,
            wb_fb,
            lit: false,
            outstanding: Vec::new(),
            lost_writebacks: 0,
        })
    }

    /// Makes a framebuffer of `dmabuf` (1280x720 XRGB8888, `pitch` bytes
    /// a line), imported with PRIME.
    pub(crate) fn framebuffer(&self, dmabuf: BorrowedFd<'_>, pitch: u32) -> Result<Shown, Failure> {
        let gem = self
            .card
            .prime_fd_to_buffer(dmabuf)
            .map_err(kms_error("PRIME import"))?;
        let frame = Frame { handle: gem, pitch };
        match self
            .card
            .add_planar_framebuffer(&frame, FbCmd2Flags::empty())
        {
            Ok(fb) => Ok(Shown { gem, fb }),
            Err(e) => {
                let _ = self.card.close_buffer(gem);
                Err(kms_error("framebuffer")(e))
            }
        }
    }

    /// Drops a framebuffer made by [`Display::framebuffer`] and its GEM
    /// handle; vkms lets go of the dma-buf when no commit uses it.
    pub(crate) fn forget(&self, shown: Shown) -> Result<(), Failure> {
        let fb = self.card.destroy_framebuffer(shown.fb);
        let gem = self.card.close_buffer(shown.gem);
        fb.map_err(kms_error("removing a framebuffer"))?;
        gem.map_err(kms_error("closing a GEM handle"))
    }

    /// Puts `shown` on the plane (`None`: turns the plane off) and, when
    /// showing, writes the composed frame back; returns once it is
    /// written back.
    ///
    /// vkms composes at a vblank and signals the oldest writeback job it
    /// has queued. Now and then (a run in six of the release demo's
    /// first ones) a job is never composed: no vblank's composition
    /// takes it, though the plane's commit completed. A commit of the
    /// writeback alone gets the composer going again: so after
    /// [`LOST_WRITEBACK`] without one, the writeback is committed again,
    /// up to [`WRITEBACK_ATTEMPTS`] times, and the first of the
    /// outstanding fences to signal after the plane's commit says the
    /// frame is written back (every composition is of the plane as it
    /// is, into the one writeback buffer). The caller compares what it
    /// finds there pixel for pixel, so a frame taken too early fails
    /// rather than passes. [`Display::lost_writebacks`] counts them.
    pub(crate) fn show(&mut self, shown: Option<&Shown>) -> Result<(), Failure> {
        self.outstanding
            .retain(|fence| !signalled(fence, Duration::ZERO));
        let Some(frame) = shown else {
            let mut req = AtomicModeReq::new();
            req.add_property(self.plane, self.props.plane_fb, Value::Framebuffer(None));
            req.add_property(self.plane, self.props.plane_crtc, Value::CRTC(None));
            return self
                .card
                .atomic_commit(AtomicCommitFlags::empty(), req)
                .map_err(kms_error("atomic commit"));
        };
        let mut req = AtomicModeReq::new();
        let p = &self.props;
        req.add_property(self.plane, p.plane_fb, Value::Framebuffer(Some(frame.fb)));
        req.add_property(self.plane, p.plane_crtc, Value::CRTC(Some(self.crtc)));
        let geometry = [0, 0, WIDTH << 16, HEIGHT << 16, 0, 0, WIDTH, HEIGHT];
        for (&prop, value) in p.plane_geometry.iter().zip(geometry) {
            req.add_property(self.plane, prop, Value::UnsignedRange(u64::from(value)));
        }
        let mut flags = AtomicCommitFlags::empty();
        if !self.lit {
            req.add_property(self.crtc, p.crtc_mode, self.mode);
            req.add_property(self.crtc, p.crtc_active, Value::Boolean(true));
            req.add_property(self.writeback, p.wb_crtc, Value::CRTC(Some(self.crtc)));
            flags |= AtomicCommitFlags::ALLOW_MODESET;
        }
        self.commit_writeback(req, flags)?;
        self.lit = true;
        for attempt in 1..=WRITEBACK_ATTEMPTS {
            if let Some(done) = self
                .outstanding
                .iter()
                .position(|f| signalled(f, LOST_WRITEBACK))
            {
                self.outstanding.swap_remove(done);
                return Ok(());
            }
            if attempt == WRITEBACK_ATTEMPTS {
                break;
            }
            self.lost_writebacks += 1;
            self.commit_writeback(AtomicModeReq::new(), AtomicCommitFlags::empty())?;
        }
        Err(Failure::Timeout(format!(
            "vkms: no writeback after {WRITEBACK_ATTEMPTS} commits, {} s apart",
            LOST_WRITEBACK.as_secs()
        )))
    }

    /// Commits `req` with a writeback job into our buffer, whose fence
    /// joins the outstanding ones.
    fn commit_writeback(
        &mut self,
        mut req: AtomicModeReq,
        flags: AtomicCommitFlags,
    ) -> Result<(), Failure> {
        let fence = Cell::new(-1i32);
        req.add_property(
            self.writeback,
            self.props.wb_fb,
            Value::Framebuffer(Some(self.wb_fb)),
        );
        // The kernel writes the fence's descriptor there during the
        // commit; `fence` outlives it.
        let at = fence.as_ptr() as u64;
        req.add_property(
            self.writeback,
            self.props.wb_fence,
            Value::UnsignedRange(at),
        );
        self.card
            .atomic_commit(flags, req)
            .map_err(kms_error("atomic commit"))?;
        match fence.get() {
            -1 => Err(Failure::Error(
                "vkms: the commit gave no writeback fence".into(),
            )),
            fd => {
                // SAFETY: the commit made this descriptor for us alone.
                self.outstanding.push(unsafe { OwnedFd::from_raw_fd(fd) });
                Ok(())
            }
        }
    }

    /// How many writebacks [`Display::show`] had to commit again.
    pub(crate) fn lost_writebacks(&self) -> u32 {
        self.lost_writebacks
    }

    /// The frame written back by the last [`Display::show`]: `pitch`
    /// bytes a line, XRGB8888. Reading it through a mapping of vkms's
    /// own (a dumb buffer).
    pub(crate) fn written_back<T>(
        &mut self,
        read: impl FnOnce(&[u8], u32) -> T,
    ) -> Result<T, Failure> {
        let pitch = self.wb_buffer.pitch();
        let map = self
            .card
            .map_dumb_buffer(&mut self.wb_buffer)
            .map_err(kms_error("mapping the writeback buffer"))?;
        Ok(read(map.as_ref(), pitch))
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        // Turn everything off, then free what the card holds for us (the
        // rest goes when the file closes).
        let mut req = AtomicModeReq::new();
        req.add_property(self.plane, self.props.plane_fb, Value::Framebuffer(None));
        req.add_property(self.plane, self.props.plane_crtc, Value::CRTC(None));
        req.add_property(self.writeback, self.props.wb_crtc, Value::CRTC(None));
        req.add_property(self.crtc, self.props.crtc_active, Value::Boolean(false));
        req.add_property(self.crtc, self.props.crtc_mode, Value::Blob(0));
        let _ = self
            .card
            .atomic_commit(AtomicCommitFlags::ALLOW_MODESET, req);
        let _ = self.card.destroy_framebuffer(self.wb_fb);
        if let Value::Blob(blob) = self.mode {
            let _ = self.card.destroy_property_blob(blob);
        }
    }
}

/// The primary plane (vkms has one CRTC and one primary plane).
fn primary_plane(card: &Card) -> Result<plane::Handle, Failure> {
    const PRIMARY: u64 = 1; // DRM_PLANE_TYPE_PRIMARY
    let planes = card.plane_handles().map_err(kms_error("planes"))?;
    for &plane in &planes {
        let kind = property(card, plane, "type")?;
        let values = card
            .get_properties(plane)
            .map_err(kms_error("plane properties"))?;
        let is_primary = values
            .iter()
            .any(|(&prop, &value)| prop == kind && value == PRIMARY);
        if is_primary {
            return Ok(plane);
        }
    }
    Err(Failure::Error("vkms: no primary plane".into()))
}

/// 1280x720 at 10 Hz: CEA-861's 720p timings, pixel clock 74.25 MHz / 6.
fn mode_10hz() -> drm_mode_modeinfo {
    let mut name = [0; 32];
    for (to, from) in name.iter_mut().zip(b"1280x720@10") {
        *to = *from as core::ffi::c_char;
    }
    let mode = drm_mode_modeinfo {
        clock: 12_375,
        hdisplay: 1280,
        hsync_start: 1390,
        hsync_end: 1430,
        htotal: 1650,
        vdisplay: 720,
        vsync_start: 725,
        vsync_end: 730,
        vtotal: 750,
        vrefresh: REFRESH_HZ,
        flags: drm_ffi::DRM_MODE_FLAG_PHSYNC | drm_ffi::DRM_MODE_FLAG_PVSYNC,
        type_: drm_ffi::DRM_MODE_TYPE_USERDEF,
        name,
        ..drm_mode_modeinfo::default()
    };
    debug_assert_eq!(
        mode.clock * 1000 / (u32::from(mode.htotal) * u32::from(mode.vtotal)),
        REFRESH_HZ
    );
    mode
}

/// Whether a sync_file signals (turns readable) within `limit`.
fn signalled(fence: &OwnedFd, limit: Duration) -> bool {
    let timeout = Timespec::try_from(limit).unwrap_or(Timespec {
        tv_sec: i64::MAX,
        tv_nsec: 0,
    });
    let mut fds = [PollFd::new(fence, PollFlags::IN)];
    matches!(poll(&mut fds, Some(&timeout)), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_refreshes_ten_times_a_second() {
        let mode = mode_10hz();
        let frame = u32::from(mode.htotal) * u32::from(mode.vtotal);
        assert_eq!(mode.clock * 1000 % frame, 0);
        assert_eq!(mode.clock * 1000 / frame, 10);
        assert_eq!(
            (u32::from(mode.hdisplay), u32::from(mode.vdisplay)),
            Display::SIZE
        );
    }
}
