//! `podvisor-launch pinns`: a host pod's namespaces without a pause container.
//!
//! ```text
//! podvisor-launch pinns --dir DIR [--net] [--ipc] [--uts HOSTNAME] [--sysctl KEY=VALUE]...
//!                       [--shm-size BYTES] [--pid]
//! ```
//!
//! As CRI-O's pinns: the process unshares the namespaces asked for, configures them (hostname,
//! loopback up, the pod's sysctls, which land in the new namespaces because /proc/sys resolves
//! per namespace of the writer), and bind-mounts `/proc/self/ns/<kind>` onto `DIR/<kind>` in the
//! host's mount namespace. The bind mounts keep the namespaces alive after the process exits;
//! containers join them through the paths in their OCI spec, and CNI runs into `DIR/net`.
//! `--shm-size` mounts the pod's /dev/shm (a tmpfs shared by its containers) at `DIR/shm`.
//!
//! A PID namespace cannot be pinned that way (a PID namespace whose first process is gone takes
//! no new process), so `--pid` forks the namespace's init: PID 1 of a new PID namespace, in the
//! pod's other namespaces, that only reaps and waits for SIGTERM (what a pause container does).
//! It is made only for pods that share one PID namespace; its host pid is reported.
//!
//! On success stdout carries one JSON line: `{"net":…,"ipc":…,"uts":…,"shm":…,"init_pid":N}`
//! (the members that were made). On failure what was made is undone, the error goes to stderr
//! and the exit status is 127.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::sys::{cstr, errno};

const USAGE: &str = "usage: podvisor-launch pinns --dir DIR [--net] [--ipc] [--uts HOSTNAME] [--sysctl KEY=VALUE]... [--shm-size BYTES] [--pid]";
const MAX_SYSCTLS: usize = 128;

#[derive(Debug, Default, PartialEq)]
pub struct PinOpts {
    pub dir: PathBuf,
    pub net: bool,
    pub ipc: bool,
    pub uts: Option<String>,
    pub sysctls: Vec<(String, String)>,
    pub shm_size: Option<u64>,
    pub pid: bool,
}

/// Which namespace a sysctl belongs to (the ones a pod may set, as runc allows them).
pub fn sysctl_namespace(key: &str) -> Option<&'static str> {
    const IPC: [&str; 7] = ["kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax", "kernel.shmmni"];
    if IPC.contains(&key) || key == "kernel.shm_rmid_forced" || key.starts_with("fs.mqueue.") {
        Some("ipc")
    } else if key.starts_with("net.") {
        Some("net")
    } else if key == "kernel.domainname" || key == "kernel.hostname" {
        Some("uts")
    } else {
        None
    }
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty() && h.len() <= 64 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

pub fn parse(args: Vec<String>) -> Result<PinOpts, String> {
    let mut o = PinOpts::default();
    let mut dir = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = Some(it.next().ok_or("--dir needs a path")?),
            "--net" => o.net = true,
            "--ipc" => o.ipc = true,
            "--pid" => o.pid = true,
            "--uts" => {
                let h = it.next().ok_or("--uts needs a hostname")?;
                if !valid_hostname(&h) {
                    return Err(format!("--uts {h:?}: not a valid hostname"));
                }
                o.uts = Some(h);
            }
            "--shm-size" => {
                let n = it.next().ok_or("--shm-size needs a size in bytes")?;
                o.shm_size = Some(n.parse::<u64>().ok().filter(|n| *n >= 4096).ok_or(format!("--shm-size {n:?}: not a size in bytes"))?);
            }
            "--sysctl" => {
                let kv = it.next().ok_or("--sysctl needs KEY=VALUE")?;
                let (k, v) = kv.split_once('=').ok_or(format!("--sysctl {kv:?}: not KEY=VALUE"))?;
                if k.is_empty() || k.len() > 128 || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') || k.starts_with('.') || k.contains("..") {
                    return Err(format!("--sysctl {k:?}: not a sysctl name"));
                }
                if v.len() > 4096 || v.contains('\0') {
                    return Err(format!("--sysctl {k}: value too long"));
                }
                o.sysctls.push((k.to_string(), v.to_string()));
            }
            _ => return Err(format!("unexpected argument {a:?}\n{USAGE}")),
        }
    }
    let dir = dir.ok_or(format!("--dir is required\n{USAGE}"))?;
    if !dir.starts_with('/') {
        return Err(format!("--dir {dir:?}: must be an absolute path"));
    }
    o.dir = PathBuf::from(dir);
    if o.sysctls.len() > MAX_SYSCTLS {
        return Err(format!("at most {MAX_SYSCTLS} sysctls"));
    }
    for (k, _) in &o.sysctls {
        let ok = match sysctl_namespace(k) {
            Some("net") => o.net,
            Some("ipc") => o.ipc,
            Some("uts") => o.uts.is_some(),
            _ => false,
        };
        if !ok {
            return Err(format!("sysctl {k} is not namespaced, or its namespace is not the pod's own"));
        }
    }
    if !(o.net || o.ipc || o.uts.is_some() || o.pid || o.shm_size.is_some()) {
        return Err(format!("nothing to pin\n{USAGE}"));
    }
    Ok(o)
}

/// Undoes what was made if the whole set-up does not succeed.
struct Made(Vec<PathBuf>);

impl Made {
    /// An empty file (`dir`: a directory) to mount on; an existing one is fine.
    fn mount_point(&mut self, p: &Path, dir: bool) -> Result<CString, String> {
        let c = cstr(p.as_os_str().as_bytes())?;
        let r = if dir {
            std::fs::create_dir(p).or_else(|e| if e.kind() == std::io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
        } else {
            std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(p).map(|_| ())
        };
        r.map_err(|e| format!("creating {}: {e}", p.display()))?;
        self.0.push(p.to_path_buf());
        Ok(c)
    }

    fn disarm(mut self) {
        self.0.clear();
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            if let Ok(c) = cstr(p.as_os_str().as_bytes()) {
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
            let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir(p));
        }
    }
}

fn bind_ns(made: &mut Made, kind: &str, target: &Path) -> Result<(), String> {
    let dst = made.mount_point(target, false)?;
    let src = cstr(format!("/proc/self/ns/{kind}").as_bytes())?;
    if unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) } != 0 {
        return Err(format!("pinning the {kind} namespace on {}: {}", target.display(), errno()));
    }
    Ok(())
}

fn loopback_up() -> Result<(), String> {
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(format!("socket: {}", errno()));
    }
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    let res = (|| {
        if unsafe { libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) } != 0 {
            return Err(format!("SIOCGIFFLAGS lo: {}", errno()));
        }
        unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        if unsafe { libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr) } != 0 {
            return Err(format!("bringing lo up: {}", errno()));
        }
        Ok(())
    })();
    unsafe { libc::close(s) };
    res
}

fn write_sysctl(k: &str, v: &str) -> Result<(), String> {
    let path = format!("/proc/sys/{}", k.replace('.', "/"));
    std::fs::write(&path, v).map_err(|e| format!("sysctl {k}={v}: {e}"))
}

/// PID 1 of the pod's PID namespace: reaps whatever is re-parented to it, exits on SIGTERM or
/// SIGINT. Never returns.
fn pid_init() -> ! {
    unsafe {
        libc::setsid();
        let _ = libc::chdir(c"/".as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
        libc::close_range(3, u32::MAX, 0);
        libc::prctl(libc::PR_SET_NAME, c"podvisor-init".as_ptr(), 0, 0, 0);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut wait: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut wait);
        for s in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut wait, s);
        }
        loop {
            let sig = libc::sigwaitinfo(&wait, std::ptr::null_mut());
            if sig == libc::SIGTERM || sig == libc::SIGINT {
                libc::_exit(0);
            }
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
        }
    }
}

pub fn run(o: PinOpts) -> Result<String, String> {
    std::fs::create_dir_all(&o.dir).map_err(|e| format!("creating {}: {e}", o.dir.display()))?;
    let mut made = Made(Vec::new());
    let mut flags = 0;
    if o.net {
        flags |= libc::CLONE_NEWNET;
    }
    if o.ipc {
        flags |= libc::CLONE_NEWIPC;
    }
    if o.uts.is_some() {
        flags |= libc::CLONE_NEWUTS;
    }
    if flags != 0 && unsafe { libc::unshare(flags) } != 0 {
        return Err(format!("unshare: {}", errno()));
    }
    let mut out = serde_json::Map::new();
    if let Some(h) = &o.uts {
        if unsafe { libc::sethostname(h.as_ptr() as *const libc::c_char, h.len()) } != 0 {
            return Err(format!("sethostname: {}", errno()));
        }
    }
    if o.net {
        loopback_up()?;
    }
    for (k, v) in &o.sysctls {
        write_sysctl(k, v)?;
    }
    for (kind, on) in [("net", o.net), ("ipc", o.ipc), ("uts", o.uts.is_some())] {
        if on {
            let p = o.dir.join(kind);
            bind_ns(&mut made, kind, &p)?;
            out.insert(kind.into(), p.to_string_lossy().into());
        }
    }
    if let Some(size) = o.shm_size {
        let p = o.dir.join("shm");
        let dst = made.mount_point(&p, true)?;
        let data = cstr(format!("mode=1777,size={size}").as_bytes())?;
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if unsafe { libc::mount(c"shm".as_ptr(), dst.as_ptr(), c"tmpfs".as_ptr(), flags, data.as_ptr() as *const libc::c_void) } != 0 {
            return Err(format!("mounting the pod's shm on {}: {}", p.display(), errno()));
        }
        out.insert("shm".into(), p.to_string_lossy().into());
    }
    if o.pid {
        if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
            return Err(format!("unshare(CLONE_NEWPID): {}", errno()));
        }
        match unsafe { libc::fork() } {
            -1 => return Err(format!("fork: {}", errno())),
            0 => pid_init(),
            pid => {
                out.insert("init_pid".into(), pid.into());
            }
        }
    }
    made.disarm();
    Ok(serde_json::Value::Object(out).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_a_full_command_line() {
        let o = parse(args(&["--dir", "/run/p/ns", "--net", "--ipc", "--uts", "web-1", "--sysctl", "net.ipv4.ip_forward=1", "--sysctl", "kernel.shm_rmid_forced=1", "--shm-size", "67108864", "--pid"])).unwrap();
        assert_eq!(o.dir, PathBuf::from("/run/p/ns"));
        assert!(o.net && o.ipc && o.pid);
        assert_eq!(o.uts.as_deref(), Some("web-1"));
        assert_eq!(o.sysctls.len(), 2);
        assert_eq!(o.shm_size, Some(67108864));
    }

    #[test]
    fn sysctls_must_belong_to_a_pinned_namespace() {
        assert!(parse(args(&["--dir", "/d", "--ipc", "--sysctl", "net.ipv4.ip_forward=1"])).is_err(), "net sysctl without --net");
        assert!(parse(args(&["--dir", "/d", "--net", "--sysctl", "kernel.shmmax=1"])).is_err(), "ipc sysctl without --ipc");
        assert!(parse(args(&["--dir", "/d", "--net", "--ipc", "--sysctl", "vm.swappiness=1"])).is_err(), "a global sysctl");
        assert!(parse(args(&["--dir", "/d", "--net", "--sysctl", "net/../../x=1"])).is_err(), "a path");
        assert_eq!(sysctl_namespace("fs.mqueue.msg_max"), Some("ipc"));
        assert_eq!(sysctl_namespace("kernel.hostname"), Some("uts"));
        assert_eq!(sysctl_namespace("kernel.panic"), None);
    }

    #[test]
    fn refuses_bad_command_lines() {
        for bad in [
            &["--net"][..],
            &["--dir", "relative", "--net"],
            &["--dir", "/d"],
            &["--dir", "/d", "--uts", "bad host"],
            &["--dir", "/d", "--uts", ""],
            &["--dir", "/d", "--shm-size", "12"],
            &["--dir", "/d", "--bogus"],
        ] {
            assert!(parse(args(bad)).is_err(), "{bad:?} accepted");
        }
    }
}
