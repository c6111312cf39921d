//! `--no-punch-hole`: QEMU may not punch holes into files (fallocate with FALLOC_FL_PUNCH_HOLE
//! fails with EOPNOTSUPP), for a VM whose RAM is a file it maps privately: a clone's RAM is its
//! template's `mem` file (`memory-backend-file,share=off`), which other clones, and every later
//! clone of that template, still read.
//!
//! Why: QEMU 7.2 discards a file-backed RAM block (virtio-balloon inflation, free page
//! reporting) in `ram_block_discard_range` by `fallocate(fd, PUNCH_HOLE | KEEP_SIZE)` on the
//! backing file, with no check that the mapping is private (later QEMUs only madvise such a
//! block), and it opens that file read-write. A clone resized down (UpdatePodSandboxResources)
//! or started below its ceiling would zero the template's pages under every other clone. QEMU
//! 7.2 has no option that keeps the balloon and stops that (`readonly=on` makes the guest RAM
//! read-only there), so the syscall is refused: when the fallocate fails, 7.2 reports it and
//! skips the discard of that range altogether (no madvise either).
//!
//! What it costs: the guest still gives the ballooned pages up (MemTotal shrinks, resize works),
//! but the host memory behind them is not returned, and QEMU writes one "Failed to fallocate" line
//! to its log per ballooned 4 KiB page (seen: 65536 lines, 5.9 MB, for 256 MiB). A disk file of such a VM loses discard: QEMU's file-posix
//! driver takes EOPNOTSUPP as "no discard support" and writes zeroes instead where it would
//! have punched them (podvisor's disks keep QEMU's default discard=ignore anyway). Other
//! fallocate modes (allocate, ZERO_RANGE) are left alone.

use serde_json::json;

/// <linux/falloc.h>
pub const FALLOC_FL_PUNCH_HOLE: u64 = 0x02;

/// The OCI form of the filter: every syscall allowed, except fallocate(fd, mode, …) with
/// PUNCH_HOLE set in mode (argument 1), which returns EOPNOTSUPP.
pub fn filter() -> serde_json::Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{
            "names": ["fallocate"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::EOPNOTSUPP,
            // libcontainer: value is the datum, valueTwo the mask
            "args": [{ "index": 1, "op": "SCMP_CMP_MASKED_EQ", "value": FALLOC_FL_PUNCH_HOLE, "valueTwo": FALLOC_FL_PUNCH_HOLE }],
        }],
    })
}

/// Loads the filter on this (single-threaded) process just before it execs QEMU: it stays across
/// execve and every thread QEMU makes inherits it. Needs CAP_SYS_ADMIN (the launcher runs as
/// root) or no_new_privs.
pub fn install() -> Result<(), String> {
    podvisor_oci_exec::load_filter(&filter()).map_err(|e| format!("--no-punch-hole: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::io::AsRawFd;

    const MIB: i64 = 1 << 20;

    fn blocks(f: &std::fs::File) -> u64 {
        use std::os::unix::fs::MetadataExt;
        f.metadata().unwrap().blocks()
    }

    /// In a forked child (the filter cannot be taken off again): 0 when every check held, else
    /// the number of the check that failed.
    fn in_child(f: &std::fs::File) -> i32 {
        let fd = f.as_raw_fd();
        let punch = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as libc::c_int;
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return 1;
        }
        if install().is_err() {
            return 2;
        }
        // QEMU 7.2's discard of a RAM page (ram_block_discard_range): refused, file untouched
        if unsafe { libc::fallocate(fd, punch, 0, MIB) } != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EOPNOTSUPP) {
            return 3;
        }
        // also with other bits beside PUNCH_HOLE, and without KEEP_SIZE (which the kernel would
        // refuse itself, but with EINVAL)
        if unsafe { libc::fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE as libc::c_int, 0, MIB) } != -1 {
            return 4;
        }
        // plain allocation and ZERO_RANGE still work
        if unsafe { libc::fallocate(fd, 0, 4 * MIB, MIB) } != 0 {
            return 5;
        }
        if unsafe { libc::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE as libc::c_int | libc::FALLOC_FL_KEEP_SIZE as libc::c_int, 4 * MIB, MIB) } != 0 {
            return 6;
        }
        0
    }

    #[test]
    fn refuses_punch_hole_and_allows_other_fallocate() {
        let dir = std::env::temp_dir().join(format!("nopunch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mem");
        let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        f.write_all(&vec![0x5a; 2 * MIB as usize]).unwrap();
        f.sync_all().unwrap();
        let before = blocks(&f);
        assert!(before >= (2 * MIB / 512) as u64, "file not allocated: {before} blocks");

        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            unsafe { libc::_exit(in_child(&f)) };
        }
        let mut st = 0;
        assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
        assert!(libc::WIFEXITED(st), "child did not exit: status {st}");
        assert_eq!(libc::WEXITSTATUS(st), 0, "check {} failed in the filtered child", libc::WEXITSTATUS(st));

        // nothing punched: the first 2 MiB are all there, the plain fallocate added 1 MiB
        let after = blocks(&f);
        assert!(after >= before + (MIB / 512) as u64, "blocks {before} -> {after}");
        let mut head = vec![0u8; 2 * MIB as usize];
        use std::os::unix::fs::FileExt;
        f.read_exact_at(&mut head, 0).unwrap();
        assert!(head.iter().all(|&b| b == 0x5a), "the file's data changed");

        // the parent has no filter: the same punch works here (the test can tell the difference)
        let punch = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as libc::c_int;
        assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), punch, 0, MIB) }, 0);
        assert!(blocks(&f) < after, "unfiltered punch did not free blocks");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn filter_is_a_valid_oci_seccomp() {
        let f = filter();
        assert_eq!(f["syscalls"][0]["errnoRet"], libc::EOPNOTSUPP);
        assert_eq!(f["syscalls"][0]["args"][0]["index"], 1);
    }
}
