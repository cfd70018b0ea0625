// SPDX-License-Identifier: MIT
//! The messages of the benchmark's [`Link`](super::link::Link), by the
//! code each carries on the wire (the `kind` of its header).

/// A message kind.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Msg {
    /// The first message, from the joining side.
    Hello = 0x4845_4c4f,
    // Exporter to importer.
    /// Measures the link's round trip: answered by [`Msg::Pong`].
    Ping = 1,
    /// A case of the `ours` path follows (the size in `value`).
    CaseOurs = 2,
    /// A case of the `gntdev` path follows.
    CaseGntdev = 3,
    /// A case of the `floor` path follows.
    CaseFloor = 4,
    /// A case of the `copy` path follows.
    CaseCopy = 5,
    /// A swapchain run of the `ours` path follows.
    SwapOurs = 6,
    /// A swapchain run of the `gntdev` path follows.
    SwapGntdev = 7,
    /// A swapchain run of the `copy` path follows.
    SwapCopy = 8,
    /// Grant references, little-endian `u32`s in the payload.
    Refs = 9,
    /// The bytes of the copy path, in the payload.
    Data = 10,
    /// Let go of the case's buffers: answered by [`Msg::Released`].
    Release = 11,
    /// A swapchain frame (buffer in `arg`, frame number in `value`).
    Frame = 12,
    /// The case cannot go on: answered by [`Msg::Failed`].
    Abort = 13,
    /// The end of the benchmark.
    Done = 14,
    // Importer to exporter.
    /// The answer to [`Msg::Ping`].
    Pong = 32,
    /// Ready for the case announced.
    Ready = 33,
    /// A step done; its figures in the payload, little-endian `u64`s.
    Ack = 34,
    /// The case's buffers are let go.
    Released = 35,
    /// The case failed; why, in the payload.
    Failed = 36,
}

impl Msg {
    /// Every kind, for decoding.
    const ALL: [Msg; 20] = [
        Msg::Hello,
        Msg::Ping,
        Msg::CaseOurs,
        Msg::CaseGntdev,
        Msg::CaseFloor,
        Msg::CaseCopy,
        Msg::SwapOurs,
        Msg::SwapGntdev,
        Msg::SwapCopy,
        Msg::Refs,
        Msg::Data,
        Msg::Release,
        Msg::Frame,
        Msg::Abort,
        Msg::Done,
        Msg::Pong,
        Msg::Ready,
        Msg::Ack,
        Msg::Released,
        Msg::Failed,
    ];
}

impl From<Msg> for u32 {
    fn from(kind: Msg) -> u32 {
        kind as u32
    }
}

impl TryFrom<u32> for Msg {
    /// The code no kind has.
    type Error = u32;

    fn try_from(code: u32) -> Result<Self, u32> {
        Msg::ALL
            .into_iter()
            .find(|&kind| u32::from(kind) == code)
            .ok_or(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for kind in Msg::ALL {
            assert_eq!(Msg::try_from(u32::from(kind)), Ok(kind));
        }
        let codes: std::collections::BTreeSet<u32> = Msg::ALL.into_iter().map(u32::from).collect();
        assert_eq!(codes.len(), Msg::ALL.len(), "codes are distinct");
        for code in [0, 15, 31, 37, u32::MAX] {
            assert_eq!(Msg::try_from(code), Err(code));
        }
    }
}
