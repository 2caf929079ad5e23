//! The file operations the embedded log's durability rests on, behind a trait so that tests can
//! make each one fail deterministically (a failed or short write, a failed fsync, a flipped bit on
//! read) and check what the log does about it. Production uses [`Disk`], the default methods.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

pub trait Storage: Send + Sync + 'static {
    /// Appends all of `buf` at the end of `file` (opened for appending).
    fn append(&self, file: &File, buf: &[u8]) -> io::Result<()> {
        (&*file).write_all(buf)
    }

    /// Makes what was appended durable (`fdatasync`).
    fn sync(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    /// Fills `buf` from `file` at byte `pos`.
    fn read_at(&self, file: &File, buf: &mut [u8], pos: u64) -> io::Result<()> {
        file.read_exact_at(buf, pos)
    }
}

/// The real disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disk;

impl Storage for Disk {}

/// Whether an I/O error means "no space left" (ENOSPC, EDQUOT), however it was built: the code is
/// lost when an error is re-created from its kind, so the kind is checked too.
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
        || matches!(e.raw_os_error(), Some(28) | Some(122))
}
