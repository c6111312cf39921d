// Container lifecycle around the main process: postStart and preStop hooks (exec in the guest,
// httpGet from kubelet to the pod) run at the right moments, and init containers run to
// completion, in order, before the app container starts. A server pod (agnhost netexec) records
// the hooks' HTTP calls in its log, as upstream's lifecycle-hook e2e does.
import type * as k8s from '@kubernetes/client-node';
import { IMAGES } from '../support/cluster';
import { until } from '../support/procs';
import type { Ctx, SpecGroup } from './context';

const ns = 'e2e-lifecycle';

export const lifecycle: SpecGroup = {
  title: 'lifecycle hooks and init containers',
  namespace: ns,
  async setup({ kube }) {
    await Promise.all([
      kube.createPod(ns, {
        metadata: { name: 'hook-server' },
        spec: { terminationGracePeriodSeconds: 1, containers: [{ name: 'main', image: IMAGES.agnhost, args: ['netexec', '--http-port=8080'] }] },
      }),
      kube.createPod(ns, {
        metadata: { name: 'init' },
        spec: {
          terminationGracePeriodSeconds: 1,
          initContainers: [
            { name: 'first', image: IMAGES.busybox, command: ['sh', '-c', 'echo first >> /work/order; sleep 2'], volumeMounts: [{ name: 'work', mountPath: '/work' }] },
            { name: 'second', image: IMAGES.busybox, command: ['sh', '-c', 'echo second >> /work/order'], volumeMounts: [{ name: 'work', mountPath: '/work' }] },
          ],
          containers: [{ name: 'main', image: IMAGES.busybox, command: ['sh', '-c', 'echo main >> /work/order; cat /work/order; exec sleep 7200'], volumeMounts: [{ name: 'work', mountPath: '/work' }] }],
          volumes: [{ name: 'work', emptyDir: {} }],
        },
      }),
      kube.createPod(ns, {
        metadata: { name: 'init-fails' },
        spec: {
          restartPolicy: 'Never',
          terminationGracePeriodSeconds: 1,
          initContainers: [{ name: 'broken', image: IMAGES.busybox, command: ['sh', '-c', 'exit 4'] }],
          containers: [{ name: 'main', image: IMAGES.busybox, command: ['sh', '-c', 'echo never'] }],
        },
      }),
    ]);
  },
  specs,
};

function specs(ctx: Ctx): void {
  let server: k8s.V1Pod;
  const serverLog = () => ctx().kube.core.readNamespacedPodLog({ name: 'hook-server', namespace: ns });

  it('postStart exec runs in the container before it counts as started', async () => {
    const { kube } = ctx();
    await kube.createPod(ns, {
      metadata: { name: 'post-exec' },
      spec: {
        terminationGracePeriodSeconds: 1,
        containers: [{
          name: 'main', image: IMAGES.busybox,
          // the main process waits for the hook's file and says what it found
          command: ['sh', '-c', 'while [ ! -f /tmp/hook ]; do sleep 0.2; done; echo "hook said: $(cat /tmp/hook)"; exec sleep 7200'],
          lifecycle: { postStart: { exec: { command: ['sh', '-c', 'echo poststart-exec > /tmp/hook'] } } },
        }],
      },
    });
    await kube.waitRunning(ns, 'post-exec');
    await until('main saw the hook', async () => {
      expect(await kube.core.readNamespacedPodLog({ name: 'post-exec', namespace: ns })).toBe('hook said: poststart-exec\n');
    }, 60_000, 1000);
  });

  it('postStart and preStop httpGet reach a server; preStop exec runs before the container stops', async () => {
    const { kube } = ctx();
    server = await kube.waitRunning(ns, 'hook-server');
    const ip = server.status!.podIP!;
    await kube.createPod(ns, {
      metadata: { name: 'hooks-http' },
      spec: {
        terminationGracePeriodSeconds: 30,
        containers: [{
          name: 'main', image: IMAGES.busybox, command: ['sleep', '7200'],
          lifecycle: {
            postStart: { httpGet: { host: ip, port: 8080, path: '/echo?msg=poststart-http' } },
            // exec in the guest: wget from inside the pod to the server, then the container stops
            preStop: { exec: { command: ['wget', '-q', '-O', '-', `http://${ip}:8080/echo?msg=prestop-exec`] } },
          },
        }],
      },
    });
    await kube.waitRunning(ns, 'hooks-http');
    await until('postStart request in the server log', async () => expect(await serverLog()).toMatch(/GET \/echo\?msg=poststart-http/), 60_000, 1000);
    await kube.createPod(ns, {
      metadata: { name: 'hooks-http-stop' },
      spec: {
        terminationGracePeriodSeconds: 30,
        containers: [{ name: 'main', image: IMAGES.busybox, command: ['sleep', '7200'], lifecycle: { preStop: { httpGet: { host: ip, port: 8080, path: '/echo?msg=prestop-http' } } } }],
      },
    });
    await kube.waitRunning(ns, 'hooks-http-stop');
    await Promise.all(['hooks-http', 'hooks-http-stop'].map((name) => kube.core.deleteNamespacedPod({ name, namespace: ns })));
    await until('preStop requests in the server log', async () => {
      const log = await serverLog();
      expect(log).toMatch(/GET \/echo\?msg=prestop-exec/);
      expect(log).toMatch(/GET \/echo\?msg=prestop-http/);
    }, 120_000, 1000);
  });

  it('init containers run one after the other, to completion, before the app container', async () => {
    const { kube } = ctx();
    const p = await kube.waitRunning(ns, 'init');
    const inits = p.status!.initContainerStatuses!;
    expect(inits.map((s) => [s.name, s.state?.terminated?.exitCode, s.state?.terminated?.reason])).toEqual([['first', 0, 'Completed'], ['second', 0, 'Completed']]);
    const t = (x?: Date | string) => Date.parse(String(x));
    expect(t(inits[1].state!.terminated!.startedAt)).toBeGreaterThanOrEqual(t(inits[0].state!.terminated!.finishedAt));
    expect(t(p.status!.containerStatuses![0].state!.running!.startedAt)).toBeGreaterThanOrEqual(t(inits[1].state!.terminated!.finishedAt));
    expect(p.status!.conditions!.find((c) => c.type === 'Initialized')!.status).toBe('True');
    await until('main log', async () => expect(await kube.core.readNamespacedPodLog({ name: 'init', namespace: ns })).toBe('first\nsecond\nmain\n'), 60_000, 1000);
  });

  it('a failing init container fails the pod (restartPolicy Never) and the app container never starts', async () => {
    const { kube } = ctx();
    const p = await kube.waitPhase(ns, 'init-fails', 'Failed');
    expect(p.status!.initContainerStatuses![0].state!.terminated).toMatchObject({ exitCode: 4, reason: 'Error' });
    expect(p.status!.containerStatuses![0].state!.running).toBeUndefined();
    expect(p.status!.containerStatuses![0].state!.terminated?.startedAt).toBeUndefined();
  });
}
