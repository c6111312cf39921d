// What a real kubelet reads back from a pod VM where containerd+runc would give it the node's
// answer (issue 22): the termination message and `kubectl logs` of an unterminated last line are
// exactly what the program wrote (CRI log tag P); a memory-backed emptyDir with a sizeLimit is a
// tmpfs of the pod's own memory of exactly that size, shared by two containers, and kubelet's
// tmpfs on the host stays empty (README: what kubelet sees); a privileged container finds the
// modules it asks for (dummy, veth, bridge) and an unprivileged pod gets none loaded.
import fs from 'node:fs';
import path from 'node:path';
import type * as k8s from '@kubernetes/client-node';
import { IMAGES } from '../support/cluster';
import { podOf, shPod } from '../support/namespace';
import type { Ctx, SpecGroup } from './context';

const NS = 'e2e-kubelet-view';
const sleeper = (name: string, extra: Partial<k8s.V1Container> = {}): k8s.V1Container => ({ name, image: IMAGES.busybox, command: ['sleep', '7200'], ...extra });

export const kubeletView: SpecGroup = {
  title: "kubelet's view of a pod VM",
  namespace: NS,
  setup: (ns) => ns.createAll([
    shPod('partial', 'printf DONE; false', { terminationMessagePolicy: 'FallbackToLogsOnError' }, { restartPolicy: 'Never' }),
    podOf('memvol', ['writer', 'reader'].map((c) => sleeper(c, { volumeMounts: [{ name: 'cache', mountPath: '/cache' }] })), {
      volumes: [{ name: 'cache', emptyDir: { medium: 'Memory', sizeLimit: '10Mi' } }],
    }),
    podOf('privileged', [sleeper('main', { securityContext: { privileged: true } })]),
    podOf('plain', [sleeper('main')]),
  ]),
  specs,
};

function specs(ctx: Ctx): void {
  const exec = (pod: string, cmd: string, container?: string) => ctx().kube.exec(NS, pod, ['sh', '-c', cmd], { container });
  const modules = async (pod: string) => (await ctx().kube.run(NS, pod, ['cat', '/proc/modules'])).split('\n').filter(Boolean).map((l) => l.split(' ')[0]).sort();

  it('FallbackToLogsOnError: the termination message of `printf DONE; false` is DONE, byte for byte, and so is `kubectl logs`', async () => {
    const { kube } = ctx();
    const p = await kube.waitPod(NS, 'partial', 'terminated', (x) => {
      if (!x.status?.containerStatuses?.[0]?.state?.terminated) throw new Error(`not terminated: ${JSON.stringify(x.status?.containerStatuses?.[0]?.state)}`);
    });
    const t = p.status!.containerStatuses![0].state!.terminated!;
    expect({ exitCode: t.exitCode, reason: t.reason, message: t.message }).toEqual({ exitCode: 1, reason: 'Error', message: 'DONE' });
    expect(await kube.core.readNamespacedPodLog({ name: 'partial', namespace: NS })).toBe('DONE');
  });

  it('a memory emptyDir with sizeLimit 10Mi: exactly 10240 KiB inside, a tmpfs of the guest in the pod\'s memory, shared by two containers; kubelet\'s tmpfs stays empty', async () => {
    const { kube, cluster } = ctx();
    const p = await kube.waitRunning(NS, 'memvol');
    const df = await exec('memvol', 'df -k /cache | tail -1', 'writer');
    expect(df.stdout.trim().split(/\s+/)[1]).toBe('10240');
    expect((await exec('memvol', 'grep " /cache " /proc/mounts', 'writer')).stdout).toMatch(/^\S+ \/cache tmpfs /);

    // 8 MiB written by one container are guest shared memory (the VM's pages), charged to the
    // container that wrote them (what CRI stats give kubelet), and read by the other container
    const shmem = async () => Number(/^Shmem:\s+(\d+) kB/m.exec((await exec('memvol', 'cat /proc/meminfo', 'writer')).stdout)![1]);
    const vm = await kube.podVm(p);
    const d = cluster.daemon!;
    const { containers } = await d.runtime('ListContainers', { filter: { pod_sandbox_id: vm.sandboxId } });
    const writer = containers.find((c: any) => c.metadata.name === 'writer').id;
    const workingSet = async () => Number((await d.runtime('ContainerStats', { container_id: writer })).stats.memory.working_set_bytes.value);
    const [shBefore, wsBefore] = [await shmem(), await workingSet()];
    expect(await exec('memvol', 'dd if=/dev/zero of=/cache/blob bs=1M count=8 2>/dev/null && echo ok', 'writer')).toMatchObject({ code: 0, stdout: 'ok\n' });
    expect((await shmem()) - shBefore).toBeGreaterThanOrEqual(8 * 1024 - 256);
    expect((await workingSet()) - wsBefore).toBeGreaterThanOrEqual((8 << 20) - (1 << 20));
    expect((await exec('memvol', 'wc -c < /cache/blob', 'reader')).stdout.trim()).toBe(String(8 << 20));
    expect((await exec('memvol', 'echo from-reader > /cache/note', 'reader')).code).toBe(0);
    expect((await exec('memvol', 'cat /cache/note', 'writer')).stdout).toBe('from-reader\n');

    // full at the limit, as kubelet's own tmpfs would be on a node
    const full = await exec('memvol', 'dd if=/dev/zero of=/cache/more bs=1M count=4', 'writer');
    expect(full.code).not.toBe(0);
    expect(full.stderr).toMatch(/No space left on device/);

    // kubelet's side: its tmpfs for the volume is there on the host, of that size, and empty
    const hostDir = path.join(cluster.kubeletDir, 'pods', p.metadata!.uid!, 'volumes', 'kubernetes.io~empty-dir', 'cache');
    const st = fs.statfsSync(hostDir);
    expect(st.blocks * st.bsize).toBe(10 << 20);
    expect(fs.readdirSync(hostDir)).toEqual([]);
  });

  it('a privileged container creates a dummy, a veth pair and a bridge; an unprivileged pod gets nothing loaded', async () => {
    const { kube } = ctx();
    await Promise.all([kube.waitRunning(NS, 'privileged'), kube.waitRunning(NS, 'plain')]);
    const before = await modules('plain');
    expect(before).not.toContain('dummy');
    // the unprivileged pod: refused without a user namespace, and a user namespace of its own
    // (CAP_NET_ADMIN over a new netns) makes the kernel ask, but nothing is loaded for it
    const direct = await exec('plain', 'ip link add dummy1 type dummy');
    expect(direct.code).not.toBe(0);
    const userns = await exec('plain', 'unshare -r -n ip link add dummy1 type dummy');
    expect(userns.code).not.toBe(0);
    expect(userns.stderr).toMatch(/Operation not supported/);
    expect(await modules('plain')).toEqual(before);

    const made = await exec('privileged', [
      'ip link add dummy1 type dummy',
      'ip link add v0 type veth peer name v1',
      'ip link add br0 type bridge',
      'ip link set v0 master br0',
      'ip -o link',
    ].join(' && '));
    expect({ code: made.code, stderr: made.stderr }).toEqual({ code: 0, stderr: '' });
    expect(made.stdout).toMatch(/: dummy1: /);
    expect(made.stdout).toMatch(/: v0@\S+: .* master br0/);
    expect(made.stdout).toMatch(/: br0: /);
    const after = await modules('privileged');
    for (const m of ['dummy', 'veth', 'bridge']) expect(after).toContain(m);
  });
}
