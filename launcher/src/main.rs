//! podvisor-launch: the few steps Node cannot do before QEMU starts.
//!
//! ```text
//! podvisor-launch [--netns PATH] [--tap NAME]... [--mount-ns] [--no-thp] [--ksm] [--no-punch-hole] -- PROGRAM [ARG]...
//! ```
//!
//! 1. With `--netns`: enter that network namespace, open `/dev/net/tun` and attach each `--tap`
//!    (TUNSETIFF with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, as QEMU's own tap backend does), then go
//!    back to the original network namespace. The program therefore runs in the *host* netns
//!    (so QEMU's own sockets, e.g. librbd's to Ceph, never enter the pod network) while its NICs
//!    are the pod's taps: the i-th `--tap` is file descriptor 3 + i, inheritable, for
//!    `-netdev tap,fd=3+i`.
//! 2. With `--mount-ns`: a new mount namespace with slave propagation (host mounts still reach
//!    it, nothing made inside reaches the host), like `unshare --mount --propagation slave`.
//! 3. With `--no-thp`: no transparent huge pages for the program (PR_SET_THP_DISABLE, kept
//!    across exec). A clone's RAM is a file mapped privately, which THP never backs; what THP
//!    would back are QEMU's small anonymous blocks (ACPI table ROM, TCG's code buffer), where
//!    one touched byte costs a whole 2 MiB page per VM.
//! 4. With `--ksm`: all the program's anonymous memory may be merged by the kernel's samepage
//!    merging (PR_SET_MEMORY_MERGE, Linux 6.4+, kept across exec): QEMU's heap, TCG's buffers
//!    and relocated library pages, not only the guest RAM that QEMU marks itself. ksmd must run
//!    (/sys/kernel/mm/ksm/run) for anything to be merged.
//! 5. With `--no-punch-hole`: a seccomp filter under which fallocate with FALLOC_FL_PUNCH_HOLE
//!    fails with EOPNOTSUPP (nopunch.rs), for a VM whose RAM privately maps a file others read
//!    (a clone's template RAM): QEMU 7.2's balloon would punch holes into that file.
//! 6. exec the program (same pid: callers track the pid they spawned).
//!
//! Any failure is printed to stderr as `podvisor-launch: …` and the exit status is 127; nothing
//! is left behind (the tap fds close with the process).
//!
//! ```text
//! podvisor-launch bind [--ro] MOUNT_NS SRC DST
//! ```
//!
//! Bind-mounts host path SRC, with the mounts under it, onto DST inside the mount namespace
//! MOUNT_NS (a VM's, `/proc/<qemu pid>/ns/mnt`). The tree is cloned in the caller's namespace
//! (open_tree), so mounts the host made after the VM started are in it even when the host's
//! mounts do not propagate; `--ro` makes the top mount read-only and leaves the mounts under it
//! as they are (CRI's non-recursive read-only); then the process enters MOUNT_NS and attaches
//! the tree at DST (move_mount).
//!
//! Host pods (pods in the host's namespaces, src/runtime/backends/host/): `podvisor-launch pinns …`
//! pins a pod's namespaces (pinns.rs), `podvisor-launch shim …` holds one host container
//! (shim/), `podvisor-launch delete …` removes a container whose shim is gone, and
//! `podvisor-launch connect …` is one port-forward connection into a pod's netns (connect.rs).

mod connect;
mod nopunch;
mod pinns;
mod shim;
mod sys;

use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::io::RawFd;

use sys::{cstr, errno, open_cloexec};

/// First file descriptor handed to the program for the taps.
const TAP_FD_BASE: RawFd = 3;
const MAX_TAPS: usize = 32;

// <linux/if_tun.h>
const TUNSETIFF: libc::c_ulong = 0x4004_54ca; // _IOW('T', 202, int)
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

#[derive(Debug, Default, PartialEq)]
struct Opts {
    netns: Option<OsString>,
    taps: Vec<String>,
    mount_ns: bool,
    no_thp: bool,
    ksm: bool,
    no_punch_hole: bool,
    program: Vec<OsString>,
}

const USAGE: &str = "usage: podvisor-launch [--netns PATH] [--tap NAME]... [--mount-ns] [--no-thp] [--ksm] [--no-punch-hole] -- PROGRAM [ARG]...";
// <linux/prctl.h>
const PR_SET_MEMORY_MERGE: libc::c_int = 67;

fn parse(args: Vec<OsString>) -> Result<Opts, String> {
    let mut o = Opts::default();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--netns") => {
                let p = it.next().ok_or("--netns needs a path")?;
                if !p.as_bytes().starts_with(b"/") {
                    return Err(format!("--netns {:?}: must be an absolute path", p));
                }
                if o.netns.replace(p).is_some() {
                    return Err("--netns given twice".into());
                }
            }
            Some("--tap") => {
                let t = it.next().ok_or("--tap needs an interface name")?;
                let t = t.into_string().map_err(|t| format!("--tap {t:?}: not UTF-8"))?;
                if t.is_empty() || t.len() >= libc::IFNAMSIZ || t.bytes().any(|b| b == b'/' || b == b':' || b <= b' ' || b == 0x7f) {
                    return Err(format!("--tap {t:?}: not a valid interface name"));
                }
                o.taps.push(t);
            }
            Some("--mount-ns") => o.mount_ns = true,
            Some("--no-thp") => o.no_thp = true,
            Some("--ksm") => o.ksm = true,
            Some("--no-punch-hole") => o.no_punch_hole = true,
            Some("--") => {
                o.program = it.collect();
                break;
            }
            _ => return Err(format!("unexpected argument {a:?}\n{USAGE}")),
        }
    }
    if o.program.is_empty() {
        return Err(format!("no program given\n{USAGE}"));
    }
    if o.taps.len() > MAX_TAPS {
        return Err(format!("at most {MAX_TAPS} taps"));
    }
    if !o.taps.is_empty() && o.netns.is_none() {
        return Err("--tap needs --netns (the namespace that holds the taps)".into());
    }
    Ok(o)
}

fn setns_net(fd: RawFd, what: &str) -> Result<(), String> {
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(format!("entering {what}: {}", errno()));
    }
    Ok(())
}

/// Attaches to the existing (persistent) tap `name` in the current netns. Close-on-exec until
/// it is moved to its final number.
fn open_tap(name: &str) -> Result<RawFd, String> {
    // TUNSETIFF would create a missing tap: it must be the one network/ set up, so look first.
    let cname = cstr(name.as_bytes())?;
    if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
        return Err(format!("tap {name}: no such interface in the network namespace"));
    }
    let fd = open_cloexec(b"/dev/net/tun", libc::O_RDWR)?;
    // struct ifreq: ifr_name[IFNAMSIZ], then a union whose first member here is short ifr_flags
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    ifr[libc::IFNAMSIZ..libc::IFNAMSIZ + 2].copy_from_slice(&flags.to_ne_bytes());
    if unsafe { libc::ioctl(fd, TUNSETIFF as _, ifr.as_mut_ptr()) } != 0 {
        let e = errno();
        unsafe { libc::close(fd) };
        return Err(format!("attaching tap {name} (TUNSETIFF): {e}"));
    }
    Ok(fd)
}

/// Opens every tap inside `netns` and returns to the original netns, even when an open failed.
fn open_taps(netns: &OsString, taps: &[String]) -> Result<Vec<RawFd>, String> {
    let host = open_cloexec(b"/proc/self/ns/net", libc::O_RDONLY)?;
    let pod = match open_cloexec(netns.as_bytes(), libc::O_RDONLY) {
        Ok(fd) => fd,
        Err(e) => {
            unsafe { libc::close(host) };
            return Err(format!("network namespace: {e}"));
        }
    };
    let mut fds = Vec::new();
    let entered = setns_net(pod, &format!("network namespace {}", netns.to_string_lossy()));
    let res = entered.and_then(|_| {
        for t in taps {
            fds.push(open_tap(t)?);
        }
        Ok(())
    });
    // Back to where we came from before anything else: QEMU must not run in the pod netns.
    let back = setns_net(host, "the original network namespace");
    unsafe {
        libc::close(pod);
        libc::close(host);
    }
    if let Err(e) = res.and(back) {
        for fd in fds {
            unsafe { libc::close(fd) };
        }
        return Err(e);
    }
    Ok(fds)
}

fn private_mount_ns() -> Result<(), String> {
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(format!("unshare(CLONE_NEWNS): {}", errno()));
    }
    let none = cstr(b"none")?;
    let root = cstr(b"/")?;
    if unsafe { libc::mount(none.as_ptr(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_SLAVE, std::ptr::null()) } != 0 {
        return Err(format!("making / a slave mount: {}", errno()));
    }
    Ok(())
}

/// Moves the tap fds to TAP_FD_BASE.. without close-on-exec. Copies go above the target range
/// first, so no target number can clobber a tap that still has to move.
fn place_fds(fds: Vec<RawFd>) -> Result<(), String> {
    let above = TAP_FD_BASE + fds.len() as RawFd;
    let mut high = Vec::new();
    for fd in fds {
        let h = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) };
        if h < 0 {
            return Err(format!("fcntl(F_DUPFD_CLOEXEC): {}", errno()));
        }
        unsafe { libc::close(fd) };
        high.push(h);
    }
    for (i, h) in high.into_iter().enumerate() {
        let target = TAP_FD_BASE + i as RawFd;
        if unsafe { libc::dup2(h, target) } < 0 {
            return Err(format!("dup2 to fd {target}: {}", errno()));
        }
        unsafe { libc::close(h) };
    }
    Ok(())
}

fn exec(program: Vec<OsString>) -> Result<std::convert::Infallible, String> {
    let argv: Vec<CString> = program.into_iter().map(|a| cstr(&a.into_vec())).collect::<Result<_, _>>()?;
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    unsafe { libc::execvp(ptrs[0], ptrs.as_ptr()) };
    Err(format!("exec {}: {}", argv[0].to_string_lossy(), errno()))
}

fn run(args: Vec<OsString>) -> Result<std::convert::Infallible, String> {
    let o = parse(args)?;
    let fds = match &o.netns {
        Some(ns) => open_taps(ns, &o.taps)?,
        None => Vec::new(),
    };
    if o.mount_ns {
        private_mount_ns()?;
    }
    if o.no_thp && unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        return Err(format!("PR_SET_THP_DISABLE: {}", errno()));
    }
    if o.ksm && unsafe { libc::prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) } != 0 {
        return Err(format!("PR_SET_MEMORY_MERGE (needs Linux 6.4 or later): {}", errno()));
    }
    place_fds(fds)?;
    // last before exec: the filter also applies to what the launcher still does
    if o.no_punch_hole {
        nopunch::install()?;
    }
    exec(o.program)
}

#[derive(Debug, PartialEq)]
struct BindOpts {
    readonly: bool,
    mount_ns: OsString,
    src: OsString,
    dst: OsString,
}

fn parse_bind(args: Vec<OsString>) -> Result<BindOpts, String> {
    let usage = "usage: podvisor-launch bind [--ro] MOUNT_NS SRC DST";
    let mut readonly = false;
    let mut rest = Vec::new();
    for a in args {
        if a == "--ro" && rest.is_empty() {
            readonly = true;
        } else {
            rest.push(a);
        }
    }
    let [mount_ns, src, dst]: [OsString; 3] = rest.try_into().map_err(|_| usage.to_string())?;
    for (what, p) in [("MOUNT_NS", &mount_ns), ("SRC", &src), ("DST", &dst)] {
        if !p.as_bytes().starts_with(b"/") {
            return Err(format!("{what} {p:?}: must be an absolute path"));
        }
    }
    Ok(BindOpts { readonly, mount_ns, src, dst })
}

fn bind(o: BindOpts) -> Result<(), String> {
    let src = cstr(o.src.as_bytes())?;
    let dst = cstr(o.dst.as_bytes())?;
    let empty = cstr(b"")?;
    let flags = libc::OPEN_TREE_CLONE | libc::AT_RECURSIVE as libc::c_uint | libc::OPEN_TREE_CLOEXEC;
    let tree = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, src.as_ptr(), flags) } as RawFd;
    if tree < 0 {
        return Err(format!("open_tree {}: {}", o.src.to_string_lossy(), errno()));
    }
    if o.readonly {
        // without AT_RECURSIVE: the top mount only
        let attr = libc::mount_attr { attr_set: libc::MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
        let rc = unsafe {
            libc::syscall(libc::SYS_mount_setattr, tree, empty.as_ptr(), libc::AT_EMPTY_PATH, &attr as *const libc::mount_attr, std::mem::size_of::<libc::mount_attr>())
        };
        if rc != 0 {
            return Err(format!("making {} read-only: {}", o.src.to_string_lossy(), errno()));
        }
    }
    let ns = open_cloexec(o.mount_ns.as_bytes(), libc::O_RDONLY)?;
    if unsafe { libc::setns(ns, libc::CLONE_NEWNS) } != 0 {
        return Err(format!("entering mount namespace {}: {}", o.mount_ns.to_string_lossy(), errno()));
    }
    let rc = unsafe { libc::syscall(libc::SYS_move_mount, tree, empty.as_ptr(), libc::AT_FDCWD, dst.as_ptr(), libc::MOVE_MOUNT_F_EMPTY_PATH) };
    if rc != 0 {
        return Err(format!("attaching {} at {}: {}", o.src.to_string_lossy(), o.dst.to_string_lossy(), errno()));
    }
    Ok(())
}

fn fail(e: String) -> ! {
    eprintln!("podvisor-launch: {e}");
    std::process::exit(127);
}

/// The arguments of a host-pod subcommand, which are all UTF-8.
fn utf8(args: &[OsString]) -> Vec<String> {
    args.iter().map(|a| a.to_str().map(String::from).unwrap_or_else(|| fail(format!("argument {a:?} is not UTF-8")))).collect()
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args.first().and_then(|a| a.to_str()) {
        Some("pinns") => match pinns::parse(utf8(&args[1..])).and_then(pinns::run) {
            Ok(out) => {
                println!("{out}");
                std::process::exit(0);
            }
            Err(e) => fail(e),
        },
        Some("shim") => match shim::parse(utf8(&args[1..])) {
            Ok(o) => shim::main(o),
            Err(e) => fail(e),
        },
        Some("connect") => match connect::parse(utf8(&args[1..])).and_then(connect::run) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("podvisor-launch: {e}");
                std::process::exit(1);
            }
        },
        Some("delete") => match shim::delete_main(utf8(&args[1..])) {
            Ok(()) => std::process::exit(0),
            Err(e) => fail(e),
        },
        _ => {}
    }
    if args.first().map(|a| a == "bind").unwrap_or(false) {
        match parse_bind(args[1..].to_vec()).and_then(bind) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("podvisor-launch: {e}");
                std::process::exit(127);
            }
        }
    }
    let Err(e) = run(args);
    eprintln!("podvisor-launch: {e}");
    std::process::exit(127);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_a_full_command_line() {
        let o = parse(args(&["--netns", "/run/netns/pv-1", "--tap", "tap0", "--tap", "tap1", "--mount-ns", "--no-thp", "--ksm", "--no-punch-hole", "--", "qemu", "-m", "256"])).unwrap();
        assert!(o.ksm);
        assert!(o.no_punch_hole);
        assert_eq!(o.netns, Some(OsString::from("/run/netns/pv-1")));
        assert_eq!(o.taps, vec!["tap0", "tap1"]);
        assert!(o.mount_ns);
        assert!(o.no_thp);
        assert_eq!(o.program, args(&["qemu", "-m", "256"]));
    }

    #[test]
    fn parses_bind() {
        let o = parse_bind(args(&["--ro", "/proc/1/ns/mnt", "/a", "/b"])).unwrap();
        assert_eq!(o, BindOpts { readonly: true, mount_ns: "/proc/1/ns/mnt".into(), src: "/a".into(), dst: "/b".into() });
        assert!(!parse_bind(args(&["/proc/1/ns/mnt", "/a", "/b"])).unwrap().readonly);
        for bad in [&["/ns", "/a"][..], &["/ns", "/a", "/b", "/c"], &["ns", "/a", "/b"], &["/ns", "a", "/b"], &["/ns", "/a", "b"], &["/ns", "/a", "/b", "--ro"]] {
            assert!(parse_bind(args(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn refuses_bad_command_lines() {
        for bad in [
            &["qemu"][..],
            &["--"],
            &["--tap", "tap0", "--", "qemu"],
            &["--netns", "relative", "--", "qemu"],
            &["--netns", "/a", "--netns", "/b", "--", "qemu"],
            &["--netns", "/a", "--tap", "", "--", "qemu"],
            &["--netns", "/a", "--tap", "waytoolongname01", "--", "qemu"],
            &["--netns", "/a", "--tap", "../x", "--", "qemu"],
            &["--netns", "/a", "--tap", "a b", "--", "qemu"],
            &["--bogus", "--", "qemu"],
        ] {
            assert!(parse(args(bad)).is_err(), "{bad:?} accepted");
        }
    }
}
