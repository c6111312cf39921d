//! Kernel modules, loaded with finit_module(2) (there is no modprobe in the guest).
//! The build lists boot modules in /lib/modules/podvisor.order (dependency order) and big,
//! rarely needed ones in /lib/modules/podvisor.late as "group path" lines, loaded on first use
//! (e.g. `ensure("ext4")` before mounting an ext4 disk).

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;

use crate::log;

pub const BOOT_LIST: &str = "/lib/modules/podvisor.order";
pub const LATE_LIST: &str = "/lib/modules/podvisor.late";

/// Module parameters come from the kernel command line as `module.param=value`, exactly like
/// modprobe passes them (e.g. QEMU microvm's `virtio_mmio.device=...`).
fn params_for(cmdline: &str, module: &str) -> String {
    let mut out = Vec::new();
    for tok in cmdline.split_whitespace() {
        if let Some((m, rest)) = tok.split_once('.') {
            if m.replace('-', "_") == module && rest.contains('=') {
                out.push(rest.to_string());
            }
        }
    }
    out.join(" ")
}

fn load_one(path: &str, cmdline: &str) -> Result<(), String> {
    let name = Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.split(".ko").next().unwrap_or(n).replace('-', "_"))
        .unwrap_or_default();
    let f = std::fs::File::open(path).map_err(|e| format!("module {path}: {e}"))?;
    let params = CString::new(params_for(cmdline, &name)).unwrap_or_default();
    let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(format!("finit_module {name}: {e}"));
        }
    }
    Ok(())
}

pub fn load_boot() {
    let list = std::fs::read_to_string(BOOT_LIST).unwrap_or_default();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Err(e) = load_one(path, &cmdline) {
            log!("{e}");
        }
    }
}

/// Files of the on-demand modules (switch_root keeps them).
pub fn late_files() -> Vec<String> {
    let list = std::fs::read_to_string(LATE_LIST).unwrap_or_default();
    list.lines().filter_map(|l| l.split_once(' ').map(|(_, p)| p.trim().to_string())).collect()
}

static LOADED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Load the on-demand group `group` once (no-op for unknown groups: builtin or boot-loaded).
pub fn ensure(group: &str) -> Result<(), String> {
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    let set = loaded.get_or_insert_with(HashSet::new);
    if set.contains(group) {
        return Ok(());
    }
    let list = std::fs::read_to_string(LATE_LIST).unwrap_or_default();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    for l in list.lines() {
        if let Some((g, path)) = l.split_once(' ') {
            if g == group {
                load_one(path.trim(), &cmdline)?;
            }
        }
    }
    set.insert(group.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn params() {
        let c = "console=ttyS0 virtio_mmio.device=4K@0xfeb00000:12 virtio-mmio.device=4K@0xfeb00200:13 foo.bar";
        assert_eq!(super::params_for(c, "virtio_mmio"), "device=4K@0xfeb00000:12 device=4K@0xfeb00200:13");
        assert_eq!(super::params_for(c, "foo"), "");
    }
}
