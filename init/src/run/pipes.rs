//! The containers' (and the update agent's) output pipes as the loop reads them: non-blocking, at most
//! [`READ_BUDGET`] bytes per wakeup so one chatty container cannot starve the
//! rest, each line to the console and the container's log file.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use super::output::{self, LineSplitter};
use super::{EventLoop, Managed, Pipe};
use crate::shared::logfile::LogFile;

/// Bytes read from one pipe per wakeup, so one chatty container cannot starve the
/// others (or the signals).
const READ_BUDGET: usize = 64 * 1024;

/// One pipe of a running container and the line it is in the middle of.
#[derive(Debug)]
pub(super) struct Stream {
    pipe: File,
    lines: LineSplitter,
}

impl Stream {
    /// The pipe, for `poll`.
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }
}

/// A pipe from the runtime, made non-blocking so a read never stops the loop.
pub(super) fn stream(fd: OwnedFd) -> Option<Stream> {
    if let Err(errno) = fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)) {
        log!("making a container pipe non-blocking: {errno}");
        return None;
    }
    Some(Stream {
        pipe: File::from(fd),
        lines: LineSplitter::default(),
    })
}

impl EventLoop {
    /// Reads what a container's pipe holds and prints it line by line. At end of
    /// stream, or when `closing` (the container ended), the pipe is closed after
    /// the last partial line.
    pub(super) fn pump(&mut self, index: usize, pipe: Pipe, closing: bool) {
        let Some(managed) = self.containers.get_mut(index) else {
            return;
        };
        let Managed {
            name, streams, log, ..
        } = managed;
        pump_stream(name, &mut streams[pipe as usize], log.as_mut(), closing);
    }

    /// [`EventLoop::pump`] for the update agent's pipes.
    pub(super) fn pump_agent(&mut self, pipe: Pipe, closing: bool) {
        if let Some(agent) = self.agent.as_mut() {
            pump_stream(
                super::agent::NAME,
                &mut agent.streams[pipe as usize],
                agent.log.as_mut(),
                closing,
            );
        }
    }
}

/// Reads what one pipe holds, each line to the console as `[name] …` and to
/// `log`; closes the pipe at its end or when `closing`.
fn pump_stream(
    name: &str,
    slot: &mut Option<Stream>,
    mut log: Option<&mut LogFile>,
    closing: bool,
) {
    let Some(stream) = slot.as_mut() else {
        return;
    };
    let mut emit = |line: &[u8]| {
        crate::log::write_console(&output::prefixed(name, line));
        if let Some(log) = log.as_mut() {
            log.write_line(line);
        }
    };
    let mut buf = [0u8; 4096];
    // At the end, take everything that is there (within reason: a leftover
    // process could keep writing).
    let mut budget = if closing {
        16 * READ_BUDGET
    } else {
        READ_BUDGET
    };
    let mut eof = false;
    while budget > 0 {
        match stream.pipe.read(&mut buf) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => {
                stream.lines.push(&buf[..n], &mut emit);
                budget = budget.saturating_sub(n);
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) if err.kind() == ErrorKind::WouldBlock => break,
            Err(_) => {
                eof = true;
                break;
            }
        }
    }
    if eof || closing {
        stream.lines.finish(&mut emit);
        *slot = None;
    }
}
