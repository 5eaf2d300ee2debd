//! In-memory sockets: each direction of a TCP connection is a bounded queue with FIN and reset.

use super::*;

/// One direction of a TCP connection: a bounded byte queue with FIN and reset.
#[derive(Debug, Default)]
pub(super) struct Pipe {
    pub(super) data: VecDeque<u8>,
    /// The socket buffer: most bytes in flight.
    pub(super) cap: usize,
    /// The writer shut down its write half; the reader gets EOF after the data.
    pub(super) fin: bool,
    /// The writer reset the connection; the reader gets an error after the data.
    pub(super) reset: bool,
    /// The reader is gone (reset or closed): writes fail.
    pub(super) reader_gone: bool,
    pub(super) written: u64,
    pub(super) read: u64,
    /// Every byte written, while someone wants to look at the stream afterwards.
    pub(super) history: Option<Vec<u8>>,
}

impl Pipe {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap,
            ..Self::default()
        }
    }

    pub(super) fn room(&self) -> usize {
        self.cap.saturating_sub(self.data.len())
    }

    pub(super) fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        self.data.extend(&bytes[..n]);
        if let Some(h) = &mut self.history {
            h.extend_from_slice(&bytes[..n]);
        }
        self.written += n as u64;
        n
    }

    pub(super) fn pull(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        let n = max.min(self.data.len());
        out.extend(self.data.drain(..n));
        self.read += n as u64;
        n
    }

    pub(super) fn summary(&self) -> String {
        format!(
            "[{}/{} w{} r{}{}{}{}]",
            self.data.len(),
            self.cap,
            self.written,
            self.read,
            if self.fin { " fin" } else { "" },
            if self.reset { " rst" } else { "" },
            if self.reader_gone { " gone" } else { "" },
        )
    }
}

/// `Write` into a pipe, at most `max` bytes a call (`WouldBlock` when full).
pub(super) struct PipeWriter<'a> {
    pub(super) pipe: &'a mut Pipe,
    pub(super) max: usize,
}

impl Write for PipeWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pipe.reader_gone {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let n = self.pipe.push(&buf[..buf.len().min(self.max)]);
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `Read` from a pipe, at most `max` bytes a call.
pub(super) struct PipeReader<'a> {
    pub(super) pipe: &'a mut Pipe,
    pub(super) max: usize,
}

impl Read for PipeReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pipe.data.is_empty() {
            return if self.pipe.reset {
                Err(io::ErrorKind::ConnectionReset.into())
            } else if self.pipe.fin {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = out.len().min(self.max).min(self.pipe.data.len());
        for (o, b) in out.iter_mut().zip(self.pipe.data.drain(..n)) {
            *o = b;
        }
        self.pipe.read += n as u64;
        Ok(n)
    }
}
