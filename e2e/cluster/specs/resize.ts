// In-place resize through the API server (kubelet's InPlacePodVerticalScaling), as `kubectl patch
// pod --subresource resize` does it: kubelet tells podvisor (UpdatePodSandboxResources, then
// UpdateContainerResources), sets its own pod cgroup on the host, and reads back from
// ContainerStatus what it reports as the container's resources. What a user sees is asserted:
// the pod's status (resources, no resize condition left, no restart), the container's view
// inside the running VM (online CPUs, its cgroup's cpu.max and memory.max, the guest's MemTotal)
// and the host's (the same QEMU process, its size in podvisor's verbose status, kubelet's pod
// cgroup that QEMU runs in). A pod VM boots at its ceiling (its size at creation with the
// default config: runtime/resize.ts), so the pod is made big, shrunk, grown back, and then asked
// for more than its ceiling: podvisor refuses before anything changes, and kubelet shows that
// refusal as the PodResizeInProgress condition with reason Error (and a ResizeError event),
// the pod left as it was.
import fs from 'node:fs';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import * as k8s from '@kubernetes/client-node';
import { IMAGES } from '../support/cluster';
import { containerStatus, podOf, type Namespace } from '../support/namespace';
import type { Ctx, SpecGroup } from './context';

const NS = 'e2e-resize';
const POD = 'resizable';
const Mi = 1024 * 1024;
// the CPU request changes with the limits (kubelet's allocatedResources and the pod cgroup's shares follow)
const BIG = { requests: { cpu: '200m', memory: '128Mi' }, limits: { cpu: '2', memory: '512Mi' } };
const SMALL = { requests: { cpu: '100m', memory: '128Mi' }, limits: { cpu: '1', memory: '256Mi' } };
const BEYOND = { requests: BIG.requests, limits: { cpu: '3', memory: '512Mi' } };
type Size = typeof BIG;
const strategicMerge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.StrategicMergePatch);

export const resize: SpecGroup = {
  title: 'in-place resize through the API server',
  namespace: NS,
  setup: (ns) => ns.createAll([podOf(POD, [{
    name: 'main',
    image: IMAGES.busybox,
    command: ['sleep', '7200'],
    resources: BIG,
  }])]),
  specs,
};

/** What the container sees in its VM. */
interface Inside {
  nproc: number;
  online: string;
  cpuMax: string;
  memoryMax: number;
  memTotalMiB: number;
}

function specs(ctx: Ctx, n: () => Namespace): void {

  const inside = async (): Promise<Inside> => {
    const out = await n().run(POD, ['sh', '-c', 'nproc; cat /sys/devices/system/cpu/online /sys/fs/cgroup/cpu.max /sys/fs/cgroup/memory.max; grep MemTotal /proc/meminfo']);
    const [nproc, online, cpuMax, memoryMax, memTotal] = out.trim().split('\n');
    return { nproc: Number(nproc), online, cpuMax, memoryMax: Number(memoryMax), memTotalMiB: Math.round(Number(/(\d+) kB/.exec(memTotal)![1]) / 1024) };
  };

  /** The pod VM on the host: its QEMU, the size podvisor runs it at, kubelet's pod cgroup around it. */
  const onHost = async (p: k8s.V1Pod) => {
    const { kube, cluster } = ctx();
    const vm = await kube.podVm(p);
    const st = await cluster.daemon!.runtime('PodSandboxStatus', { pod_sandbox_id: vm.sandboxId, verbose: true });
    const info = JSON.parse(st.info.info).vm as { vcpus: number; memoryMiB: number; ceiling: { vcpus: number; memoryMiB: number } };
    // cgroup v1 here: QEMU's own cgroup (podvisor's) sits in kubelet's pod cgroup
    const cgroupOf = (controller: string): string => {
      const line = fs.readFileSync(`/proc/${vm.pid}/cgroup`, 'utf8').split('\n').find((l) => l.split(':')[1]?.split(',').includes(controller));
      if (!line) throw new Error(`QEMU ${vm.pid} is in no ${controller} cgroup`);
      return path.join('/sys/fs/cgroup', controller, line.split(':')[2]);
    };
    const cpu = cgroupOf('cpu');
    const memory = cgroupOf('memory');
    const read = (dir: string, f: string) => Number(fs.readFileSync(path.join(path.dirname(dir), f), 'utf8').trim());
    return {
      pid: vm.pid,
      smp: /-smp (\S+)/.exec(vm.cmdline)?.[1],
      size: { vcpus: info.vcpus, memoryMiB: info.memoryMiB },
      ceiling: info.ceiling,
      podCgroup: path.basename(path.dirname(cpu)),
      quota: read(cpu, 'cpu.cfs_quota_us'),
      shares: read(cpu, 'cpu.shares'),
      memoryLimit: read(memory, 'memory.limit_in_bytes'),
    };
  };

  const patch = (size: Size) =>
    ctx().kube.core.patchNamespacedPodResize({ name: POD, namespace: NS, body: { spec: { containers: [{ name: 'main', resources: size }] } } }, strategicMerge);

  const resizeConditions = (p: k8s.V1Pod) => (p.status?.conditions ?? []).filter((c) => c.type === 'PodResizePending' || c.type === 'PodResizeInProgress');

  /** Waits until kubelet reports the container at `size` (from podvisor's ContainerStatus) with no resize pending or in progress. */
  const resized = (size: Size) =>
    n().wait(POD, `resized to ${JSON.stringify(size)}`, (p) => {
      const c = containerStatus(p, 'main');
      const conds = resizeConditions(p);
      if (conds.length) throw new Error(`resize conditions ${JSON.stringify(conds)}`);
      if (!isDeepStrictEqual({ requests: c.resources?.requests, limits: c.resources?.limits }, size)) throw new Error(`resources ${JSON.stringify(c.resources)}`);
    });

  let before: Awaited<ReturnType<typeof onHost>>;
  let containerId: string | undefined;
  // the tests resize one pod in turn: once it never ran, each of them fails at once rather than
  // waiting out its own 180 s for state that cannot come
  const ran = () => {
    if (!containerId) throw new Error(`pod ${POD} never ran (see the first test)`);
  };

  it('a pod with limits of 2 CPUs and 512Mi runs in a VM of that size', async () => {
    const p = await n().running(POD);
    containerId = containerStatus(p, 'main').containerID;
    before = await onHost(p);
    expect(before).toMatchObject({ smp: expect.stringMatching(/^2\b/), size: { vcpus: 2, memoryMiB: 512 }, ceiling: { vcpus: 2, memoryMiB: 512 }, podCgroup: `pod${p.metadata!.uid}`, quota: 200_000, shares: 204, memoryLimit: 512 * Mi });
    const s = await inside();
    expect(s).toMatchObject({ nproc: 2, online: '0-1', cpuMax: '200000 100000', memoryMax: 512 * Mi });
    expect(s.memTotalMiB).toBeGreaterThan(400);
  });

  it('shrinks in place to 1 CPU and 256Mi: kubelet reports it, the running VM and its host cgroup follow, no restart', async () => {
    ran();
    await patch(SMALL);
    const p = await resized(SMALL);
    const c = containerStatus(p, 'main');
    expect({ id: c.containerID, restarts: c.restartCount, allocated: c.allocatedResources }).toEqual({ id: containerId, restarts: 0, allocated: SMALL.requests });
    const s = await inside();
    expect(s).toMatchObject({ nproc: 1, online: '0', cpuMax: '100000 100000', memoryMax: 256 * Mi });
    expect(s.memTotalMiB).toBeLessThanOrEqual(256);
    // the same QEMU, now running the VM at the new size, in a pod cgroup kubelet shrank
    expect(await onHost(p)).toEqual({ ...before, size: { vcpus: 1, memoryMiB: 256 }, quota: 100_000, shares: 102, memoryLimit: 256 * Mi });
  });

  it('grows back in place up to its ceiling', async () => {
    ran();
    await patch(BIG);
    const p = await resized(BIG);
    expect(containerStatus(p, 'main')).toMatchObject({ containerID: containerId, restartCount: 0, allocatedResources: BIG.requests });
    const s = await inside();
    expect(s).toMatchObject({ nproc: 2, online: '0-1', cpuMax: '200000 100000', memoryMax: 512 * Mi });
    expect(s.memTotalMiB).toBeGreaterThan(400);
    expect(await onHost(p)).toEqual(before);
  });

  it("beyond the VM's ceiling: kubelet shows podvisor's refusal naming the ceiling, nothing changed; undoing the request clears it", async () => {
    ran();
    await patch(BEYOND);
    const p = await n().wait(POD, 'PodResizeInProgress with an error', (x) => {
      const cond = resizeConditions(x).find((c) => c.type === 'PodResizeInProgress');
      if (cond?.reason !== 'Error') throw new Error(`resize conditions ${JSON.stringify(resizeConditions(x))}`);
    });
    const cond = resizeConditions(p).find((c) => c.type === 'PodResizeInProgress')!;
    expect(cond.message).toMatch(/FailedPrecondition.*3 vCPUs and 512 MiB are beyond the pod VM's ceiling of 2 vCPUs and 512 MiB/);
    expect(await n().events(POD)).toContainEqual(expect.stringMatching(/^ResizeError: .*beyond the pod VM's ceiling of 2 vCPUs and 512 MiB/));
    // never half-applied: kubelet's view, the VM, the container's cgroup and the host's as before
    expect(containerStatus(p, 'main')).toMatchObject({ containerID: containerId, restartCount: 0, resources: BIG });
    expect(await inside()).toMatchObject({ nproc: 2, online: '0-1', cpuMax: '200000 100000', memoryMax: 512 * Mi });
    expect(await onHost(p)).toEqual(before);

    await patch(BIG);
    expect(containerStatus(await resized(BIG), 'main')).toMatchObject({ containerID: containerId, restartCount: 0 });
  });
}
