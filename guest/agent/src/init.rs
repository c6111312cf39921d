//! PID 1 duties: early mounts, kernel modules, leaving the initramfs, power-off.
//!
//! Stage 1 runs from the initramfs: mount the API filesystems, load the modules the build
//! listed (they are read from the initramfs, then freed with it), then do what switch_root
//! does: copy what we still need into a fresh tmpfs, delete the initramfs content, move the
//! tmpfs onto `/`, chroot and re-exec ourselves with `--stage2`. Containers need a real root
//! because pivot_root(2) refuses to move away from the initramfs.

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};

use crate::log;

const NEWROOT: &str = "/newroot";
/// Extra files (absolute paths, one a line) that must survive leaving the initramfs.
const KEEP_LIST: &str = "/lib/podvisor.keep";
/// The kernel's usermode helper for module requests (CONFIG_MODPROBE_PATH); see modprobe.rs.
const MODPROBE: &str = "/sbin/modprobe";

fn mnt(src: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) {
    let _ = std::fs::create_dir_all(target);
    if let Err(e) = mount(Some(src), target, Some(fstype), flags, data) {
        if e != nix::errno::Errno::EBUSY {
            log!("mount {fstype} on {target}: {e}");
        }
    }
}

pub fn stage1() -> ! {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mnt("proc", "/proc", "proc", nosuid, None);
    mnt("sysfs", "/sys", "sysfs", nosuid, None);
    mnt("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"));
    crate::debug!("stage1");

    crate::modules::load_boot();

    crate::debug!("modules loaded");
    if let Err(e) = switch_root() {
        log!("switch_root failed: {e}; continuing on the initramfs (containers will fail)");
        let _ = exec_self();
    }
    // exec_self only returns on failure; nothing sensible is left to do for PID 1.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn switch_root() -> std::io::Result<()> {
    std::fs::create_dir_all(NEWROOT)?;
    mount(Some("rootfs"), NEWROOT, Some("tmpfs"), MsFlags::empty(), Some("mode=0755"))
        .map_err(std::io::Error::from)?;
    // Copy the few files we keep; the modules stay behind and are freed with the initramfs.
    std::fs::copy("/init", format!("{NEWROOT}/init"))?;
    std::fs::set_permissions(format!("{NEWROOT}/init"), std::fs::Permissions::from_mode(0o755))?;
    copy_dir("/etc", &format!("{NEWROOT}/etc"))?;
    // On-demand modules and their list move with us, and the few tools listed in KEEP_LIST
    // (mke2fs and its libraries); boot modules are freed with the initramfs.
    let keep = std::fs::read_to_string(KEEP_LIST).unwrap_or_default();
    let keep = keep.lines().map(str::trim).filter(|l| l.starts_with('/'));
    for f in crate::modules::late_files().iter().map(String::as_str).chain(keep) {
        let to = format!("{NEWROOT}{f}");
        if let Some(parent) = Path::new(&to).parent() {
            std::fs::create_dir_all(parent)?;
        }
        // fs::copy keeps the mode bits (executables stay executable).
        if let Err(e) = std::fs::copy(f, &to) {
            log!("keep {f}: {e}");
        }
    }
    for d in ["proc", "sys", "dev", "run", "tmp", "mnt"] {
        std::fs::create_dir_all(format!("{NEWROOT}/{d}"))?;
    }
    std::fs::set_permissions(format!("{NEWROOT}/tmp"), std::fs::Permissions::from_mode(0o1777))?;
    for d in ["/proc", "/sys", "/dev"] {
        mount(Some(d), format!("{NEWROOT}{d}").as_str(), None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(std::io::Error::from)?;
    }
    // Free the initramfs (it is RAM): delete everything on the root device except NEWROOT.
    let root_dev = std::fs::metadata("/")?.dev();
    if let Ok(rd) = std::fs::read_dir("/") {
        for e in rd.flatten() {
            let p = e.path();
            if p == Path::new(NEWROOT) {
                continue;
            }
            remove_same_dev(&p, root_dev);
        }
    }
    std::env::set_current_dir(NEWROOT)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(std::io::Error::from)?;
    nix::unistd::chroot(".").map_err(std::io::Error::from)?;
    std::env::set_current_dir("/")?;
    exec_self()
}

fn remove_same_dev(p: &Path, dev: u64) {
    let md = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(_) => return,
    };
    if md.dev() != dev {
        return;
    }
    if md.is_dir() {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                remove_same_dev(&e.path(), dev);
            }
        }
        let _ = std::fs::remove_dir(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

fn copy_dir(src: &str, dst: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)?.flatten() {
        let to = Path::new(dst).join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path().to_string_lossy(), &to.to_string_lossy())?;
        } else if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to)?;
        }
    }
    Ok(())
}

fn exec_self() -> std::io::Result<()> {
    let prog = CString::new("/init").unwrap();
    let args = [prog.clone(), CString::new("--stage2").unwrap()];
    let e = nix::unistd::execv(&prog, &args).unwrap_err();
    Err(std::io::Error::from(e))
}

/// Stage 2: on the tmpfs root. Everything else the agent and containers expect.
pub fn stage2() {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mnt("devpts", "/dev/pts", "devpts", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("gid=5,mode=0620,ptmxmode=0666"));
    mnt("shm", "/dev/shm", "tmpfs", nosuid, Some("mode=1777"));
    mnt("run", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"));
    mnt("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, Some("nsdelegate"));
    for (l, t) in [("/dev/fd", "/proc/self/fd"), ("/dev/stdin", "/proc/self/fd/0"), ("/dev/stdout", "/proc/self/fd/1"), ("/dev/stderr", "/proc/self/fd/2"), ("/etc/mtab", "/proc/self/mounts")] {
        let _ = std::os::unix::fs::symlink(t, l);
    }
    // Enable controllers one by one so a missing one does not block the others.
    for c in ["cpu", "memory", "pids", "io", "cpuset", "hugetlb"] {
        let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", format!("+{c}"));
    }
    for d in ["/run/podvisor", "/run/podvisor/containers", "/run/podvisor/images", "/run/podvisor/youki"] {
        let _ = std::fs::create_dir_all(d);
    }
    // The pod IPC namespace's POSIX message queues, for containers in a user namespace of their
    // own: they cannot mount mqueue for an IPC namespace they do not own, so they bind this.
    mnt("mqueue", "/run/podvisor/mqueue", "mqueue", nosuid, None);
    loopback_up();
    // From here on the kernel's module requests reach modprobe.rs (during boot there is no
    // /sbin/modprobe, so they fail at once, as before).
    let _ = std::fs::create_dir_all("/sbin");
    if let Err(e) = std::os::unix::fs::symlink("/init", MODPROBE) {
        log!("{MODPROBE}: {e}");
    }
}

/// `ip link set lo up`: port-forwarding connects to 127.0.0.1 in the pod (= VM) network.
fn loopback_up() {
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr);
        }
        libc::close(s);
    }
}

/// Kill everything, unmount, sync, power off. Never returns.
pub fn power_off() -> ! {
    if std::process::id() != 1 {
        // Run outside a VM (development): never kill(-1) a real host.
        std::process::exit(0);
    }
    unsafe {
        libc::kill(-1, libc::SIGKILL);
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut targets: Vec<&str> = mounts.lines().filter_map(|l| l.split(' ').nth(1)).collect();
    targets.reverse();
    for t in targets {
        if t.starts_with("/run/podvisor") {
            let _ = nix::mount::umount2(t, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
