//! The file handle the checks write through.
//!
//! With the `engine` feature (the default once flexio::File exists) this is the engine's
//! `flexio::File`. Without it, a stand-in over `std::fs::File` that is durable by
//! construction (sync after every write when the file system offers MAP_SYNC): it exists
//! only to exercise the lane's orchestration before the engine lands.

use std::io;
use std::path::Path;

pub trait Store: Sized {
    fn create(path: &Path) -> io::Result<Self>;
    /// A new file in failure-atomic mode (`O_FLEX_ATOMIC`).
    fn create_atomic(path: &Path) -> io::Result<Self>;
    fn open(path: &Path) -> io::Result<Self>;
    fn open_read(path: &Path) -> io::Result<Self>;
    fn write_all_at(&mut self, buf: &[u8], off: u64) -> io::Result<()>;
    fn read_all(&mut self) -> io::Result<Vec<u8>>;
    fn sync_data(&mut self) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn granularity(&self) -> &'static str;
    /// Is the engine serving the file from a mapping (not left to the kernel)?
    fn mapped(&self) -> bool;
}

pub fn recover(path: &Path) -> io::Result<()> {
    imp::recover(path)
}

/// The engine's fallback reasons with their counts so far, as in FLEX_STATS.
pub fn fallbacks() -> String {
    imp::fallbacks()
}

pub const BACKEND: &str = imp::NAME;
pub use imp::Handle;

#[cfg(feature = "engine")]
mod imp {
    use super::Store;
    use std::io::{self, Read, Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    pub const NAME: &str = "flexio::File";
    pub struct Handle(flexio::File);

    pub fn recover(path: &Path) -> io::Result<()> {
        flexio::recover(path).map(|_| ())
    }

    pub fn fallbacks() -> String {
        let j = flexio::flex_engine::runtime::engine().stats.to_json();
        let key = "\"fallbacks\":";
        j.find(key)
            .map(|i| &j[i + key.len()..])
            .and_then(|r| r.find('}').map(|e| r[..=e].to_string()))
            .unwrap_or_else(|| "?".into())
    }

    impl Store for Handle {
        fn create(path: &Path) -> io::Result<Self> {
            flexio::File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
                .map(Handle)
        }
        fn create_atomic(path: &Path) -> io::Result<Self> {
            flexio::File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .atomic(true)
                .open(path)
                .map(Handle)
        }
        fn open(path: &Path) -> io::Result<Self> {
            flexio::File::options()
                .read(true)
                .write(true)
                .open(path)
                .map(Handle)
        }
        fn open_read(path: &Path) -> io::Result<Self> {
            flexio::File::open(path).map(Handle)
        }
        fn write_all_at(&mut self, buf: &[u8], off: u64) -> io::Result<()> {
            self.0.write_all_at(buf, off)
        }
        fn read_all(&mut self) -> io::Result<Vec<u8>> {
            let mut v = Vec::new();
            self.0.seek(SeekFrom::Start(0))?;
            self.0.read_to_end(&mut v)?;
            Ok(v)
        }
        fn sync_data(&mut self) -> io::Result<()> {
            self.0.sync_data()
        }
        fn set_len(&mut self, len: u64) -> io::Result<()> {
            self.0.set_len(len)
        }
        fn len(&self) -> io::Result<u64> {
            self.0.len()
        }
        fn granularity(&self) -> &'static str {
            self.0.granularity().as_str()
        }
        fn mapped(&self) -> bool {
            self.0.is_mapped()
        }
    }
}

#[cfg(not(feature = "engine"))]
mod imp {
    use super::Store;
    use std::io;
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    pub const NAME: &str = "std::fs::File stand-in (no engine)";
    pub struct Handle {
        f: std::fs::File,
        cache_line: bool,
        unsafe_mode: bool,
    }

    pub fn recover(_path: &Path) -> io::Result<()> {
        Ok(())
    }

    pub fn fallbacks() -> String {
        "none (no engine)".into()
    }

    fn wrap(f: std::fs::File) -> io::Result<Handle> {
        let len = f.metadata()?.len();
        if len < 4096 {
            f.set_len(4096)?;
        }
        let cache_line = crate::probe::map_sync(&f).is_ok();
        // Negative control for the lane: claim cache-line but never sync, so power cuts
        // must be caught losing data (FLEX_DAXCHECK_UNSAFE=1, stand-in only).
        let unsafe_mode = std::env::var_os("FLEX_DAXCHECK_UNSAFE").is_some();
        if len < 4096 {
            f.set_len(len)?;
        }
        Ok(Handle {
            f,
            cache_line,
            unsafe_mode,
        })
    }

    impl Store for Handle {
        fn create(path: &Path) -> io::Result<Self> {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)?;
            let h = wrap(f)?;
            if h.cache_line && !h.unsafe_mode {
                // Emulate "durable on return" for the new file's directory entry too.
                std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()?;
            }
            Ok(h)
        }
        fn create_atomic(path: &Path) -> io::Result<Self> {
            // No engine, no log: the stand-in's per-write sync is all it has.
            Self::create(path)
        }
        fn open(path: &Path) -> io::Result<Self> {
            wrap(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)?,
            )
        }
        fn open_read(path: &Path) -> io::Result<Self> {
            // Read-only: no MAP_SYNC probe (it would need to extend the file).
            Ok(Handle {
                f: std::fs::File::open(path)?,
                cache_line: false,
                unsafe_mode: false,
            })
        }
        fn write_all_at(&mut self, buf: &[u8], off: u64) -> io::Result<()> {
            self.f.write_all_at(buf, off)?;
            if self.cache_line && !self.unsafe_mode {
                self.f.sync_data()?;
            }
            Ok(())
        }
        fn read_all(&mut self) -> io::Result<Vec<u8>> {
            let mut v = vec![0; self.f.metadata()?.len() as usize];
            self.f.read_exact_at(&mut v, 0)?;
            Ok(v)
        }
        fn sync_data(&mut self) -> io::Result<()> {
            self.f.sync_data()
        }
        fn set_len(&mut self, len: u64) -> io::Result<()> {
            self.f.set_len(len)
        }
        fn len(&self) -> io::Result<u64> {
            Ok(self.f.metadata()?.len())
        }
        fn granularity(&self) -> &'static str {
            if self.cache_line {
                "cache-line"
            } else {
                "page"
            }
        }
        fn mapped(&self) -> bool {
            false
        }
    }
}
