// A pod VM in the pod's host cgroup. kubelet makes a cgroup per pod (LinuxPodSandboxConfig
// cgroup_parent) and puts the pod's limits on it: the sum of its containers' plus the
// RuntimeClass overhead. The VM (the QEMU process and its threads) is what the pod costs the
// host, so it goes into a cgroup of its own under that parent: kubelet's limits, QoS and
// eviction then see and bound it. The cgroup driver (RuntimeConfig, `cgroup_driver` in the
// config) says how cgroup_parent is written: a path ("/kubepods/burstable/pod<uid>") or a
// systemd slice ("kubepods-burstable-pod<uid>.slice", nested by its dashes).
//
// Both cgroup v2 (one hierarchy) and v1 (a hierarchy per controller, plus hybrid's unified one)
// are handled, as runc does: the cgroup is made in every hierarchy that accounts or limits
// resources (not devices or freezer: QEMU's device access is not the pod's to restrict).
import fs from 'node:fs/promises';
import path from 'node:path';
import { invalidArgument } from '../util/errors';

export type CgroupDriver = 'cgroupfs' | 'systemd';

/** v1 hierarchies that take a pod VM (by a controller or name in their mount options). */
const V1_HIERARCHIES = ['cpu', 'cpuacct', 'cpuset', 'memory', 'pids', 'blkio', 'hugetlb', 'name=systemd'];

/** cgroup_parent as a path under a hierarchy's root; INVALID_ARGUMENT when it is not one the driver writes. */
export function cgroupParentPath(parent: string, driver: CgroupDriver): string {
  if (driver === 'systemd') {
    // "a-b-c.slice" lives at /a.slice/a-b.slice/a-b-c.slice; "-.slice" is the root slice
    if (parent === '-.slice') return '/';
    const m = /^([A-Za-z0-9:_.\\-]+)\.slice$/.exec(parent);
    if (!m || m[1].startsWith('-') || m[1].endsWith('-') || m[1].includes('--') || m[1].includes('/')) {
      throw invalidArgument(`cgroup_parent ${JSON.stringify(parent)} is not a systemd slice name (cgroup driver systemd)`);
    }
    const parts = m[1].split('-');
    return '/' + parts.map((_, i) => `${parts.slice(0, i + 1).join('-')}.slice`).join('/');
  }
  if (!parent.startsWith('/') || parent.includes('\0') || parent.split('/').some((p) => p === '..' || p === '.')) {
    throw invalidArgument(`cgroup_parent ${JSON.stringify(parent)} is not an absolute cgroup path (cgroup driver cgroupfs)`);
  }
  return path.posix.normalize(parent);
}

/** The pod VM's own cgroup under the parent: a scope for systemd, as runtimes name theirs. */
export function sandboxCgroupName(sandboxId: string, driver: CgroupDriver): string {
  return driver === 'systemd' ? `podvisor-${sandboxId}.scope` : `podvisor-${sandboxId}`;
}

interface Hierarchy {
  mount: string;
  cpuset: boolean;
}

/** This host's pod hierarchies, read once: cgroup file systems are mounted at boot. */
let hostHierarchies: Promise<Hierarchy[]> | undefined;

/** The cgroup hierarchies mounted here that a pod VM joins (from /proc/self/mountinfo). */
export async function podHierarchies(mountinfo = '/proc/self/mountinfo'): Promise<Hierarchy[]> {
  const out: Hierarchy[] = [];
  for (const line of (await fs.readFile(mountinfo, 'utf8')).split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!post) continue;
    const mount = pre.split(' ')[4];
    const [fstype, , superOpts = ''] = post.split(' ');
    if (fstype === 'cgroup2') out.push({ mount, cpuset: false });
    else if (fstype === 'cgroup') {
      const opts = superOpts.split(',');
      if (opts.some((o) => V1_HIERARCHIES.includes(o))) out.push({ mount, cpuset: opts.includes('cpuset') });
    }
  }
  // v1 hierarchies mounted twice (e.g. a bind) are joined once
  return out.filter((h, i) => out.findIndex((x) => x.mount === h.mount) === i);
}

/**
 * Makes `rel` and its missing parents in a hierarchy, pushing each directory it made to `made`
 * (outermost first). A new v1 cpuset gets its parent's CPUs and memory nodes.
 */
async function makeCgroup(h: Hierarchy, rel: string, made: string[]): Promise<string> {
  let dir = h.mount;
  for (const part of rel.split('/').filter(Boolean)) {
    const parent = dir;
    dir = path.join(dir, part);
    try {
      await fs.mkdir(dir);
      made.push(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    if (h.cpuset) {
      for (const f of ['cpuset.cpus', 'cpuset.mems']) {
        if ((await fs.readFile(path.join(dir, f), 'utf8')).trim() === '') await fs.writeFile(path.join(dir, f), await fs.readFile(path.join(parent, f), 'utf8'));
      }
    }
  }
  return dir;
}

/**
 * Creates the pod VM's cgroup under `parent` in every pod hierarchy and moves process `pid`
 * (all its threads) into it. Returns every directory it made, outermost first (the parent too
 * when it did not exist, as for a client that is not kubelet): removeCgroups takes them away
 * again. On failure it removes what it made and throws.
 */
export async function enterPodCgroup(parent: string, driver: CgroupDriver, sandboxId: string, pid: number, hierarchies?: Hierarchy[]): Promise<string[]> {
  const rel = path.posix.join(cgroupParentPath(parent, driver), sandboxCgroupName(sandboxId, driver));
  const made: string[] = [];
  try {
    const hs = hierarchies ?? (await (hostHierarchies ??= podHierarchies().catch((e) => {
      hostHierarchies = undefined; // read again next time
      throw e;
    })));
    if (!hs.length) throw new Error('no cgroup hierarchy is mounted');
    for (const h of hs) {
      const dir = await makeCgroup(h, rel, made);
      await fs.writeFile(path.join(dir, 'cgroup.procs'), `${pid}\n`);
    }
    return made;
  } catch (err) {
    await removeCgroups(made, 0).catch(() => undefined);
    throw new Error(`cannot put the pod VM into cgroup ${rel}: ${(err as Error).message}`);
  }
}

/** The pod VM's own cgroup directory in every pod hierarchy (those enterPodCgroup makes last). */
export async function podCgroupDirs(parent: string, driver: CgroupDriver, sandboxId: string): Promise<string[]> {
  const rel = path.posix.join(cgroupParentPath(parent, driver), sandboxCgroupName(sandboxId, driver));
  const hs = hostHierarchies ? await hostHierarchies : await podHierarchies();
  return hs.map((h) => path.join(h.mount, rel));
}

/**
 * Removes the cgroups enterPodCgroup made, innermost first. The VM must be gone: a cgroup whose
 * last process is still exiting is busy for a moment, so the VM's own cgroups are retried for up
 * to `waitMs`. A parent it made that another pod now uses stays. Throws with what is left when
 * waiting is not enough.
 */
export async function removeCgroups(made: string[], waitMs = 3000): Promise<void> {
  const deadline = Date.now() + waitMs;
  const leaves = new Set(made.filter((d) => !made.some((o) => o.startsWith(d + '/'))));
  for (const dir of [...made].reverse()) {
    for (;;) {
      try {
        await fs.rmdir(dir);
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') break;
        if (code !== 'EBUSY' && code !== 'ENOTEMPTY') throw err;
        if (!leaves.has(dir)) break; // a parent another pod's cgroup is in
        if (Date.now() > deadline) throw new Error(`cgroup ${dir} is still busy`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }
}
