//! The facts flex needs of a file's file system, asked once per inode.

use super::holes::PAGE_SZ;
use crate::posix::Pass;
use crate::sys;
use rustix::fd::RawFd;

const TMPFS_MAGIC: i64 = 0x0102_1994;

/// What flex needs to know of a file's file system, asked once per inode (one fstatfs).
#[derive(Clone, Copy)]
pub(crate) struct FsFacts {
    f_type: i64,
    pub(super) bsize: u64,
    /// The file is DAX (statx's STATX_ATTR_DAX; asked only where DAX can be).
    dax: bool,
    /// DAX on an NVDIMM region whose persistence domain includes the CPU caches (eADR).
    eadr: bool,
}

impl FsFacts {
    pub(super) fn of(fd: RawFd) -> FsFacts {
        let mut f = rustix::fs::fstatfs(sys::bfd(fd))
            .map(|s| FsFacts {
                f_type: s.f_type,
                bsize: s.f_bsize as u64,
                dax: false,
                eadr: false,
            })
            .unwrap_or(FsFacts {
                f_type: 0,
                bsize: PAGE_SZ,
                dax: false,
                eadr: false,
            });
        if f.may_be_dax() {
            let dax = rustix::fs::StatxAttributes::DAX;
            f.dax = rustix::fs::statx(
                sys::bfd(fd),
                "",
                rustix::fs::AtFlags::EMPTY_PATH,
                rustix::fs::StatxFlags::BASIC_STATS,
            )
            // An old kernel that cannot say: maybe DAX (the mapping will tell).
            .map_or(true, |x| {
                !x.stx_attributes_mask.contains(dax) || x.stx_attributes.contains(dax)
            });
            f.eadr = f.dax
                && sys::fstat(fd)
                    .is_ok_and(|st| crate::persist::domain::cpu_caches_persist(st.st_dev));
        }
        f
    }

    /// Are the CPU caches of this DAX file's device inside the persistence domain (eADR)?
    /// Then a MAP_SYNC mapping has byte granularity.
    pub(super) fn cpu_caches_persist(&self) -> bool {
        self.eadr
    }

    /// Can this file's writes past its end ever be served from a mapping? Only on DAX
    /// (cache-line granularity, under a write lease); elsewhere the kernel extends files.
    pub(crate) fn maps_extending_writes(&self) -> bool {
        self.dax
    }

    pub(super) fn tmpfs(&self) -> bool {
        self.f_type == TMPFS_MAGIC
    }

    /// Does SEEK_DATA/SEEK_HOLE at a negative offset search from 0 (btrfs; ENXIO only
    /// when the file is empty) rather than fail with ENXIO (ext4, xfs, tmpfs)?
    pub(crate) fn seeks_negative_from_start(&self) -> bool {
        const BTRFS: i64 = 0x9123_683e;
        self.f_type == BTRFS
    }

    /// Can a mapping of this file system be MAP_SYNC (DAX)? ext4 (and ext2) and xfs only;
    /// elsewhere the MAP_SYNC attempt is a failing mmap per mapping.
    pub(super) fn may_be_dax(&self) -> bool {
        const EXT4: i64 = 0xef53;
        const XFS: i64 = 0x5846_5342;
        matches!(self.f_type, EXT4 | XFS)
    }

    /// File systems whose files flex leaves to the kernel, and why: a mapping of them is
    /// not coherent with what the kernel's own calls see.
    pub(crate) fn unmappable(&self) -> Option<Pass> {
        const OVERLAYFS: i64 = 0x794c_7630;
        const FUSE: i64 = 0x6573_5546;
        const NFS: i64 = 0x6969;
        const SMB2: i64 = 0xfe53_4d42;
        const CIFS: i64 = 0xff53_4d42;
        const CEPH: i64 = 0x00c3_6400;
        const V9FS: i64 = 0x0102_1997;
        Some(match self.f_type {
            // Copy-up moves the file to the upper layer: a mapping keeps the lower one.
            OVERLAYFS => Pass::Overlayfs,
            // The daemon's file changes behind the page cache (invalidated at open).
            FUSE => Pass::Fuse,
            // Close-to-open coherence: a mapping kept across close misses other clients.
            NFS | SMB2 | CIFS | CEPH | V9FS => Pass::NetworkFs,
            _ => return None,
        })
    }
}

/// Could a file on this machine be DAX (and so have been left over-allocated by a crashed
/// flex process)? Only ext2/ext4/xfs on a block device whose queue says DAX can; the
/// answer is kept within a second (a file system mounted later is seen in the next). Unknown
/// (no /proc, no /sys): yes.
pub(crate) fn dax_anywhere() -> bool {
    use std::sync::atomic::{AtomicI64, AtomicU8, Ordering::*};
    /// The coarse monotonic second of the last look, plus one (0: never looked). The
    /// coarse clock is a vDSO read of a tick-updated value: every open asks.
    static LOOKED: AtomicI64 = AtomicI64::new(0);
    /// 1: no DAX anywhere, 2: DAX possible.
    static ANSWER: AtomicU8 = AtomicU8::new(2);
    let now = crate::sys::time::coarse_seconds() + 1;
    let last = LOOKED.load(Acquire);
    if last == now {
        return ANSWER.load(Acquire) != 1;
    }
    if LOOKED.compare_exchange(last, now, AcqRel, Acquire).is_err() {
        // Another thread looks now; until it answers, the last answer stands.
        return ANSWER.load(Acquire) != 1;
    }
    let dax = crate::sys::read_file(c"/proc/self/mountinfo")
        .is_none_or(|m| mounts_may_be_dax(&m, block_dax));
    ANSWER.store(if dax { 2 } else { 1 }, Release);
    dax
}

/// Does a mount in `mountinfo` put an ext2/ext4/xfs file system on a DAX-capable device
/// (`dax_capable("maj:min")`)?
fn mounts_may_be_dax(mountinfo: &[u8], dax_capable: impl Fn(&str) -> bool) -> bool {
    mountinfo.split(|&b| b == b'\n').any(|line| {
        let line = String::from_utf8_lossy(line);
        let mut f = line.split(' ');
        let dev = f.nth(2).unwrap_or("");
        // The fields after the optional ones: " - fstype source superoptions".
        let Some((_, tail)) = line.split_once(" - ") else {
            return false;
        };
        let fstype = tail.split(' ').next().unwrap_or("");
        matches!(fstype, "ext2" | "ext4" | "xfs") && dax_capable(dev)
    })
}

/// Is block device `dev` ("maj:min") DAX-capable? Its queue says so; a partition's is its
/// disk's. Unreadable: assume it is.
fn block_dax(dev: &str) -> bool {
    let dir = format!("/sys/dev/block/{dev}");
    for q in [format!("{dir}/queue/dax"), format!("{dir}/../queue/dax")] {
        let Ok(c) = std::ffi::CString::new(q) else {
            return true;
        };
        if let Some(v) = crate::sys::read_file(&c) {
            return v.trim_ascii() != b"0";
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dax_needs_an_ext4_or_xfs_mount_on_a_dax_device() {
        let m = b"22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
                  23 22 0:21 / /dev/shm rw - tmpfs tmpfs rw\n\
                  24 22 259:5 / /mnt/pmem rw - xfs /dev/pmem0 rw,dax=always\n";
        assert!(!mounts_may_be_dax(m, |_| false));
        assert!(mounts_may_be_dax(m, |d| d == "259:5"));
        // A DAX-capable device under a file system that cannot map DAX does not count.
        assert!(!mounts_may_be_dax(m, |d| d == "0:21"));
        assert!(!mounts_may_be_dax(b"", |_| true));
    }

    #[test]
    fn this_machine_answers_the_same_twice() {
        assert_eq!(dax_anywhere(), dax_anywhere());
    }
}
