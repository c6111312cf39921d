// The host side of pods under a real kubelet: a hostNetwork DaemonSet runs its pod on the node
// (a host pod: its process on the host, serving in the host's network, no VM); deleting pods
// leaves nothing behind (QEMU, netns, sandboxes, kubelet's pod dirs and mounts, pod cgroups);
// and restarting podvisor under a running kubelet keeps every pod Running, VM pods and the host
// pod alike, its VM (or process) and container the same, with no restart counted.
// Runs last of the groups: the restart briefly takes the runtime away from kubelet.
import fs from 'node:fs';
import path from 'node:path';
import type * as k8s from '@kubernetes/client-node';
import { freePort } from '../../../test/support/registry';
import { IMAGES, NODE_IP } from '../support/cluster';
import { cgroupDirs, mountsUnder } from '../support/host';
import { hostProcesses } from '../support/kube';
import { type Namespace, podOf, shContainer } from '../support/namespace';
import { alive, until } from '../support/procs';
import type { Ctx, SpecGroup } from './context';

const NS = 'e2e-host';
const DS = 'node-agent';
let dsPort = 0;
/** busybox httpd serving /www (a healthz file) on `port` */
const httpd = (port: number | string, listen = '') => `mkdir -p /www && echo ok > /www/healthz && hostname > /www/name && exec httpd -f -p ${listen}${port} -h /www`;

export const host: SpecGroup = {
  title: 'host side',
  namespace: NS,
  async setup(ns) {
    const { kube } = ns;
    dsPort = await freePort();
    await kube.core.createNamespacedSecret({ namespace: NS, body: { metadata: { name: 'sec' }, stringData: { k: 'v' } } });
    const vols: Partial<k8s.V1PodSpec> = { volumes: [{ name: 'sec', secret: { secretName: 'sec' } }, { name: 'mem', emptyDir: { medium: 'Memory' } }] };
    const mounts = { volumeMounts: [{ name: 'sec', mountPath: '/sec' }, { name: 'mem', mountPath: '/mem' }] };
    await Promise.all([
      kube.apps.createNamespacedDaemonSet({ namespace: NS, body: daemonSet(DS, dsPort) }),
      // probes of both kinds keep running across the restart; liveness waits for the server
      ns.create(podOf('stays-1', [shContainer('main', httpd(8080), {
        startupProbe: { tcpSocket: { port: 8080 }, periodSeconds: 2, timeoutSeconds: 10, failureThreshold: 300 },
        readinessProbe: { httpGet: { path: '/healthz', port: 8080 }, periodSeconds: 2, timeoutSeconds: 10 },
        livenessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 2, timeoutSeconds: 10, failureThreshold: 3 },
      })])),
      ns.create(podOf('stays-2', [shContainer('main', 'exec sleep 7200', { readinessProbe: { exec: { command: ['true'] }, periodSeconds: 3, timeoutSeconds: 10 } })])),
      ns.create(podOf('goes-1', [shContainer('main', 'exec sleep 7200', mounts)], vols)),
      ns.create(podOf('goes-2', [shContainer('main', 'exec sleep 7200', mounts)], vols)),
    ]);
  },
  specs,
};

function specs(ctx: Ctx, ns: () => Namespace): void {

  /** The running pod of the DaemonSet */
  async function dsPod(): Promise<k8s.V1Pod> {
    const { kube } = ctx();
    return until(`DaemonSet ${DS} ready on the node`, async () => {
      const d = await kube.apps.readNamespacedDaemonSet({ name: DS, namespace: NS });
      const s = d.status!;
      if (s.desiredNumberScheduled !== 1 || s.numberReady !== 1 || s.numberAvailable !== 1) throw new Error(JSON.stringify(s));
      const { items } = await kube.core.listNamespacedPod({ namespace: NS, labelSelector: `app=${DS}` });
      if (items.length !== 1) throw new Error(`${items.length} pods`);
      return items[0];
    }, 300_000, 1000);
  }

  async function sandboxInfo(p: k8s.V1Pod): Promise<{ id: string; info: any }> {
    const d = ctx().cluster.daemon!;
    const { items } = await d.runtime('ListPodSandbox', { filter: { state: { state: 'SANDBOX_READY' }, label_selector: { 'io.kubernetes.pod.uid': p.metadata!.uid! } } });
    if (items.length !== 1) throw new Error(`${items.length} ready sandboxes for ${p.metadata!.name}`);
    const st = await d.runtime('PodSandboxStatus', { pod_sandbox_id: items[0].id, verbose: true });
    return { id: items[0].id, info: JSON.parse(st.info.info) };
  }

  it('a hostNetwork DaemonSet runs its pod on the node: a host pod, no VM, its process on the host, serving in the host network', async () => {
    const p = await dsPod();
    expect(p.spec!.nodeName).toBe('podvisor-node');
    expect(p.spec!.hostNetwork).toBe(true);
    // a host-network pod has the node's address
    expect(p.status!.podIP).toBe(NODE_IP);
    expect(p.status!.containerStatuses![0]).toMatchObject({ ready: true, restartCount: 0 });
    const { info } = await sandboxInfo(p);
    expect(info.backend).toBe('host');
    expect(info.vm ?? null).toBeNull();
    // the container's process is a host process (a VM pod's never is), in the host's network and
    // UTS namespaces (kubelet asks for the node's network; the node's UTS goes with it, as with
    // containerd)
    const procs = hostProcesses(new RegExp(`httpd -f -p ${dsPort} `));
    expect(procs).toHaveLength(1);
    const pid = Number(procs[0].split(' ')[0]);
    for (const n of ['net', 'uts']) expect(fs.readlinkSync(`/proc/${pid}/ns/${n}`)).toBe(fs.readlinkSync(`/proc/self/ns/${n}`));
    // it serves on the host's loopback: the host's network, not a pod network
    const r = await fetch(`http://127.0.0.1:${dsPort}/name`, { signal: AbortSignal.timeout(30_000) });
    expect(r.status).toBe(200);
    // so kubelet gives it no hostname of its own: its hostname is the machine's
    expect((await r.text()).trim()).toBe(fs.readFileSync('/proc/sys/kernel/hostname', 'utf8').trim());
  });

  it('deleting pods leaves nothing on the host: no VM, netns, sandbox, pod dir, mount or pod cgroup', async () => {
    const { kube, cluster } = ctx();
    const d = cluster.daemon!;
    const pods = await Promise.all(['goes-1', 'goes-2'].map((n) => ns().running(n)));
    const vms = await Promise.all(pods.map((p) => kube.podVm(p)));
    const uids = pods.map((p) => p.metadata!.uid!);
    const netnsBefore = fs.readdirSync('/run/netns');
    const podDirs = uids.map((u) => path.join(cluster.kubeletDir, 'pods', u));
    // while they run: kubelet's secret/memory volumes are tmpfs mounts on the host, pod cgroups exist
    for (const dir of podDirs) expect(mountsUnder(dir).length).toBeGreaterThanOrEqual(2);
    for (const u of uids) expect(cgroupDirs(path.join(cluster.cgroupRoot, 'kubepods', 'besteffort', `pod${u}`)).length).toBeGreaterThan(0);

    await ns().deleteAndWait(['goes-1', 'goes-2']);
    await until('nothing left on the host', async () => {
      for (const v of vms) expect(alive(v.pid)).toBe(false);
      const { items } = await d.runtime('ListPodSandbox', {});
      expect(items.filter((s: any) => uids.includes(s.metadata.uid))).toEqual([]);
      for (const dir of podDirs) {
        expect(mountsUnder(dir)).toEqual([]);
        expect(fs.existsSync(dir)).toBe(false);
      }
      for (const u of uids) expect(cgroupDirs(path.join(cluster.cgroupRoot, 'kubepods', 'besteffort', `pod${u}`))).toEqual([]);
      // their netns went; any new one is a warm spare's (pvsp-*)
      const gone = netnsBefore.filter((n) => !fs.readdirSync('/run/netns').includes(n));
      expect(gone.length).toBeGreaterThanOrEqual(2);
    }, 120_000, 2000);
  });

  it('restarting podvisor under a running kubelet keeps every pod Running (VM pods and the host pod) with the same VM or process and no restart', async () => {
    const { kube, cluster } = ctx();
    const d = cluster.daemon!;
    // the other groups' namespaces gone first: no pod is being torn down across the restart
    await kube.deletionsDone();
    const ds = await dsPod();
    const names = ['stays-1', 'stays-2', ds.metadata!.name!];
    const before = await Promise.all(names.map((n) => ns().running(n)));
    const vmsBefore = await Promise.all(before.slice(0, 2).map((p) => kube.podVm(p)));
    const [hostProc] = hostProcesses(new RegExp(`httpd -f -p ${dsPort} `));
    await d.stopProcess();
    // kubelet keeps calling a runtime that is not there for a few seconds
    await new Promise((r) => setTimeout(r, 5000));
    await d.launch();
    // two kubelet syncs (syncFrequency 10 s) and many probe periods later
    await new Promise((r) => setTimeout(r, 20_000));
    const after = await Promise.all(names.map((n) => ns().running(n, 120_000)));
    for (const [i, p] of after.entries()) {
      const st = p.status!.containerStatuses![0];
      const was = before[i].status!.containerStatuses![0];
      expect({ pod: names[i], restarts: st.restartCount }).toEqual({ pod: names[i], restarts: 0 });
      expect(st.containerID).toBe(was.containerID);
      expect(Date.parse(String(st.state!.running!.startedAt))).toBe(Date.parse(String(was.state!.running!.startedAt)));
    }
    for (const [i, p] of after.slice(0, 2).entries()) expect(await kube.podVm(p)).toEqual(vmsBefore[i]);
    // the host pod's container is the same host process
    expect(hostProcesses(new RegExp(`httpd -f -p ${dsPort} `))).toEqual([hostProc]);
    // kubelet made no new sandbox for them
    const { items } = await d.runtime('ListPodSandbox', { filter: { label_selector: { 'io.kubernetes.pod.namespace': NS } } });
    expect(items.map((s: any) => s.metadata.name).filter((n: string) => names.includes(n)).sort()).toEqual([...names].sort());
  });

  it('deleting the DaemonSet takes its host pod and process away', async () => {
    const { kube } = ctx();
    const p = await dsPod();
    await kube.apps.deleteNamespacedDaemonSet({ name: DS, namespace: NS });
    // the garbage collector deletes its pod
    await until('DaemonSet pod gone', async () => {
      const { items } = await kube.core.listNamespacedPod({ namespace: NS, labelSelector: `app=${DS}` });
      if (items.length) throw new Error(`${items.map((x) => x.metadata!.name).join(', ')} still there`);
    }, 120_000, 1000);
    await until('host process and sandbox gone', async () => {
      expect(hostProcesses(new RegExp(`httpd -f -p ${dsPort} `))).toEqual([]);
      const { items } = await ctx().cluster.daemon!.runtime('ListPodSandbox', { filter: { label_selector: { 'io.kubernetes.pod.uid': p.metadata!.uid! } } });
      expect(items).toEqual([]);
    }, 150_000, 2000);
  });
}

function daemonSet(name: string, port: number): k8s.V1DaemonSet {
  return {
    metadata: { name },
    spec: {
      selector: { matchLabels: { app: name } },
      template: {
        metadata: { labels: { app: name } },
        spec: {
          hostNetwork: true,
          terminationGracePeriodSeconds: 1,
          containers: [shContainer('agent', httpd(port), { readinessProbe: { httpGet: { path: '/healthz', port }, periodSeconds: 2, timeoutSeconds: 10 } })],
        },
      },
    },
  };
}
