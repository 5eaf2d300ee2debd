//! Cutting a byte stream into tunnel frames (reference §3).
//!
//! A peer's binary WebSocket payload is one continuous stream of frames: one WebSocket message
//! may hold several frames or part of one (localproxy sends one frame per message, fragmented
//! into 4096-byte WebSocket frames; the reference lets a relay join or split them). The
//! decoder borrows each frame that lies whole in the input and copies only the bytes of a
//! frame split across inputs, so its state is at most one frame ([`MAX_FRAME`] bytes).

use super::{Error, LENGTH_PREFIX, MAX_FRAME, Message};

/// Cuts a byte stream into frames. Feed it every byte of the stream, in order, with
/// [`FrameDecoder::handle_bytes`]; take the frames out of the [`Frames`] it returns.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// The start of a frame split across inputs, prefix included; empty between frames.
    partial: Vec<u8>,
    /// `partial` holds a whole frame that was handed out: clear it before going on.
    handed_out: bool,
}

impl FrameDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Call with each piece of the stream as it arrives (say each WebSocket frame's unmasked
    /// payload); then call [`Frames::next_frame`] until it returns `None`, which means every
    /// byte of `input` is used: it is in the frames handed out or held for the next call.
    /// Bytes of `input` not reached when the [`Frames`] is dropped are not taken.
    #[must_use = "the frames are taken out with next_frame"]
    pub fn handle_bytes<'d, 'i>(&'d mut self, input: &'i [u8]) -> Frames<'d, 'i> {
        self.finish_handed_out();
        Frames {
            decoder: self,
            input,
        }
    }

    /// Bytes held of a frame that is not whole yet.
    pub fn buffered(&self) -> usize {
        if self.handed_out {
            0
        } else {
            self.partial.len()
        }
    }

    /// Whether the stream is between frames: a stream that ends here ends cleanly; one that
    /// ends elsewhere was cut inside a frame.
    pub fn is_between_frames(&self) -> bool {
        self.buffered() == 0
    }

    fn finish_handed_out(&mut self) {
        if self.handed_out {
            self.handed_out = false;
            self.partial.clear();
        }
    }

    /// The frame length `partial` will have, if its prefix is complete.
    fn partial_target(&self) -> Option<usize> {
        let prefix = self.partial.get(..LENGTH_PREFIX)?;
        Some(LENGTH_PREFIX + usize::from(u16::from_be_bytes([prefix[0], prefix[1]])))
    }
}

/// The frames of one input, in order. Borrows the decoder and the input.
#[derive(Debug)]
pub struct Frames<'d, 'i> {
    decoder: &'d mut FrameDecoder,
    input: &'i [u8],
}

impl Frames<'_, '_> {
    /// The next whole frame, or `None` once the input is used up (a frame's start may then be
    /// held for the next input). The frame is borrowed from the input when it lies whole in
    /// it, else from the decoder's buffer.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        let decoder = &mut *self.decoder;
        decoder.finish_handed_out();
        if decoder.partial.is_empty() {
            if let Some(prefix) = self.input.get(..LENGTH_PREFIX) {
                let len = LENGTH_PREFIX + usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
                if let Some(bytes) = self.input.get(..len) {
                    self.input = &self.input[len..];
                    return Some(Frame { bytes });
                }
            }
        }
        // A frame split across inputs: gather its bytes.
        while !self.input.is_empty() {
            let target = decoder.partial_target().unwrap_or(LENGTH_PREFIX);
            let take = (target - decoder.partial.len()).min(self.input.len());
            if decoder.partial.is_empty() {
                decoder.partial.reserve_exact(if take < LENGTH_PREFIX {
                    LENGTH_PREFIX
                } else {
                    target
                });
            } else if target > decoder.partial.capacity() {
                decoder
                    .partial
                    .reserve_exact(target - decoder.partial.len());
            }
            decoder.partial.extend_from_slice(&self.input[..take]);
            self.input = &self.input[take..];
            if decoder.partial_target() == Some(decoder.partial.len()) {
                decoder.handed_out = true;
                debug_assert!(decoder.partial.len() <= MAX_FRAME);
                return Some(Frame {
                    bytes: &decoder.partial,
                });
            }
        }
        if decoder.partial.is_empty() {
            // Between frames: release the buffer, so an idle peer costs none.
            decoder.partial = Vec::new();
        }
        None
    }
}

/// One tunnel frame: the length prefix and the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    bytes: &'a [u8],
}

impl<'a> Frame<'a> {
    /// The whole frame, prefix included: what a relay forwards unchanged.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The message, without the prefix.
    pub fn message_bytes(&self) -> &'a [u8] {
        &self.bytes[LENGTH_PREFIX..]
    }

    /// Decodes the message ([`Message::decode`]), borrowing from the frame.
    pub fn decode(&self) -> Result<Message<'a>, Error> {
        Message::decode(self.message_bytes())
    }
}
