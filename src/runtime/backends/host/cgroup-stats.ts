// A host container's figures, read from its own cgroup (libcontainer made it at the container's
// cgroupsPath): CPU time, memory (usage, working set = usage − inactive file pages, RSS) and
// process count, in the shape the guest agent's `stats` gives for a VM pod's containers
// (runtime/stats.ts reads both). cgroup v1 controllers are used where they are mounted (a
// hybrid host), the v2 hierarchy otherwise. Reads only (cgroup-update.ts writes); a missing
// file reads as 0.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';

interface Hierarchies {
  /** v1 mount point per controller (cpu, cpuacct, cpuset, memory, pids) */
  v1: Map<string, string>;
  /** the cgroup2 mount, if any */
  v2?: string;
}

let cached: Hierarchies | undefined;

/** The cgroup hierarchies of this host, from /proc/self/mountinfo (read once). */
export function hierarchies(mountinfo = '/proc/self/mountinfo'): Hierarchies {
  if (cached && mountinfo === '/proc/self/mountinfo') return cached;
  const h: Hierarchies = { v1: new Map() };
  for (const line of fs.readFileSync(mountinfo, 'utf8').split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!post) continue;
    const point = pre.split(' ')[4];
    const [fstype, , superOpts = ''] = post.split(' ');
    if (fstype === 'cgroup2') h.v2 ??= point;
    else if (fstype === 'cgroup') for (const o of superOpts.split(',')) if (['cpu', 'cpuacct', 'cpuset', 'memory', 'pids'].includes(o) && !h.v1.has(o)) h.v1.set(o, point);
  }
  if (mountinfo === '/proc/self/mountinfo') cached = h;
  return h;
}

/** True on a host with only cgroup v2 (the container then gets a cgroup namespace of its own). */
export function cgroupV2Only(): boolean {
  const h = hierarchies();
  return !!h.v2 && h.v1.size === 0;
}

async function read(file: string): Promise<string> {
  try {
    return await fsp.readFile(file, 'utf8');
  } catch {
    return '';
  }
}

const num = (s: string) => Number(s.trim()) || 0;
function field(text: string, key: string): number {
  const m = new RegExp(`^${key} (\\d+)$`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

export interface ContainerCgroupStats {
  cpu_usage_ns: number;
  memory_usage: number;
  memory_working_set: number;
  memory_rss: number;
  pids: number;
}

/** The figures of the cgroup at `cgroupsPath` (absolute under each hierarchy's root). */
export async function cgroupStats(cgroupsPath: string): Promise<ContainerCgroupStats> {
  const h = hierarchies();
  const v1 = (ctrl: string) => (h.v1.has(ctrl) ? path.join(h.v1.get(ctrl)!, cgroupsPath) : undefined);
  const v2 = h.v2 ? path.join(h.v2, cgroupsPath) : undefined;
  let cpu = 0;
  let usage = 0;
  let inactive = 0;
  let rss = 0;
  let pids = 0;
  const cpuDir = v1('cpuacct');
  if (cpuDir) cpu = num(await read(path.join(cpuDir, 'cpuacct.usage')));
  else if (v2) cpu = field(await read(path.join(v2, 'cpu.stat')), 'usage_usec') * 1000;
  const memDir = v1('memory');
  if (memDir) {
    usage = num(await read(path.join(memDir, 'memory.usage_in_bytes')));
    const stat = await read(path.join(memDir, 'memory.stat'));
    inactive = field(stat, 'total_inactive_file');
    rss = field(stat, 'total_rss');
  } else if (v2) {
    usage = num(await read(path.join(v2, 'memory.current')));
    const stat = await read(path.join(v2, 'memory.stat'));
    inactive = field(stat, 'inactive_file');
    rss = field(stat, 'anon');
  }
  const pidsDir = v1('pids') ?? v2;
  if (pidsDir) pids = num(await read(path.join(pidsDir, 'pids.current')));
  return { cpu_usage_ns: cpu, memory_usage: usage, memory_working_set: Math.max(0, usage - inactive), memory_rss: rss, pids };
}
