// Container lifecycle around the main process: postStart and preStop hooks (exec in the guest,
// httpGet from kubelet to the pod) run at the right moments, and init containers run to
// completion, in order, before the app container starts. A server pod (busybox httpd, verbose)
// records the hooks' HTTP calls in its log, as upstream's lifecycle-hook e2e does with agnhost
// (whose Go server took minutes to listen in a starved TCG VM).
import type * as k8s from '@kubernetes/client-node';
import { type Namespace, podOf, shContainer, shPod } from '../support/namespace';
import { until } from '../support/procs';
import type { Ctx, SpecGroup } from './context';

const NS = 'e2e-lifecycle';
const work = { volumeMounts: [{ name: 'work', mountPath: '/work' }] };

export const lifecycle: SpecGroup = {
  title: 'lifecycle hooks and init containers',
  namespace: NS,
  setup: (ns) => ns.createAll([
    // serves a file for each hook's path and logs each request's path (-vv) on stderr
    shPod('hook-server', 'mkdir -p /www && for f in poststart-http prestop-exec prestop-http; do echo ok > /www/$f; done && exec httpd -f -vv -p 8080 -h /www'),
    // the main process waits for the hook's file and says what it found
    shPod('post-exec', 'while [ ! -f /tmp/hook ]; do sleep 0.2; done; echo "hook said: $(cat /tmp/hook)"; exec sleep 7200', {
      lifecycle: { postStart: { exec: { command: ['sh', '-c', 'echo poststart-exec > /tmp/hook'] } } },
    }),
    podOf('init', [shContainer('main', 'echo main >> /work/order; cat /work/order; exec sleep 7200', work)], {
      initContainers: [
        shContainer('first', 'echo first >> /work/order; sleep 2', work),
        shContainer('second', 'echo second >> /work/order', work),
      ],
      volumes: [{ name: 'work', emptyDir: {} }],
    }),
    podOf('init-fails', [shContainer('main', 'echo never')], { restartPolicy: 'Never', initContainers: [shContainer('broken', 'exit 4')] }),
  ]),
  specs,
};

function specs(ctx: Ctx, ns: () => Namespace): void {
  it('postStart exec runs in the container before it counts as started', async () => {
    await ns().running('post-exec');
    await until('main saw the hook', async () => expect(await ns().log('post-exec')).toBe('hook said: poststart-exec\n'), 60_000, 1000);
  });

  it('postStart and preStop httpGet reach a server; preStop exec runs before the container stops', async () => {
    const server: k8s.V1Pod = await ns().running('hook-server');
    const ip = server.status!.podIP!;
    const requests = async () => (await ns().log('hook-server')).split('\n').map((l) => /url:(\S+)/.exec(l)?.[1]).filter(Boolean);
    await ns().create(podOf('hooks', [
      shContainer('http-hooks', 'exec sleep 7200', {
        lifecycle: {
          postStart: { httpGet: { host: ip, port: 8080, path: '/poststart-http' } },
          // exec in the guest: wget from inside the pod to the server, then the container stops
          preStop: { exec: { command: ['wget', '-q', '-O', '-', `http://${ip}:8080/prestop-exec`] } },
        },
      }),
      shContainer('http-stop', 'exec sleep 7200', { lifecycle: { preStop: { httpGet: { host: ip, port: 8080, path: '/prestop-http' } } } }),
    ], { terminationGracePeriodSeconds: 30 }));
    await ns().running('hooks');
    await until('postStart request in the server log', async () => expect(await requests()).toContain('/poststart-http'), 60_000, 1000);
    expect(await requests()).not.toContain('/prestop-exec');
    await ns().delete('hooks');
    await until('preStop requests in the server log', async () => expect(await requests()).toEqual(expect.arrayContaining(['/prestop-exec', '/prestop-http'])), 120_000, 1000);
  });

  it('init containers run one after the other, to completion, before the app container', async () => {
    const p = await ns().running('init');
    const inits = p.status!.initContainerStatuses!;
    expect(inits.map((s) => [s.name, s.state?.terminated?.exitCode, s.state?.terminated?.reason])).toEqual([['first', 0, 'Completed'], ['second', 0, 'Completed']]);
    const t = (x?: Date | string) => Date.parse(String(x));
    expect(t(inits[1].state!.terminated!.startedAt)).toBeGreaterThanOrEqual(t(inits[0].state!.terminated!.finishedAt));
    expect(t(p.status!.containerStatuses![0].state!.running!.startedAt)).toBeGreaterThanOrEqual(t(inits[1].state!.terminated!.finishedAt));
    expect(p.status!.conditions!.find((c) => c.type === 'Initialized')!.status).toBe('True');
    await until('main log', async () => expect(await ns().log('init')).toBe('first\nsecond\nmain\n'), 60_000, 1000);
  });

  it('a failing init container fails the pod (restartPolicy Never) and the app container never starts', async () => {
    const p = await ns().phase('init-fails', 'Failed');
    expect(p.status!.initContainerStatuses![0].state!.terminated).toMatchObject({ exitCode: 4, reason: 'Error' });
    expect(p.status!.containerStatuses![0].state!.running).toBeUndefined();
    expect(p.status!.containerStatuses![0].state!.terminated?.startedAt).toBeUndefined();
  });
}
