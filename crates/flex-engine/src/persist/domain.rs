//! The persistence domain of a DAX device: are the CPU caches inside it (eADR)?
//!
//! The kernel says so per NVDIMM region in `/sys/bus/nd/devices/regionN/persistence_domain`
//! ("cpu_cache" with eADR, "memory_controller" with ADR only), as PMDK reads it. A file's
//! block device, `/sys/dev/block/MAJOR:MINOR`, links into its region's directory; the
//! region is the nearest ancestor that has the file. Asked once per DAX inode, with raw
//! system calls (this runs inside libflex.so).

use rustix::fs::{Mode, OFlags};

/// Do stores reach the persistence domain of device `dev` (a `st_dev`) as soon as they are
/// globally visible, with no cache-line flush? False when the kernel does not say.
pub fn cpu_caches_persist(dev: u64) -> bool {
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    domain_is_cpu_cache("/sys", major, minor)
}

/// [`cpu_caches_persist`] under another sysfs root (tests build a fake one).
pub fn domain_is_cpu_cache(sysfs: &str, major: u32, minor: u32) -> bool {
    let link = format!("{sysfs}/dev/block/{major}:{minor}");
    let Ok(target) = rustix::fs::readlink(link.as_str(), Vec::new()) else {
        return false;
    };
    let target = target.to_string_lossy().into_owned();
    // The link is relative to /sys/dev/block: resolve it against that directory.
    let mut dir = if target.starts_with('/') {
        target
    } else {
        format!("{sysfs}/dev/block/{target}")
    };
    // A region is at most a few levels above its block device (namespace, block, disk,
    // partition); stop well before the root.
    for _ in 0..8 {
        if let Some(domain) = read_small(&format!("{dir}/persistence_domain")) {
            return domain.trim_ascii() == b"cpu_cache";
        }
        match dir.rfind('/') {
            Some(i) if i > sysfs.len() => dir.truncate(i),
            _ => return false,
        }
    }
    false
}

/// The first bytes of a small file, or None when it cannot be read.
fn read_small(path: &str) -> Option<Vec<u8>> {
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let mut buf = vec![0u8; 64];
    let n = rustix::io::read(&fd, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// A sysfs with one region of the given domain, its namespace and block device
    /// (partition 1 as 259:1), linked as the kernel links them.
    fn fake_sysfs(domain: Option<&str>) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let region = root.join("devices/platform/ACPI0012:00/ndbus0/region0");
        let disk = region.join("namespace0.0/block/pmem0");
        fs::create_dir_all(disk.join("pmem0p1")).unwrap();
        if let Some(d) = domain {
            fs::write(region.join("persistence_domain"), format!("{d}\n")).unwrap();
        }
        fs::create_dir_all(root.join("dev/block")).unwrap();
        let rel = "../../devices/platform/ACPI0012:00/ndbus0/region0/namespace0.0/block/pmem0";
        symlink(rel, root.join("dev/block/259:0")).unwrap();
        symlink(format!("{rel}/pmem0p1"), root.join("dev/block/259:1")).unwrap();
        t
    }

    #[test]
    fn cpu_cache_domain_is_found_above_disk_and_partition() {
        let t = fake_sysfs(Some("cpu_cache"));
        let root = t.path().to_str().unwrap();
        assert!(domain_is_cpu_cache(root, 259, 0));
        assert!(domain_is_cpu_cache(root, 259, 1));
        assert!(!domain_is_cpu_cache(root, 259, 2), "no such device");
    }

    #[test]
    fn memory_controller_or_silent_kernel_means_flush() {
        let t = fake_sysfs(Some("memory_controller"));
        assert!(!domain_is_cpu_cache(t.path().to_str().unwrap(), 259, 0));
        let t = fake_sysfs(None);
        assert!(!domain_is_cpu_cache(t.path().to_str().unwrap(), 259, 1));
    }

    #[test]
    fn this_host_has_no_cpu_cache_domain_for_its_root() {
        // "/" is ext4 on a disk here: never a region's device.
        let dev = fs::metadata("/").map(|m| std::os::unix::fs::MetadataExt::dev(&m));
        assert!(!cpu_caches_persist(dev.unwrap()));
    }
}
