// SPDX-License-Identifier: MIT
//! A DRM device (`/dev/dri/card*`), found by its driver's name: vgem's
//! and vkms's, through the `drm` crate.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};

use drm::control::Device as ControlDevice;
use drm::Device as DrmDevice;
use hdmabuf::Failure;

/// An open DRM card.
pub(crate) struct Card(File);

impl AsFd for Card {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl DrmDevice for Card {}
impl ControlDevice for Card {}

impl Card {
    /// Opens the card whose driver is `driver` (`modprobe` it first).
    pub(crate) fn open(driver: &str) -> Result<Self, Failure> {
        let cards = std::fs::read_dir("/dev/dri")
            .map_err(|e| Failure::Error(format!("/dev/dri: {e} (is {driver} loaded?)")))?;
        for entry in cards.flatten() {
            if !entry.file_name().to_string_lossy().starts_with("card") {
                continue;
            }
            let Ok(file) = OpenOptions::new().read(true).write(true).open(entry.path()) else {
                continue;
            };
            let card = Card(file);
            if card.get_driver().is_ok_and(|d| d.name() == driver) {
                return Ok(card);
            }
        }
        Err(Failure::Error(format!(
            "no DRM device of {driver} in /dev/dri: modprobe {driver}"
        )))
    }
}
