// A pod scheduled through the API server runs in a VM of its own: Running and Ready, an address
// from the node's CNI bridge, one QEMU process behind it, its container process inside the guest
// (not a host process), no pause container anywhere, and nothing left once it is deleted.
import type * as k8s from '@kubernetes/client-node';
import { IMAGES, POD_SUBNET } from '../support/cluster';
import { hostProcesses } from '../support/kube';
import { until } from '../support/procs';
import type { Ctx, SpecGroup } from './context';

const ns = 'e2e-pods';

export const pods: SpecGroup = { title: 'a pod', namespace: ns, specs };

function specs(ctx: Ctx): void {
  it('runs a pod in a VM: Running, an address on the pod network, one QEMU, no container process or pause on the host', async () => {
    const { kube } = ctx();
    // a marker unlikely to be on the host's process list in any other form
    const marker = `sleep 3601`;
    const pod: k8s.V1Pod = {
      metadata: { name: 'first' },
      spec: { containers: [{ name: 'main', image: IMAGES.busybox, command: ['sh', '-c', `echo started; exec ${marker}`] }], terminationGracePeriodSeconds: 1 },
    };
    await kube.createPod(ns, pod);
    const running = await kube.waitRunning(ns, 'first');
    expect(running.spec!.nodeName).toBe('podvisor-node');
    expect(running.status!.podIP).toMatch(new RegExp(`^${POD_SUBNET.replace(/\./g, '\\.')}\\.\\d+$`));
    expect(running.status!.containerStatuses![0]).toMatchObject({ name: 'main', ready: true, restartCount: 0, started: true });
    expect(running.status!.containerStatuses![0].containerID).toMatch(/^podvisor:\/\/[0-9a-f]+$/);

    const vm = await kube.podVm(running);
    expect(vm.cmdline).toMatch(/qemu-system-x86_64 .*-M microvm/);
    expect(hostProcesses(new RegExp(marker))).toEqual([]);
    expect(hostProcesses(/(^|\/)pause( |$)/)).toEqual([]);

    await kube.core.deleteNamespacedPod({ name: 'first', namespace: ns });
    await until('pod gone', async () => {
      const pods = await kube.core.listNamespacedPod({ namespace: ns });
      if (pods.items.length) throw new Error(`${pods.items.length} pods`);
    }, 120_000, 1000);
    // the VM went with the pod
    await until('QEMU gone', () => {
      try {
        process.kill(vm.pid, 0);
      } catch {
        return;
      }
      throw new Error(`pid ${vm.pid} alive`);
    }, 60_000, 500);
  });
}
