//! Kernel modules, loaded with finit_module(2) (the guest has no kmod).
//! The build lists boot modules in /lib/modules/podvisor.order (dependency order) and big,
//! rarely needed ones in /lib/modules/podvisor.late as "group path" lines, loaded on first use
//! (e.g. `ensure("ext4")` before mounting an ext4 disk). The modules the kernel may request for
//! a privileged container (modprobe.rs) are indexed in /lib/modules/podvisor.modules
//! ("name path dep,dep") and /lib/modules/podvisor.alias ("alias name").

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;

use crate::log;

pub const BOOT_LIST: &str = "/lib/modules/podvisor.order";
pub const LATE_LIST: &str = "/lib/modules/podvisor.late";
pub const INDEX: &str = "/lib/modules/podvisor.modules";
pub const ALIASES: &str = "/lib/modules/podvisor.alias";

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

/// Files of the on-demand modules and their lists (switch_root keeps them).
pub fn late_files() -> Vec<String> {
    let list = std::fs::read_to_string(LATE_LIST).unwrap_or_default();
    let index = std::fs::read_to_string(INDEX).unwrap_or_default();
    let mut files: Vec<String> = list.lines().filter_map(|l| l.split_once(' ').map(|(_, p)| p.trim().to_string())).collect();
    files.extend(parse_index(&index).into_iter().map(|m| m.path));
    files.sort();
    files.dedup();
    files.extend([LATE_LIST, INDEX, ALIASES].map(String::from));
    files
}

/// Module names as the kernel and modprobe compare them: `-` and `_` are the same.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

pub struct Indexed {
    pub name: String,
    pub path: String,
    pub deps: Vec<String>,
}

/// "name path dep,dep" lines ("-" for no deps); malformed lines are skipped.
pub fn parse_index(text: &str) -> Vec<Indexed> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, path, deps) = (f.next()?, f.next()?, f.next().unwrap_or("-"));
            let deps = if deps == "-" { vec![] } else { deps.split(',').filter(|d| !d.is_empty()).map(normalize).collect() };
            Some(Indexed { name: normalize(name), path: path.to_string(), deps })
        })
        .collect()
}

/// fnmatch(3) as modprobe applies it to aliases: `*`, `?` and `[...]` (with `!`/`^` and ranges).
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    match pat.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|i| glob_match(&pat[1..], &s[i..])),
        Some(b'?') => !s.is_empty() && glob_match(&pat[1..], &s[1..]),
        Some(b'[') => {
            let Some(close) = pat.iter().skip(2).position(|&c| c == b']').map(|i| i + 2) else {
                return s.first() == Some(&b'[') && glob_match(&pat[1..], &s[1..]);
            };
            let Some(&c) = s.first() else { return false };
            let mut set = &pat[1..close];
            let negate = matches!(set.first(), Some(b'!' | b'^'));
            if negate {
                set = &set[1..];
            }
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != negate && glob_match(&pat[close + 1..], &s[1..])
        }
        Some(&p) => s.first() == Some(&p) && glob_match(&pat[1..], &s[1..]),
    }
}

/// The indexed module a kernel request names: the module itself, or the first alias that
/// matches. None: the guest does not ship it (or it is builtin / loaded at boot).
pub fn resolve(request: &str, index: &[Indexed], aliases: &str) -> Option<String> {
    let want = normalize(request);
    if index.iter().any(|m| m.name == want) {
        return Some(want);
    }
    aliases.lines().find_map(|l| {
        let (pat, name) = l.split_once(' ')?;
        let name = normalize(name.trim());
        (glob_match(normalize(pat).as_bytes(), want.as_bytes()) && index.iter().any(|m| m.name == name)).then_some(name)
    })
}

/// Load `name` from the index after its dependencies (depth-first). Modules already present
/// (/sys/module/<name>) are skipped; a module loaded by someone else meanwhile is fine (EEXIST).
/// Returns the modules this call loaded, in order.
pub fn load_indexed(name: &str, index: &[Indexed]) -> Result<Vec<String>, String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut loaded = Vec::new();
    let mut seen = HashSet::new();
    load_rec(name, index, &cmdline, &mut seen, &mut loaded)?;
    Ok(loaded)
}

fn load_rec(name: &str, index: &[Indexed], cmdline: &str, seen: &mut HashSet<String>, loaded: &mut Vec<String>) -> Result<(), String> {
    if !seen.insert(name.to_string()) || Path::new("/sys/module").join(name).join("initstate").exists() {
        return Ok(());
    }
    let m = index.iter().find(|m| m.name == name).ok_or_else(|| format!("module {name} is not in the guest"))?;
    for d in &m.deps {
        load_rec(d, index, cmdline, seen, loaded)?;
    }
    load_one(&m.path, cmdline)?;
    loaded.push(name.to_string());
    Ok(())
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
    use super::*;

    #[test]
    fn globs_as_modprobe_matches_aliases() {
        assert!(glob_match(b"block_major_7_*", b"block_major_7_0"));
        assert!(glob_match(b"char_major_10_229", b"char_major_10_229"));
        assert!(!glob_match(b"char_major_10_229", b"char_major_10_22"));
        assert!(glob_match(b"nft_expr_?_reject", b"nft_expr_1_reject"));
        assert!(glob_match(b"x[0-9]y", b"x7y"));
        assert!(!glob_match(b"x[!0-9]y", b"x7y"));
        assert!(!glob_match(b"a*b", b"acd"));
    }

    #[test]
    fn resolves_names_and_aliases_to_shipped_modules_only() {
        let index = parse_index("dummy /lib/m/dummy.ko -\nbridge /lib/m/bridge.ko stp,llc\nstp /lib/m/stp.ko llc\nllc /lib/m/llc.ko -\nloop /lib/m/loop.ko -\n");
        let aliases = "rtnl-link-dummy dummy\nrtnl-link-bridge bridge\nblock-major-7-* loop\nrtnl-link-team team\n";
        assert_eq!(resolve("rtnl-link-dummy", &index, aliases).as_deref(), Some("dummy"));
        assert_eq!(resolve("rtnl-link-bridge", &index, aliases).as_deref(), Some("bridge"));
        assert_eq!(resolve("block-major-7-3", &index, aliases).as_deref(), Some("loop"));
        assert_eq!(resolve("dummy", &index, aliases).as_deref(), Some("dummy"));
        // an alias of a module the guest does not ship, and an unknown name
        assert_eq!(resolve("rtnl-link-team", &index, aliases), None);
        assert_eq!(resolve("net-pf-38", &index, aliases), None);
        assert_eq!(index.iter().find(|m| m.name == "bridge").unwrap().deps, vec!["stp", "llc"]);
    }

    #[test]
    fn params() {
        let c = "console=ttyS0 virtio_mmio.device=4K@0xfeb00000:12 virtio-mmio.device=4K@0xfeb00200:13 foo.bar";
        assert_eq!(super::params_for(c, "virtio_mmio"), "device=4K@0xfeb00000:12 device=4K@0xfeb00200:13");
        assert_eq!(super::params_for(c, "foo"), "");
    }
}
