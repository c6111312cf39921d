// In-place pod resize (kubelet's InPlacePodVerticalScaling): the size a pod's resources need,
// and the size its VM boots with so that it can grow. A pod VM cannot get vCPUs or RAM its
// machine was not started with (the microvm machine has no CPU or memory hot-plug), so a VM
// boots at its *ceiling* (the pod's size at creation, raised to the [vm] resize_* ceilings of
// the config) and runs at its *size*: vCPUs beyond it offline in the guest, RAM beyond it held
// by a balloon. Growing and shrinking within the ceiling is then exact and reversible; beyond it
// is refused before anything changes. The trade-off: headroom costs a little per pod (an idle
// vCPU thread, the guest's page tables for the ballooned RAM), so the default ceiling is the
// pod's own boot size (resizable down and back up only).
import type { LinuxContainerResources } from '../../cri-api/messages';
import type { Config } from '../config/config';
import { failedPrecondition, invalidArgument } from '../util/errors';

export interface PodSize {
  vcpus: number;
  memoryMiB: number;
}

/** Smallest RAM a resize may leave a pod VM (the guest kernel, agent and a container). */
export const MIN_MEMORY_MIB = 64;

/** What CRI resources ask for: whole vCPUs for a CPU quota, MiB for a memory limit; 0 where unlimited. */
export function neededSize(r: LinuxContainerResources | null | undefined): PodSize {
  const quota = Number(r?.cpu_quota ?? 0);
  const period = Number(r?.cpu_period ?? 0) || 100_000;
  const mem = Number(r?.memory_limit_in_bytes ?? 0);
  if (!Number.isFinite(quota) || !Number.isFinite(period) || period < 0 || !Number.isFinite(mem)) throw invalidArgument('resources: cpu_quota, cpu_period and memory_limit_in_bytes must be numbers');
  return {
    vcpus: quota > 0 ? Math.ceil(quota / period) : 0,
    memoryMiB: mem > 0 ? Math.ceil(mem / (1024 * 1024)) : 0,
  };
}

/** A pod VM's size for its resources: the config's defaults at least, its maximums at most. */
export function podSize(r: LinuxContainerResources | null | undefined, vm: Config['vm']): PodSize {
  const n = neededSize(r);
  return {
    vcpus: Math.min(vm.maxVcpus, Math.max(vm.defaultVcpus, n.vcpus)),
    memoryMiB: Math.min(vm.maxMemoryMiB, Math.max(vm.defaultMemoryMiB, n.memoryMiB)),
  };
}

/** The size a pod VM boots with: its own size raised to the configured resize ceilings. */
export function bootSize(size: PodSize, vm: Config['vm']): PodSize {
  return {
    vcpus: Math.max(size.vcpus, Math.min(vm.maxVcpus, vm.resizeVcpus)),
    memoryMiB: Math.max(size.memoryMiB, Math.min(vm.maxMemoryMiB, vm.resizeMemoryMiB)),
  };
}

/**
 * The size a resize asks for, checked against the pod's ceiling: FAILED_PRECONDITION naming
 * the ceiling when it is beyond (nothing has changed then).
 */
export function checkResize(target: PodSize, ceiling: PodSize, what: string): PodSize {
  if (!Number.isInteger(target.vcpus) || !Number.isInteger(target.memoryMiB) || target.vcpus < 1 || target.memoryMiB < MIN_MEMORY_MIB) {
    throw invalidArgument(`${what}: a pod VM needs at least 1 vCPU and ${MIN_MEMORY_MIB} MiB, asked for ${target.vcpus} vCPUs and ${target.memoryMiB} MiB`);
  }
  if (target.vcpus > ceiling.vcpus || target.memoryMiB > ceiling.memoryMiB) {
    throw failedPrecondition(
      `${what}: ${target.vcpus} vCPUs and ${target.memoryMiB} MiB are beyond the pod VM's ceiling of ${ceiling.vcpus} vCPUs and ${ceiling.memoryMiB} MiB ` +
        '(it boots with its size at creation or the [vm] resize_vcpus / resize_memory_mib ceilings; a bigger pod must be recreated)',
    );
  }
  return target;
}
