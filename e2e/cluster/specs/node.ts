// What kubelet reports about the node and its pods when podvisor is the runtime: pod status,
// node status (capacity, allocatable, images, conditions, runtime version), the summary stats
// API through the API server's node proxy with real figures; and a RuntimeClass with overhead:
// admitted with the overhead, the pod cgroup kubelet makes includes it, and the pod's VM runs
// inside that cgroup.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { IMAGES, NODE_IP, NODE_NAME, POD_SUBNET } from '../support/cluster';
import { until } from '../support/procs';
import type { Ctx, SpecGroup } from './context';

const ns = 'e2e-node';
const RUNTIME_CLASS = 'podvisor-e2e';
const Mi = 1024 * 1024;

export const node: SpecGroup = {
  title: 'node and pod status, stats, RuntimeClass',
  namespace: ns,
  async setup({ kube }) {
    await kube.nodeApi.createRuntimeClass({
      body: {
        metadata: { name: RUNTIME_CLASS },
        handler: 'podvisor',
        overhead: { podFixed: { cpu: '50m', memory: '64Mi' } },
        scheduling: { nodeSelector: { 'podvisor.io/enabled': 'true' } },
      },
    });
    await Promise.all([
      kube.createPod(ns, {
        metadata: { name: 'busy' },
        spec: {
          terminationGracePeriodSeconds: 1,
          // burns some CPU and holds some memory, so the figures are not zero
          containers: [{ name: 'main', image: IMAGES.busybox, command: ['sh', '-c', 'head -c 20000000 /dev/zero > /dev/shm/fill; while true; do i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; sleep 1; done'] }],
        },
      }),
      kube.createPod(ns, {
        metadata: { name: 'with-overhead' },
        spec: {
          runtimeClassName: RUNTIME_CLASS,
          terminationGracePeriodSeconds: 1,
          containers: [{ name: 'main', image: IMAGES.busybox, command: ['sleep', '7200'], resources: { limits: { cpu: '500m', memory: '128Mi' } } }],
        },
      }),
    ]);
  },
  specs,
};

function specs(ctx: Ctx): void {
  afterAll(() => ctx().kube.nodeApi.deleteRuntimeClass({ name: RUNTIME_CLASS }));

  it('pod status: addresses, QoS, times and the container image kubelet got from podvisor', async () => {
    const { kube } = ctx();
    const p = await kube.waitRunning(ns, 'busy');
    const s = p.status!;
    expect(s.hostIP).toBe(NODE_IP);
    expect(s.hostIPs).toEqual([{ ip: NODE_IP }]);
    expect(s.podIP).toMatch(new RegExp(`^${POD_SUBNET.replace(/\./g, '\\.')}\\.`));
    expect(s.podIPs).toEqual([{ ip: s.podIP }]);
    expect(s.qosClass).toBe('BestEffort');
    expect(Date.parse(String(s.startTime))).toBeLessThanOrEqual(Date.parse(String(s.containerStatuses![0].state!.running!.startedAt)));
    expect(s.containerStatuses![0]).toMatchObject({ name: 'main', image: IMAGES.busybox, ready: true, started: true, restartCount: 0 });
    expect(s.containerStatuses![0].imageID).toMatch(/^registry\.k8s\.io\/e2e-test-images\/busybox@sha256:[0-9a-f]{64}$/);
    expect(s.conditions!.map((c) => `${c.type}=${c.status}`).sort()).toEqual(['ContainersReady=True', 'Initialized=True', 'PodReadyToStartContainers=True', 'PodScheduled=True', 'Ready=True']);
  });

  it('node status: capacity and allocatable of this machine, conditions, images, runtime', async () => {
    const { kube } = ctx();
    await kube.waitRunning(ns, 'busy');
    const n = await until('images reported', async () => {
      const x = await kube.core.readNode({ name: NODE_NAME });
      const names = (x.status?.images ?? []).flatMap((i) => i.names ?? []);
      if (!names.includes(IMAGES.busybox)) throw new Error(`images ${JSON.stringify(names)}`);
      return x;
    }, 60_000, 2000);
    const s = n.status!;
    expect(s.capacity!.cpu).toBe(String(os.cpus().length));
    const memKi = Number(/^MemTotal:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))![1]);
    expect(s.capacity!.memory).toBe(`${memKi}Ki`);
    expect(s.capacity!.pods).toBe('40');
    // allocatable: capacity less the hard eviction threshold (100Mi)
    expect(s.allocatable!.memory).toBe(`${memKi - 100 * 1024}Ki`);
    expect(s.allocatable!.cpu).toBe(String(os.cpus().length));
    expect(Number(s.capacity!['ephemeral-storage']!.replace(/Ki$/, ''))).toBeGreaterThan(0);
    const cond = Object.fromEntries(s.conditions!.map((c) => [c.type, c.status]));
    expect(cond).toEqual({ Ready: 'True', MemoryPressure: 'False', DiskPressure: 'False', PIDPressure: 'False' });
    expect(s.addresses).toEqual(expect.arrayContaining([{ type: 'InternalIP', address: NODE_IP }, { type: 'Hostname', address: NODE_NAME }]));
    expect(s.nodeInfo!.containerRuntimeVersion).toMatch(/^podvisor:\/\/\d+\.\d+\.\d+/);
    expect(s.nodeInfo!.kubeletVersion).toMatch(/^v1\.37\./);
    const img = s.images!.find((i) => i.names!.includes(IMAGES.busybox))!;
    expect(img.sizeBytes).toBeGreaterThan(500_000);
    expect(img.names).toEqual(expect.arrayContaining([expect.stringMatching(/^registry\.k8s\.io\/e2e-test-images\/busybox@sha256:/)]));
  });

  it('summary stats through the node proxy: node, image filesystem and the pod with real figures', async () => {
    const { kube } = ctx();
    const p = await kube.waitRunning(ns, 'busy');
    const summary = await until('pod in the summary with CPU and memory', async () => {
      const raw = await kube.core.connectGetNodeProxyWithPath({ name: NODE_NAME, path: 'stats/summary' });
      const sum = typeof raw === 'string' ? JSON.parse(raw) : raw;
      const pod = sum.pods?.find((x: any) => x.podRef.name === 'busy' && x.podRef.namespace === ns);
      if (!pod?.cpu?.usageNanoCores || !pod?.memory?.workingSetBytes || !pod.containers?.[0]?.cpu?.usageCoreNanoSeconds) throw new Error(JSON.stringify(pod ?? sum.pods?.map((x: any) => x.podRef)));
      // the container's 20 MB write may still be under way (TCG, a loaded node), and kubelet's
      // figures are up to a housekeeping period old: wait for them to show it
      if (!(pod.containers[0].memory?.workingSetBytes > 15 * Mi)) throw new Error(`working set ${pod.containers[0].memory?.workingSetBytes} bytes, the 20 MB write not seen yet`);
      // the pod's figure is kubelet's own (cAdvisor, the pod cgroup holding the VM, read every
      // housekeeping period), the container's is podvisor's (live, from the guest): the pod's may
      // lag the write by a period; it must catch up, a pod below its own container never can
      if (!(pod.memory.workingSetBytes >= pod.containers[0].memory.workingSetBytes)) throw new Error(`pod working set ${pod.memory.workingSetBytes} < its container's ${pod.containers[0].memory.workingSetBytes} bytes`);
      return sum;
    }, 180_000, 5000);
    expect(summary.node.nodeName).toBe(NODE_NAME);
    expect(summary.node.cpu.usageCoreNanoSeconds).toBeGreaterThan(0);
    expect(summary.node.memory.workingSetBytes).toBeGreaterThan(100 * Mi);
    expect(summary.node.runtime.imageFs.capacityBytes).toBeGreaterThan(0);
    expect(summary.node.runtime.imageFs.usedBytes).toBeGreaterThan(0);
    const pod = summary.pods.find((x: any) => x.podRef.name === 'busy');
    expect(pod.podRef.uid).toBe(p.metadata!.uid);
    expect(pod.containers.map((c: any) => c.name)).toEqual(['main']);
    const c = pod.containers[0];
    expect(c.cpu.usageCoreNanoSeconds).toBeGreaterThan(0);
    // the 20 MB the container wrote to /dev/shm is in its memory
    expect(c.memory.workingSetBytes).toBeGreaterThan(15 * Mi);
    expect(c.memory.workingSetBytes).toBeLessThan(256 * Mi);
    expect(pod.memory.workingSetBytes).toBeGreaterThanOrEqual(c.memory.workingSetBytes);
    expect(Date.parse(c.startTime)).toBeGreaterThan(0);
  });

  it('a RuntimeClass with overhead admits the pod; kubelet\'s pod cgroup includes the overhead; the VM runs in it', async () => {
    const { kube, cluster } = ctx();
    const p = await kube.waitRunning(ns, 'with-overhead');
    expect(p.spec!.overhead).toEqual({ cpu: '50m', memory: '64Mi' });
    expect(p.status!.qosClass).toBe('Guaranteed');
    const vm = await kube.podVm(p);
    const st = await cluster.daemon!.runtime('PodSandboxStatus', { pod_sandbox_id: vm.sandboxId });
    expect(st.status.runtime_handler).toBe('podvisor');
    // Guaranteed pods sit right under kubepods
    const podCg = path.join(cluster.cgroupRoot, 'kubepods', `pod${p.metadata!.uid}`);
    const read = (ctrl: string, file: string) => Number(fs.readFileSync(path.join('/sys/fs/cgroup', ctrl, podCg, file), 'utf8').trim());
    expect(read('memory', 'memory.limit_in_bytes')).toBe((128 + 64) * Mi);
    expect(read('cpu', 'cpu.cfs_quota_us') / read('cpu', 'cpu.cfs_period_us')).toBeCloseTo(0.55, 3);
    // the QEMU process of the pod is inside that cgroup in every hierarchy kubelet limits
    const cgroups = fs.readFileSync(`/proc/${vm.pid}/cgroup`, 'utf8');
    for (const ctrl of ['memory', 'cpu', 'pids']) {
      const line = cgroups.split('\n').find((l) => l.split(':')[1] === ctrl);
      expect(line?.split(':')[2]).toMatch(new RegExp(`^${podCg.replace(/[.]/g, '\\.')}/`));
    }
  });
}
