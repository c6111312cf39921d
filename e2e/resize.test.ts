// In-place resize of a running pod (UpdatePodSandboxResources, UpdateContainerResources): the
// real daemon and a real pod VM booted at its ceiling ([vm] resize_vcpus = 2,
// resize_memory_mib = 512) and running at 1 vCPU and 256 MiB; what the container sees inside
// (nproc, MemTotal, an allocation the guest can or cannot back) follows each resize, and a
// resize beyond the ceiling is refused with the pod left as it was.
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { pushBusybox } from '../test/support/images';
import { Registry, startRegistry } from '../test/support/registry';
import { podConfig, TestDaemon } from './support/daemon';

jest.setTimeout(300_000);

let registry: Registry;
let d: TestDaemon;
let busybox: string;
const MiB = 1024 * 1024;

beforeAll(async () => {
  registry = await startRegistry();
  await pushBusybox(registry, 'e2e/busybox', 'latest');
  busybox = `${registry.host}/e2e/busybox:latest`;
  d = await TestDaemon.start({ registries: { [registry.host]: `http://${registry.host}` }, vmToml: 'resize_vcpus = 2\nresize_memory_mib = 512\n' });
  await d.image('PullImage', { image: { image: busybox } });
});

afterAll(async () => {
  await d?.destroy();
  await registry?.stop();
});

async function run(id: string, cmd: string): Promise<{ exit: number; out: string; err: string }> {
  const r = await d.runtime('ExecSync', { container_id: id, cmd: ['/bin/sh', '-c', cmd], timeout: 120 });
  return { exit: r.exit_code, out: Buffer.from(r.stdout).toString().trim(), err: Buffer.from(r.stderr).toString().trim() };
}

/** What the container sees: online CPUs, the guest's RAM, and whether 300 MiB can be had. */
async function seen(id: string): Promise<{ nproc: number; memMiB: number; alloc300: boolean }> {
  const nproc = Number((await run(id, 'nproc')).out);
  const memMiB = Math.round(Number(/MemTotal:\s+(\d+) kB/.exec((await run(id, 'cat /proc/meminfo')).out)![1]) / 1024);
  // dd's block buffer is one allocation: the guest's overcommit check refuses it when RAM is short
  const alloc300 = (await run(id, 'dd if=/dev/zero of=/dev/null bs=300M count=1 2>&1')).exit === 0;
  return { nproc, memMiB, alloc300 };
}

async function vmInfo(pod: string): Promise<{ vcpus: number; memoryMiB: number; ceiling: { vcpus: number; memoryMiB: number } }> {
  const st = await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod, verbose: true });
  return JSON.parse(st.info.info).vm;
}

const resources = (cpus: number, mib: number) => ({ cpu_period: 100_000, cpu_quota: cpus * 100_000, memory_limit_in_bytes: mib * MiB });

describe('in-place resize of a pod VM', () => {
  let pod: string;
  let id: string;

  beforeAll(async () => {
    const cfg = podConfig('resize', path.join(d.logs, 'resize'));
    pod = (await d.runtime('RunPodSandbox', { config: cfg })).pod_sandbox_id;
    id = (await d.runtime('CreateContainer', {
      pod_sandbox_id: pod,
      sandbox_config: cfg,
      config: { metadata: { name: 'c' }, image: { image: busybox }, command: ['sleep', '3600'] },
    })).container_id;
    await d.runtime('StartContainer', { container_id: id });
  });

  afterAll(async () => {
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod }).catch(() => undefined);
  });

  it('runs at its size below its ceiling', async () => {
    expect(await vmInfo(pod)).toMatchObject({ vcpus: 1, memoryMiB: 256, ceiling: { vcpus: 2, memoryMiB: 512 } });
    const s = await seen(id);
    expect(s).toMatchObject({ nproc: 1, alloc300: false });
    expect(s.memMiB).toBeLessThanOrEqual(256);
  });

  it('UpdatePodSandboxResources grows it in CPU and memory, and shrinks it back', async () => {
    await d.runtime('UpdatePodSandboxResources', { pod_sandbox_id: pod, resources: resources(2, 512) });
    expect(await vmInfo(pod)).toMatchObject({ vcpus: 2, memoryMiB: 512 });
    const up = await seen(id);
    expect(up).toMatchObject({ nproc: 2, alloc300: true });
    expect(up.memMiB).toBeGreaterThan(400);

    await d.runtime('UpdatePodSandboxResources', { pod_sandbox_id: pod, resources: resources(1, 256) });
    expect(await vmInfo(pod)).toMatchObject({ vcpus: 1, memoryMiB: 256 });
    const down = await seen(id);
    expect(down).toMatchObject({ nproc: 1, alloc300: false });
    expect(down.memMiB).toBeLessThanOrEqual(256);
  });

  it('beyond the ceiling: FAILED_PRECONDITION naming it, the pod untouched', async () => {
    await expect(d.runtime('UpdatePodSandboxResources', { pod_sandbox_id: pod, resources: resources(3, 256) }))
      .rejects.toMatchObject({ code: status.FAILED_PRECONDITION, details: expect.stringMatching(/ceiling of 2 vCPUs and 512 MiB/) });
    await expect(d.runtime('UpdateContainerResources', { container_id: id, linux: resources(1, 1024) }))
      .rejects.toMatchObject({ code: status.FAILED_PRECONDITION });
    expect(await vmInfo(pod)).toMatchObject({ vcpus: 1, memoryMiB: 256 });
    expect((await seen(id)).nproc).toBe(1);
    const st = await d.runtime('ContainerStatus', { container_id: id });
    expect(st.status.resources?.linux?.memory_limit_in_bytes ?? '0').toBe('0');
  });

  it('UpdateContainerResources beyond what the pod runs at grows the pod first', async () => {
    await d.runtime('UpdateContainerResources', { container_id: id, linux: resources(2, 384) });
    expect(await vmInfo(pod)).toMatchObject({ vcpus: 2, memoryMiB: 384 });
    expect((await seen(id)).nproc).toBe(2);
    // the container's own cgroup has the limit, and ContainerStatus reports it
    expect((await run(id, 'cat /sys/fs/cgroup/memory.max')).out).toBe(String(384 * MiB));
    const st = await d.runtime('ContainerStatus', { container_id: id });
    expect(st.status.resources.linux.memory_limit_in_bytes).toBe(String(384 * MiB));
  });
});
