// UpdateContainerResources for a host container: the new limits written straight into the
// container's cgroup (libcontainer made it at the container's cgroupsPath, with the cgroupfs
// manager, under both cgroup drivers), as `runc update` does, instead of a round trip through
// the shim: the shim holds no resource state, and the files are the state. cgroup v1 controllers
// where they are mounted (a hybrid host counts as v1, as libcontainer treats it), the v2
// hierarchy otherwise. The order of writes follows runc's (a CFS period before its quota;
// memory+swap before memory when the limit grows), so a valid change never fails half way on a
// transient kernel constraint. Values come from CRI callers: each is checked before anything is
// written.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { failedPrecondition, invalidArgument } from '../../../util/errors';
import { hierarchies } from './cgroup-stats';

/** OCI linux.resources as ociResources (oci-spec.ts) makes them; devices are not updated. */
export interface OciResourceUpdate {
  cpu?: { shares?: number; quota?: number; period?: number; cpus?: string; mems?: string };
  memory?: { limit?: number; swap?: number };
  unified?: Record<string, string>;
}

/** One cgroup file write of an update (an update's writes are made in their order). */
export interface CgroupWrite {
  file: string;
  value: string;
}

const CPU_LIST = /^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$/;

function positive(what: string, v: number | undefined, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (v === undefined) return undefined;
  if (!Number.isSafeInteger(v) || v <= 0 || v > max) throw invalidArgument(`${what} ${v} is out of range`);
  return v;
}

function cpuList(what: string, v: string | undefined): string | undefined {
  if (v === undefined || v === '') return undefined;
  if (v.length > 4096 || !CPU_LIST.test(v)) throw invalidArgument(`${what} ${JSON.stringify(v)} is not a CPU or node list`);
  return v;
}

/** cgroup v1 cpu.shares → v2 cpu.weight (the conversion runc and the kernel documentation use). */
export function sharesToWeight(shares: number): number {
  return Math.min(10000, Math.max(1, 1 + Math.floor(((shares - 2) * 9999) / 262142)));
}

/**
 * The writes an update makes, in order, for a host with v1 controllers at `v1` (controller →
 * mount point) or a v2 hierarchy at `v2`. `currentMemsw` (v1): the memory+swap limit now, which
 * decides whether memory+swap goes first.
 */
export function planCgroupUpdate(r: OciResourceUpdate, cgroupsPath: string, h: { v1: Map<string, string>; v2?: string }, currentMemsw?: number): CgroupWrite[] {
  const shares = positive('cpu_shares', r.cpu?.shares, 262144);
  const quota = positive('cpu_quota', r.cpu?.quota);
  const period = positive('cpu_period', r.cpu?.period, 1_000_000);
  const cpus = cpuList('cpuset_cpus', r.cpu?.cpus);
  const mems = cpuList('cpuset_mems', r.cpu?.mems);
  const limit = positive('memory_limit_in_bytes', r.memory?.limit);
  const swap = positive('memory_swap_limit_in_bytes', r.memory?.swap);
  if (swap !== undefined && limit !== undefined && swap < limit) throw invalidArgument(`memory_swap_limit_in_bytes ${swap} is below memory_limit_in_bytes ${limit}`);
  const unified = Object.entries(r.unified ?? {});
  for (const [k, v] of unified) {
    if (!/^[a-z]+\.[a-z0-9_.]+$/.test(k) || k.length > 64) throw invalidArgument(`unified key ${JSON.stringify(k)} is not a cgroup v2 file name`);
    if (typeof v !== 'string' || v.length > 4096 || v.includes('\0') || v.includes('\n')) throw invalidArgument(`unified ${k}: bad value`);
  }

  const out: CgroupWrite[] = [];
  const useV1 = h.v1.size > 0;
  if (useV1) {
    if (unified.length) throw invalidArgument('unified (cgroup v2) resources on a host with cgroup v1 controllers');
    const dir = (ctrl: string) => {
      const m = h.v1.get(ctrl);
      if (!m) throw failedPrecondition(`the cgroup v1 ${ctrl} controller is not mounted on this host`);
      return path.join(m, cgroupsPath);
    };
    if (shares !== undefined) out.push({ file: path.join(dir('cpu'), 'cpu.shares'), value: String(shares) });
    if (period !== undefined) out.push({ file: path.join(dir('cpu'), 'cpu.cfs_period_us'), value: String(period) });
    if (quota !== undefined) out.push({ file: path.join(dir('cpu'), 'cpu.cfs_quota_us'), value: String(quota) });
    if (cpus !== undefined) out.push({ file: path.join(dir('cpuset'), 'cpuset.cpus'), value: cpus });
    if (mems !== undefined) out.push({ file: path.join(dir('cpuset'), 'cpuset.mems'), value: mems });
    if (limit !== undefined || swap !== undefined) {
      const mem = dir('memory');
      const limitW = limit !== undefined ? { file: path.join(mem, 'memory.limit_in_bytes'), value: String(limit) } : undefined;
      const swapW = swap !== undefined ? { file: path.join(mem, 'memory.memsw.limit_in_bytes'), value: String(swap) } : undefined;
      // memory.limit_in_bytes may never exceed memory.memsw.limit_in_bytes: raise memsw first
      if (swapW && limitW && currentMemsw !== undefined && swap! > currentMemsw) out.push(swapW, limitW);
      else out.push(...([limitW, swapW].filter(Boolean) as CgroupWrite[]));
    }
    return out;
  }
  if (!h.v2) throw failedPrecondition('no cgroup hierarchy is mounted on this host');
  const dir = path.join(h.v2, cgroupsPath);
  if (shares !== undefined) out.push({ file: path.join(dir, 'cpu.weight'), value: String(sharesToWeight(shares)) });
  if (quota !== undefined || period !== undefined) out.push({ file: path.join(dir, 'cpu.max'), value: `${quota ?? 'max'}${period !== undefined ? ` ${period}` : ''}` });
  if (cpus !== undefined) out.push({ file: path.join(dir, 'cpuset.cpus'), value: cpus });
  if (mems !== undefined) out.push({ file: path.join(dir, 'cpuset.mems'), value: mems });
  if (limit !== undefined) out.push({ file: path.join(dir, 'memory.max'), value: String(limit) });
  // v2 counts swap alone: memory+swap minus memory
  if (swap !== undefined && limit !== undefined) out.push({ file: path.join(dir, 'memory.swap.max'), value: String(swap - limit) });
  for (const [k, v] of unified) out.push({ file: path.join(dir, k), value: v });
  return out;
}

/** Applies an update to the container cgroup at `cgroupsPath`; the cgroup must exist. */
export async function updateCgroup(cgroupsPath: string, r: OciResourceUpdate): Promise<CgroupWrite[]> {
  const h = hierarchies();
  let memsw: number | undefined;
  const memMount = h.v1.get('memory');
  if (memMount && r.memory?.swap !== undefined) {
    const text = await fsp.readFile(path.join(memMount, cgroupsPath, 'memory.memsw.limit_in_bytes'), 'utf8').catch(() => undefined);
    if (text === undefined) throw failedPrecondition('memory_swap_limit_in_bytes: this host does not account swap (no memory.memsw.limit_in_bytes)');
    memsw = Number(text.trim());
  }
  const writes = planCgroupUpdate(r, cgroupsPath, h, memsw);
  for (const w of writes) {
    try {
      await fsp.writeFile(w.file, w.value);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw failedPrecondition(`the container's cgroup has no ${path.basename(w.file)} (${path.dirname(w.file)})`);
      if (code === 'EINVAL' || code === 'EBUSY') throw invalidArgument(`${path.basename(w.file)} = ${w.value} refused by the kernel (${code})`);
      throw err;
    }
  }
  return writes;
}
