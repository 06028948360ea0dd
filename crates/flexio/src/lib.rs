//! FLEX for Rust programs: [`File`] serves reads and writes from a memory mapping of the
//! file, with the durability of the mapping's granularity, through the standard
//! `Read`/`Write`/`Seek` and `FileExt` traits. The same engine serves unmodified programs
//! through `libflex.so` (see `flexio run`).
//!
//! ```no_run
//! use std::io::{Read, Write};
//! let mut f = flexio::File::create("/dev/shm/example")?;
//! f.write_all(b"hello")?;
//! f.sync_data()?; // page granularity: really syncs; cache-line (DAX): only if metadata changed
//! let mut s = String::new();
//! flexio::File::open("/dev/shm/example")?.read_to_string(&mut s)?;
//! # Ok::<(), std::io::Error>(())
//! ```

use flex_engine::posix;
use flex_engine::sys::{Errno, Res};
use std::ffi::CString;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub mod snapshot;

pub use flex_engine;
pub use flex_engine::persist::Granularity;
pub use flex_engine::trailer::Recovery;

fn err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Options to open a [`File`], as `std::fs::OpenOptions`.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    append: bool,
    truncate: bool,
    create: bool,
    create_new: bool,
    mode: u32,
    atomic: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenOptions {
    pub fn new() -> Self {
        OpenOptions {
            read: false,
            write: false,
            append: false,
            truncate: false,
            create: false,
            create_new: false,
            mode: 0o666,
            atomic: false,
        }
    }
    pub fn read(&mut self, v: bool) -> &mut Self {
        self.read = v;
        self
    }
    pub fn write(&mut self, v: bool) -> &mut Self {
        self.write = v;
        self
    }
    pub fn append(&mut self, v: bool) -> &mut Self {
        self.append = v;
        self
    }
    pub fn truncate(&mut self, v: bool) -> &mut Self {
        self.truncate = v;
        self
    }
    pub fn create(&mut self, v: bool) -> &mut Self {
        self.create = v;
        self
    }
    pub fn create_new(&mut self, v: bool) -> &mut Self {
        self.create_new = v;
        self
    }
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode;
        self
    }
    /// Failure-atomic mode (`O_FLEX_ATOMIC`): after a crash the file is as it was at its
    /// last `sync_all`/`sync_data` or close.
    pub fn atomic(&mut self, v: bool) -> &mut Self {
        self.atomic = v;
        self
    }

    fn flags(&self) -> io::Result<i32> {
        let write = self.write || self.append;
        let mut f = match (self.read, write) {
            (true, false) => libc::O_RDONLY,
            (false, true) => libc::O_WRONLY,
            (true, true) => libc::O_RDWR,
            (false, false) => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        if self.append {
            f |= libc::O_APPEND;
        }
        if self.truncate {
            if !write || self.append {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            f |= libc::O_TRUNC;
        }
        if self.create_new {
            f |= libc::O_CREAT | libc::O_EXCL;
        } else if self.create {
            f |= libc::O_CREAT;
        }
        Ok(f | libc::O_CLOEXEC)
    }

    pub fn open<P: AsRef<Path>>(&self, path: P) -> io::Result<File> {
        let flags = self.flags()?;
        let p = CString::new(path.as_ref().as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let extra = if self.atomic {
            flex_engine::O_FLEX_ATOMIC
        } else {
            0
        };
        let r = posix::open(
            libc::AT_FDCWD,
            &p,
            flags | flex_engine::O_FLEX | extra,
            self.mode,
        )
        .or_kernel(|| flex_engine::sys::openat(libc::AT_FDCWD, &p, flags, self.mode));
        r.map(|fd| File { fd }).map_err(err)
    }
}

/// A file served by FLEX. Unlike `std::fs::File`, data moves through a memory mapping;
/// files that cannot be mapped (not regular, or a file system without mmap) are served by
/// the kernel with the same semantics.
#[derive(Debug)]
pub struct File {
    fd: RawFd,
}

/// Call the engine; calls it passes (descriptors it does not manage) go to the kernel.
fn call<T>(r: posix::Route<T>, kernel: impl FnOnce() -> Res<T>) -> io::Result<T> {
    r.or_kernel(kernel).map_err(err)
}

impl File {
    pub fn open<P: AsRef<Path>>(path: P) -> io::Result<File> {
        OpenOptions::new().read(true).open(path)
    }
    pub fn create<P: AsRef<Path>>(path: P) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }
    pub fn options() -> OpenOptions {
        OpenOptions::new()
    }

    /// How writes become durable: `CacheLine` on DAX with MAP_SYNC (a write is durable
    /// when it returns), `Page` elsewhere (durable after `sync_data`/`sync_all`).
    pub fn granularity(&self) -> Granularity {
        posix::granularity(self.fd).unwrap_or(Granularity::Page)
    }

    /// Is the engine serving this file (false: not a regular file, or mmap refused)?
    pub fn is_mapped(&self) -> bool {
        posix::granularity(self.fd).is_some()
    }

    pub fn sync_all(&self) -> io::Result<()> {
        call(posix::fsync(self.fd, false), || {
            flex_engine::sys::fsync(self.fd)
        })
    }
    pub fn sync_data(&self) -> io::Result<()> {
        call(posix::fsync(self.fd, true), || {
            flex_engine::sys::fdatasync(self.fd)
        })
    }
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        call(posix::ftruncate(self.fd, len), || {
            flex_engine::sys::ftruncate(self.fd, len as u64)
        })
    }
    /// The logical size of the file.
    pub fn len(&self) -> io::Result<u64> {
        let st = flex_engine::sys::fstat(self.fd).map_err(err)?;
        let mut size = st.st_size;
        posix::fstat_fix(self.fd, st.st_dev, st.st_ino, &mut size);
        Ok(size as u64)
    }
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl AsRawFd for File {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl Drop for File {
    fn drop(&mut self) {
        // Closing the last description makes the kernel's size exact.
        if posix::close(self.fd).is_pass() {
            let _ = flex_engine::sys::close(self.fd);
        }
    }
}

impl Read for &File {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a live, exclusively borrowed slice of buf.len() bytes.
        call(
            unsafe { posix::read(self.fd, buf.as_mut_ptr(), buf.len()) },
            || {
                // SAFETY: as above.
                unsafe { flex_engine::sys::read(self.fd, buf.as_mut_ptr(), buf.len()) }
            },
        )
    }
}

impl Write for &File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a live slice of buf.len() bytes.
        call(
            unsafe { posix::write(self.fd, buf.as_ptr(), buf.len()) },
            || {
                // SAFETY: as above.
                unsafe { flex_engine::sys::write(self.fd, buf.as_ptr(), buf.len()) }
            },
        )
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for &File {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let (off, whence) = match pos {
            SeekFrom::Start(o) => (
                i64::try_from(o).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
                libc::SEEK_SET,
            ),
            SeekFrom::Current(o) => (o, libc::SEEK_CUR),
            SeekFrom::End(o) => (o, libc::SEEK_END),
        };
        call(posix::lseek(self.fd, off, whence), || {
            flex_engine::sys::lseek(self.fd, off, whence).map(|v| v as i64)
        })
        .map(|v| v as u64)
    }
}

impl Read for File {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}
impl Write for File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl Seek for File {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        (&*self).seek(pos)
    }
}

impl std::os::unix::fs::FileExt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `buf` is a live, exclusively borrowed slice.
        call(
            unsafe { posix::pread(self.fd, buf.as_mut_ptr(), buf.len(), off) },
            || {
                // SAFETY: as above.
                unsafe { flex_engine::sys::pread(self.fd, buf.as_mut_ptr(), buf.len(), offset) }
            },
        )
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `buf` is a live slice.
        call(
            unsafe { posix::pwrite(self.fd, buf.as_ptr(), buf.len(), off) },
            || {
                // SAFETY: as above.
                unsafe { flex_engine::sys::pwrite(self.fd, buf.as_ptr(), buf.len(), offset) }
            },
        )
    }
}

/// Trim a file left over-allocated by a crashed writer to its exact logical size.
/// Flex also does this at the next open. Idempotent.
/// Failure-atomic files (`FLEX_MODE=atomic`) are first rolled forward to their last
/// committed state from their log (see [`recover_atomic`]).
pub fn recover<P: AsRef<Path>>(path: P) -> io::Result<Recovery> {
    recover_atomic(path.as_ref())?;
    let p = CString::new(path.as_ref().as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    flex_engine::trailer::recover_path(&p).map_err(err)
}

/// Replay the failure-atomic log of `path`, if any (`<mount root>/.flex-atomic/<ino>.log`,
/// or `$HOME/.flex-atomic/` as a fallback; a `.<name>.flexlog` beside the file left by an
/// older version is replayed first): the file becomes exactly its last committed state
/// and the log is removed. Idempotent.
/// `Ok(None)`: no log. EBUSY: a live process has the file open in atomic mode.
pub fn recover_atomic<P: AsRef<Path>>(
    path: P,
) -> io::Result<Option<flex_engine::atomic::protocol::Replayed>> {
    let p = CString::new(path.as_ref().as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let fd = flex_engine::sys::openat(
        libc::AT_FDCWD,
        &p,
        libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0,
    )
    .map_err(err)?;
    let r = flex_engine::atomic::recover_fd(libc::AT_FDCWD, &p, fd);
    let _ = flex_engine::sys::close(fd);
    r.map_err(err)
}

/// Where `libflex.so` is: `FLEX_LIB`, or beside the running executable (cargo builds
/// both into the same target directory), or beside its parent (test binaries in deps/).
pub fn preload_library() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("FLEX_LIB") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("libflex.so"), dir.parent()?.join("libflex.so")]
        .into_iter()
        .find(|p| p.exists())
}
