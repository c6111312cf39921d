//! Containers, through youki's `libcontainer` linked into the agent (exec'ing a dynamic
//! runtime costs ~350 ms per container under TCG; in-process it is the clone/exec only).
//!
//! Layout per container: /run/podvisor/containers/<id>/{config.json, rootfs, upper, work}
//! with rootfs = overlay(lower = image mount, upper/work in tmpfs); a read-only rootfs is the same
//! overlay remounted read-only by libcontainer after the mounts (see mount_rootfs). libcontainer keeps its state under /run/podvisor/youki/<id>.
//! cgroup v2 at /sys/fs/cgroup/podvisor/<id> unless the host names another absolute path.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container as LcContainer;
use libcontainer::syscall::syscall::SyscallType;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{AgentError, Ctx, Result};
use crate::idmap::{self, IdMap, Mapping, UserNamespaces};
use crate::reaper::{ExitStatus, Reaper};
use crate::stdio::{self, StdioIds};
use crate::streams::Streams;
use crate::util::{check_id, check_run_path};
use crate::{log, tmpfs, users};

pub const CONTAINERS_DIR: &str = "/run/podvisor/containers";
pub const YOUKI_ROOT: &str = "/run/podvisor/youki";

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

pub struct Proc {
    pub pid: i32,
    pub exit: Option<ExitStatus>,
    pub master: Option<Rc<OwnedFd>>,
}

pub struct Container {
    pub status: Status,
    pub init: Proc,
    pub oom_killed: bool,
    pub dir: PathBuf,
    /// absolute cgroup directory
    pub cgroup: PathBuf,
    /// cgroupsPath as given to libcontainer (relative to the cgroup root)
    pub cgroup_rel: PathBuf,
    /// spec.process, the template for exec processes
    pub process: Value,
    /// spec.linux.seccomp: exec processes get it too (libcontainer's tenant path leaves it out)
    pub seccomp: Option<Value>,
    /// the process runs in a user namespace (exec processes must join it: exec.rs)
    pub userns: bool,
    pub execs: HashMap<String, Proc>,
}

/// The pod's containers, and what creating and running them takes: the reaper (their exits)
/// and the stream table (their stdio and exit events). exec.rs and stats.rs read the table;
/// no `RefCell` borrow of it is held across an `.await`.
pub struct Containers {
    pub table: RefCell<HashMap<String, Container>>,
    pub reaper: Rc<Reaper>,
    pub streams: Rc<Streams>,
    /// user namespaces of idmapped mounts, by mapping (`hostUsers: false` pods)
    pub userns: UserNamespaces,
}

impl Containers {
    pub fn new(reaper: Rc<Reaper>, streams: Rc<Streams>) -> Rc<Containers> {
        Rc::new(Containers { table: RefCell::new(HashMap::new()), reaper, streams, userns: UserNamespaces::default() })
    }
}

#[derive(Deserialize)]
struct RootfsParams {
    image: String,
    #[serde(default)]
    readonly: bool,
}

#[derive(Deserialize)]
struct CreateParams {
    id: String,
    rootfs: RootfsParams,
    spec: Value,
    #[serde(default)]
    username: Option<String>,
    /// "merge" (default): the image's /etc/group memberships of the user are added to the
    /// supplementary groups; "strict": only the spec's own (CRI SupplementalGroupsPolicy)
    #[serde(default)]
    groups_policy: Option<String>,
    stdio: StdioIds,
}

/// The identity the container's process runs with (container.create's result, CRI
/// ContainerStatus.user): supplementary groups start with the primary group, as `id -G` shows.
struct EffectiveUser {
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
}

#[derive(Deserialize)]
struct IdParams {
    id: String,
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| AgentError::invalid(format!("{what}: {e}")))
}

fn lc_err(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::internal(format!("{what}: {e}"))
}

fn load(id: &str) -> Result<LcContainer> {
    LcContainer::load(Path::new(YOUKI_ROOT).join(id)).map_err(|e| lc_err("load container state", e))
}

pub fn create(containers: &Rc<Containers>, params: Value) -> Result<Value> {
    let p: CreateParams = parse("container.create", params)?;
    check_id("container id", &p.id)?;
    if containers.table.borrow().contains_key(&p.id) {
        return Err(AgentError::exists(format!("container {} exists", p.id)));
    }
    let image = check_run_path("rootfs.image", &p.rootfs.image)?;
    if !image.is_dir() {
        return Err(AgentError::not_found(format!("image dir {} does not exist", image.display())));
    }
    if !p.spec.is_object() {
        return Err(AgentError::invalid("spec must be an object"));
    }
    let dir = Path::new(CONTAINERS_DIR).join(&p.id);
    // Leftovers of a failed create/delete: start clean.
    cleanup(&p.id, &dir);
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).ctx("mkdir rootfs")?;

    let res = create_inner(containers, &p, &image, &dir, &rootfs);
    if res.is_err() {
        cleanup(&p.id, &dir);
    }
    res
}

fn create_inner(containers: &Rc<Containers>, p: &CreateParams, image: &Path, dir: &Path, rootfs: &Path) -> Result<Value> {
    let (mut spec, cgroup_rel, user) = prepare_spec(p, image, rootfs)?;
    let prepared = stdio::prepare(&containers.streams, &p.stdio, dir, "console")?;

    let mapping = user_mapping(&spec)?;
    let userns = mapping.is_some();
    match mapping {
        Some(m) => {
            let userns = containers.userns.get(&m)?;
            let lower = dir.join("lower");
            idmap::idmapped_clone(image, &lower, &userns)?;
            // the writable layer's root is the container root's (tmpfs cannot be idmapped in
            // 6.1); before the overlay is mounted, which takes its root's owner from it then
            mount_rootfs(&lower, dir, rootfs, Some((m.host_uid(0).unwrap_or(0), m.host_gid(0).unwrap_or(0))))?;
            idmap_image_volumes(&mut spec, dir, &containers.userns, &m)?;
        }
        None => mount_rootfs(image, dir, rootfs, None)?,
    }
    let spec = bind_tmpfs_sub_paths(spec, dir)?;
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&spec).ctx("encode spec")?).ctx("write config.json")?;

    let mut b = ContainerBuilder::new(p.id.clone(), SyscallType::Linux)
        .with_root_path(YOUKI_ROOT)
        .map_err(|e| lc_err("youki root", e))?;
    let mut prepared = prepared;
    if let Some([i, o, e]) = prepared.child.take() {
        b = b.with_stdin(i).with_stdout(o).with_stderr(e);
    }
    if let Some((_, path)) = &prepared.console {
        b = b.with_console_socket(Some(path));
    }
    let t0 = std::time::Instant::now();
    let c = b
        .as_init(dir)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| lc_err("create container", e))?;
    let pid = c.pid().map(|p| p.as_raw()).unwrap_or(0);
    // Watch before the next await (see reaper.rs).
    let rx = containers.reaper.watch(pid);
    log!("container {} created (pid {pid}) in {:?}", p.id, t0.elapsed());

    let att = stdio::attach(&containers.streams, &p.stdio, prepared);
    let att = match att {
        Ok(a) => a,
        Err(e) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err(e);
        }
    };
    let master = att.master.clone();
    let id = p.id.clone();
    let table = containers.clone();
    stdio::spawn_waiter(&containers.streams, p.id.clone(), None, pid, rx, att, move |st| {
        let mut cs = table.table.borrow_mut();
        crate::executor::forget(&id);
        let Some(c) = cs.get_mut(&id) else { return false };
        c.status = Status::Stopped;
        c.init.exit = Some(st);
        c.oom_killed = oom_kills(&c.cgroup) > 0;
        c.oom_killed
    });
    let cgroup = Path::new("/sys/fs/cgroup").join(cgroup_rel.strip_prefix("/").unwrap_or(&cgroup_rel));
    containers.table.borrow_mut().insert(
        p.id.clone(),
        Container {
            status: Status::Created,
            init: Proc { pid, exit: None, master },
            oom_killed: false,
            dir: dir.to_path_buf(),
            cgroup,
            cgroup_rel,
            process: spec.get("process").cloned().unwrap_or(Value::Null),
            seccomp: spec.pointer("/linux/seccomp").filter(|v| !v.is_null()).cloned(),
            userns,
            execs: HashMap::new(),
        },
    );
    Ok(json!({ "pid": 0, "user": { "uid": user.uid, "gid": user.gid, "additional_gids": user.additional_gids } }))
}

/// The spec's user namespace mapping when the container gets a user namespace of its own (or
/// joins one: the mapping then tells how its root file system must be idmapped).
fn user_mapping(spec: &Value) -> Result<Option<Mapping>> {
    let has_userns = spec
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .map(|a| a.iter().any(|n| n.get("type").and_then(Value::as_str) == Some("user")))
        .unwrap_or(false);
    if !has_userns {
        return Ok(None);
    }
    let maps = |k: &str| -> Result<Vec<IdMap>> {
        let v = spec.pointer(&format!("/linux/{k}")).cloned().unwrap_or(Value::Null);
        if v.is_null() {
            return Err(AgentError::invalid(format!("a user namespace needs linux.{k}")));
        }
        serde_json::from_value(v).map_err(|e| AgentError::invalid(format!("linux.{k}: {e}")))
    };
    Ok(Some(Mapping::new(maps("uidMappings")?, maps("gidMappings")?)?))
}

/// Image volumes (binds out of an image mount) of a user-namespaced container come from an
/// idmapped clone of the image mount, as its root file system does.
fn idmap_image_volumes(spec: &mut Value, dir: &Path, userns: &UserNamespaces, m: &Mapping) -> Result<()> {
    let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) else { return Ok(()) };
    let mut clones: HashMap<String, PathBuf> = HashMap::new();
    for mnt in mounts.iter_mut() {
        let Some(src) = mnt.get("source").and_then(Value::as_str).map(String::from) else { continue };
        let Ok(rel) = Path::new(&src).strip_prefix(IMAGES_DIR) else { continue };
        let mut parts = rel.components();
        let Some(Component::Normal(image)) = parts.next() else { continue };
        let image = image.to_string_lossy().to_string();
        if !clones.contains_key(&image) {
            let at = dir.join("idmap").join(clones.len().to_string());
            idmap::idmapped_clone(&Path::new(IMAGES_DIR).join(&image), &at, &userns.get(m)?)?;
            clones.insert(image.clone(), at);
        }
        let new_src = clones[&image].join(parts.as_path());
        mnt["source"] = json!(new_src);
    }
    Ok(())
}

/// overlay(lower = image, upper/work in tmpfs). A read-only rootfs gets the same overlay: the
/// runtime must still create mount points (/etc/resolv.conf, volume targets) that the image
/// lacks; `root.readonly` in the spec then makes libcontainer remount `/` read-only once the
/// mounts are in place (what runc does with a containerd snapshot).
fn mount_rootfs(image: &Path, dir: &Path, rootfs: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    let upper = dir.join("upper");
    let work = dir.join("work");
    std::fs::create_dir_all(&upper).ctx("mkdir upper")?;
    std::fs::create_dir_all(&work).ctx("mkdir work")?;
    if let Some((uid, gid)) = owner {
        nix::unistd::chown(&upper, Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid))).ctx("chown upper")?;
    }
    let opts = format!("lowerdir={},upperdir={},workdir={}", image.display(), upper.display(), work.display());
    mount(Some("overlay"), rootfs, Some("overlay"), MsFlags::empty(), Some(opts.as_str())).ctx("mount overlay rootfs")?;
    Ok(())
}

/// Adjust the host-built spec to this guest: root path, terminal, user, cgroup, resolv.conf.
fn prepare_spec(p: &CreateParams, image: &Path, rootfs: &Path) -> Result<(Value, PathBuf, EffectiveUser)> {
    let mut spec = p.spec.clone();
    spec["root"] = json!({ "path": rootfs, "readonly": p.rootfs.readonly });
    if !spec.get("ociVersion").map(Value::is_string).unwrap_or(false) {
        spec["ociVersion"] = json!("1.0.2");
    }
    let process = spec.get_mut("process").and_then(Value::as_object_mut).ok_or_else(|| AgentError::invalid("spec.process missing"))?;
    let args_ok = process.get("args").and_then(Value::as_array).map(|a| !a.is_empty()).unwrap_or(false);
    if !args_ok {
        return Err(AgentError::invalid("spec.process.args must be a non-empty array"));
    }
    process.insert("terminal".into(), json!(p.stdio.tty));
    if !process.contains_key("cwd") {
        process.insert("cwd".into(), json!("/"));
    }

    // User: a username from the image's /etc/passwd; the primary group from there unless the
    // spec names one; the user's /etc/group memberships added unless the policy is strict.
    let strict = match p.groups_policy.as_deref() {
        None | Some("merge") => false,
        Some("strict") => true,
        Some(o) => return Err(AgentError::invalid(format!("groups_policy {o:?}: merge or strict"))),
    };
    let user = process.entry("user").or_insert_with(|| json!({"uid": 0}));
    if !user.is_object() {
        return Err(AgentError::invalid("spec.process.user must be an object"));
    }
    let given: Vec<u32> = user
        .get("additionalGids")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|g| g.as_u64().map(|g| g as u32)).collect())
        .unwrap_or_default();
    let (uid, primary, image_groups) = match &p.username {
        Some(name) => users::resolve(image, name)?,
        None => {
            let uid = user.get("uid").and_then(Value::as_u64).unwrap_or(0) as u32;
            let (gid, groups) = users::by_uid(image, uid);
            (uid, gid, groups)
        }
    };
    let gid = user.get("gid").and_then(Value::as_u64).map(|g| g as u32).unwrap_or(primary);
    let mut extra: Vec<u32> = vec![gid];
    extra.extend(given);
    if !strict {
        extra.extend(image_groups);
    }
    let mut seen = std::collections::HashSet::new();
    extra.retain(|g| seen.insert(*g));
    user["uid"] = json!(uid);
    user["gid"] = json!(gid);
    user["additionalGids"] = json!(extra);
    let effective = EffectiveUser { uid, gid, additional_gids: extra };

    // cgroup: an absolute plain path from the host, else /podvisor/<id>.
    let linux = spec.as_object_mut().unwrap().entry("linux").or_insert_with(|| json!({}));
    if !linux.is_object() {
        return Err(AgentError::invalid("spec.linux must be an object"));
    }
    let given = linux.get("cgroupsPath").and_then(Value::as_str).map(PathBuf::from);
    let cgroup_rel = match given {
        Some(g) if g.is_absolute() && !g.to_string_lossy().contains(':') && g.components().skip(1).all(|c| matches!(c, Component::Normal(_))) && g.components().count() > 1 => g,
        _ => PathBuf::from(format!("/podvisor/{}", p.id)),
    };
    linux["cgroupsPath"] = json!(cgroup_rel);

    // resolv.conf: bind the pod's unless the CRI already mounts one.
    if Path::new(crate::sandbox::RESOLV_CONF).exists() {
        let mounts = spec.as_object_mut().unwrap().entry("mounts").or_insert_with(|| json!([]));
        if let Some(arr) = mounts.as_array_mut() {
            let has = arr.iter().any(|m| m.get("destination").and_then(Value::as_str) == Some("/etc/resolv.conf"));
            if !has {
                arr.push(json!({
                    "destination": "/etc/resolv.conf", "type": "bind",
                    "source": crate::sandbox::RESOLV_CONF, "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]
                }));
            }
        }
    }
    // Image volumes: binds out of an image mounted in the pod (the runtime mounted it there).
    if let Some(mounts) = spec.get("mounts").and_then(Value::as_array) {
        for m in mounts {
            if let Some(src) = m.get("source").and_then(Value::as_str) {
                if Path::new(src).starts_with(IMAGES_DIR) {
                    check_image_source(src)?;
                }
            }
        }
    }
    // tmpfs volumes (tmpfs.mount): the volume must be mounted; sub paths are bound later.
    if let Some(mounts) = spec.get("mounts").and_then(Value::as_array) {
        for m in mounts {
            if let Some(src) = m.get("source").and_then(Value::as_str) {
                if Path::new(src).starts_with(tmpfs::TMPFS_DIR) {
                    tmpfs::split_source(src)?;
                }
            }
        }
    }
    // Validate through oci-spec now: a clear invalid_argument beats a failure deep in create.
    serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone()).map_err(|e| AgentError::invalid(format!("spec: {e}")))?;
    Ok((spec, cgroup_rel, effective))
}

/// Directory of a container's binds of tmpfs volume sub paths (tmpfs.rs).
const TMPFS_BINDS: &str = "tmpfs";

/// A mount whose source is a sub path of a tmpfs volume gets that directory bound (without
/// symlinks, see tmpfs.rs) under the container's own directory, and names the bind instead.
fn bind_tmpfs_sub_paths(mut spec: Value, dir: &Path) -> Result<Value> {
    let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) else { return Ok(spec) };
    for (i, m) in mounts.iter_mut().enumerate() {
        let Some(src) = m.get("source").and_then(Value::as_str) else { continue };
        if !Path::new(src).starts_with(tmpfs::TMPFS_DIR) {
            continue;
        }
        if let Some((root, sub)) = tmpfs::split_source(src)? {
            let at = dir.join(TMPFS_BINDS).join(i.to_string());
            tmpfs::bind_sub_path(&root, &sub, &at)?;
            m["source"] = json!(at);
        }
    }
    Ok(spec)
}

/// Unmounts the binds of tmpfs sub paths; false if one is still mounted (then the container
/// directory must not be removed: that would delete the volume's files through it).
fn unbind_tmpfs_sub_paths(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir.join(TMPFS_BINDS)) else { return true };
    let mut clean = true;
    for e in entries.flatten() {
        let p = e.path();
        let _ = umount2(&p, MntFlags::MNT_DETACH);
        if crate::disks::is_mountpoint(&p.to_string_lossy()) {
            log!("{} is still mounted; keeping {}", p.display(), dir.display());
            clean = false;
        }
    }
    clean
}

/// Remove everything a container left: libcontainer state, mounts, its directory.
fn cleanup(id: &str, dir: &Path) {
    let youki = Path::new(YOUKI_ROOT).join(id);
    if youki.exists() {
        if let Ok(mut c) = LcContainer::load(youki.clone()) {
            if let Err(e) = c.delete(true) {
                log!("libcontainer delete {id}: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&youki);
    }
    let rootfs = dir.join("rootfs");
    for _ in 0..4 {
        if umount2(&rootfs, MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
    // idmapped clones of image mounts (user-namespaced containers): never delete through them
    let mut clones = vec![dir.join("lower")];
    if let Ok(rd) = std::fs::read_dir(dir.join("idmap")) {
        clones.extend(rd.flatten().map(|e| e.path()));
    }
    for c in clones {
        let _ = umount2(&c, MntFlags::MNT_DETACH);
        if crate::disks::is_mountpoint(&c.to_string_lossy()) {
            log!("container {id}: {} is still mounted; its directory stays", c.display());
            return;
        }
    }
    if unbind_tmpfs_sub_paths(dir) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

pub fn start(containers: &Rc<Containers>, params: Value) -> Result<Value> {
    let p: IdParams = parse("container.start", params)?;
    check_id("container id", &p.id)?;
    let pid = {
        let cs = containers.table.borrow();
        let c = cs.get(&p.id).ok_or_else(|| AgentError::not_found(format!("container {}", p.id)))?;
        if c.status != Status::Created {
            return Err(AgentError::precondition(format!("container {} is {:?}", p.id, c.status)));
        }
        c.init.pid
    };
    let t0 = std::time::Instant::now();
    load(&p.id)?.start().map_err(|e| lc_err("start container", e))?;
    log!("container {} started in {:?}", p.id, t0.elapsed());
    if let Some(c) = containers.table.borrow_mut().get_mut(&p.id) {
        if c.status == Status::Created {
            c.status = Status::Running;
        }
    }
    Ok(json!({ "pid": pid }))
}

#[derive(Deserialize)]
struct SignalParams {
    id: String,
    signal: i32,
    #[serde(default)]
    all: bool,
}

pub fn check_signal(sig: i32) -> Result<()> {
    if !(1..=64).contains(&sig) {
        return Err(AgentError::invalid(format!("invalid signal {sig}")));
    }
    Ok(())
}

pub fn signal(containers: &Rc<Containers>, params: Value) -> Result<Value> {
    let p: SignalParams = parse("container.signal", params)?;
    check_id("container id", &p.id)?;
    check_signal(p.signal)?;
    let (status, pid, cgroup) = {
        let cs = containers.table.borrow();
        let c = cs.get(&p.id).ok_or_else(|| AgentError::not_found(format!("container {}", p.id)))?;
        (c.status, c.init.pid, c.cgroup.clone())
    };
    if status == Status::Stopped {
        return Ok(json!({}));
    }
    if p.all {
        // Every process in the container's cgroup (what `kill --all` does).
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            unsafe { libc::kill(pid, p.signal) };
        }
    } else if unsafe { libc::kill(pid, p.signal) } < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(AgentError::internal(format!("kill {pid}: {e}")));
        }
    }
    Ok(json!({}))
}

pub fn delete(containers: &Rc<Containers>, params: Value) -> Result<Value> {
    let p: IdParams = parse("container.delete", params)?;
    check_id("container id", &p.id)?;
    let (dir, cgroup) = {
        let cs = containers.table.borrow();
        let c = cs.get(&p.id).ok_or_else(|| AgentError::not_found(format!("container {}", p.id)))?;
        if c.status == Status::Running {
            return Err(AgentError::precondition(format!("container {} is running", p.id)));
        }
        (c.dir.clone(), c.cgroup.clone())
    };
    crate::executor::forget(&p.id);
    cleanup(&p.id, &dir);
    let _ = std::fs::remove_dir(&cgroup);
    containers.table.borrow_mut().remove(&p.id);
    Ok(json!({}))
}

pub fn state(containers: &Rc<Containers>, params: Value) -> Result<Value> {
    let p: IdParams = parse("container.state", params)?;
    check_id("container id", &p.id)?;
    let cs = containers.table.borrow();
    let c = cs.get(&p.id).ok_or_else(|| AgentError::not_found(format!("container {}", p.id)))?;
    let status = match c.status {
        Status::Created => "created",
        Status::Running => "running",
        Status::Stopped => "stopped",
    };
    Ok(json!({
        "status": status,
        "pid": c.init.pid,
        "exit_code": c.init.exit.map(|e| e.code),
        "oom_killed": c.oom_killed,
    }))
}

#[derive(Deserialize)]
struct UpdateParams {
    id: String,
    resources: Value,
}

pub fn update(containers: &Rc<Containers>, params: Value) -> Result<Value> {
    use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt};
    let p: UpdateParams = parse("container.update", params)?;
    check_id("container id", &p.id)?;
    let resources: oci_spec::runtime::LinuxResources =
        serde_json::from_value(p.resources).map_err(|e| AgentError::invalid(format!("resources: {e}")))?;
    let cgroup_rel = {
        let cs = containers.table.borrow();
        let c = cs.get(&p.id).ok_or_else(|| AgentError::not_found(format!("container {}", p.id)))?;
        if c.status == Status::Stopped {
            return Err(AgentError::precondition(format!("container {} is stopped", p.id)));
        }
        c.cgroup_rel.clone()
    };
    let m = libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path: cgroup_rel,
        systemd_cgroup: false,
        container_name: p.id.clone(),
    })
    .map_err(|e| lc_err("cgroup manager", e))?;
    m.apply(&ControllerOpt { resources: &resources, disable_oom_killer: false, oom_score_adj: None, freezer_state: None })
        .map_err(|e| lc_err("apply resources", e))?;
    Ok(json!({}))
}

pub fn oom_kills(cgroup: &Path) -> u64 {
    std::fs::read_to_string(cgroup.join("memory.events"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Where the runtime mounts images in the pod (pod-vm.ts GUEST_IMAGES).
const IMAGES_DIR: &str = "/run/podvisor/images";

/// A bind source inside an image mount (an image volume, perhaps a sub path of it) must exist in
/// the image and reach it without a symlink: the image is untrusted, and a link in it would make
/// the bind take anything of the guest's. The image is a read-only erofs, so what is checked
/// here stays true until the bind.
fn check_image_source(src: &str) -> Result<()> {
    let rel = Path::new(src).strip_prefix(IMAGES_DIR).map_err(|_| AgentError::invalid(format!("image volume source {src:?}")))?;
    let mut cur = PathBuf::from(IMAGES_DIR);
    let mut depth = 0;
    for c in rel.components() {
        match c {
            Component::Normal(n) => cur.push(n),
            _ => return Err(AgentError::invalid(format!("image volume path {src:?} must be normalized"))),
        }
        depth += 1;
        let md = std::fs::symlink_metadata(&cur).map_err(|e| AgentError::not_found(format!("image volume path {}: {e}", cur.display())))?;
        if md.file_type().is_symlink() {
            return Err(AgentError::invalid(format!("image volume path {} is a symlink", cur.display())));
        }
    }
    if depth == 0 {
        return Err(AgentError::invalid("image volume source names no image"));
    }
    Ok(())
}
