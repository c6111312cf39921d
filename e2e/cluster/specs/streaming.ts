// The API server's pod subresources on podvisor: logs (current and previous), exec, attach and
// port-forward, each through the API server and kubelet to podvisor's streaming server, with
// client-node's own clients (WebSocket), as kubectl users get them. The web pod runs busybox httpd
// from the agnhost image (its base is busybox): agnhost's Go server took minutes to listen in a
// starved TCG VM.
import http from 'node:http';
import net from 'node:net';
import { PassThrough } from 'node:stream';
import * as k8s from '@kubernetes/client-node';
import { IMAGES } from '../support/cluster';
import { Collect, describeStatuses } from '../support/kube';
import { podOf, shContainer, shPod } from '../support/namespace';
import { until } from '../support/procs';
import type { Ctx, SpecGroup } from './context';

const NS = 'e2e-streaming';
/** files the web pod serves: its hostname and two bodies */
const WEB = 'mkdir -p /www && hostname > /www/hostname && echo one > /www/one && echo two > /www/two && exec httpd -f -p 8080 -h /www';

export const streaming: SpecGroup = {
  title: 'logs, exec, attach, port-forward',
  namespace: NS,
  setup: (ns) => ns.createAll([
    // each run says which run it is (an emptyDir survives restarts), then fails
    shPod('logger', 'n=$(cat /s/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /s/n; echo "run $n out"; echo "run $n err" >&2; sleep 3; [ $n -ge 2 ] && exec sleep 7200; exit 1',
      { volumeMounts: [{ name: 's', mountPath: '/s' }] }, { volumes: [{ name: 's', emptyDir: {} }] }),
    shPod('web', WEB, { image: IMAGES.agnhost, readinessProbe: { httpGet: { path: '/hostname', port: 8080 }, periodSeconds: 2, timeoutSeconds: 10 } }),
    podOf('reader', [shContainer('main', 'while read line; do echo "got: $line"; done', { stdin: true })]),
  ]),
  specs,
};

function specs(ctx: Ctx): void {
  it('logs: the current run and the previous one, stdout and stderr interleaved', async () => {
    const { kube } = ctx();
    await kube.waitPod(NS, 'logger', 'second run', (p) => {
      if (p.status?.containerStatuses?.[0]?.restartCount !== 1 || !p.status.containerStatuses[0].state?.running) throw new Error(describeStatuses(p));
    }, 180_000);
    const log = (previous: boolean) => kube.core.readNamespacedPodLog({ name: 'logger', namespace: NS, previous });
    await until('both lines of the current run', async () => expect((await log(false)).split('\n').sort()).toEqual(['', 'run 2 err', 'run 2 out']), 30_000, 1000);
    expect((await log(true)).split('\n').sort()).toEqual(['', 'run 1 err', 'run 1 out']);
    // timestamps from the CRI log file, as kubectl logs --timestamps shows them
    const stamped = await kube.core.readNamespacedPodLog({ name: 'logger', namespace: NS, timestamps: true });
    expect(stamped).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z run 2 (out|err)$/m);
  });

  it('exec: stdout, stderr, stdin and the exit code', async () => {
    const { kube } = ctx();
    await kube.waitRunning(NS, 'web');
    expect(await kube.exec(NS, 'web', ['sh', '-c', 'echo out; echo err >&2; exit 7'])).toEqual({ stdout: 'out\n', stderr: 'err\n', code: 7 });
    expect(await kube.exec(NS, 'web', ['cat'], { stdin: 'round trip\n' })).toMatchObject({ stdout: 'round trip\n', code: 0 });
    // the container's own view: its hostname is the pod name, the IMAGE_VERSION of its image
    expect((await kube.run(NS, 'web', ['hostname'])).trim()).toBe('web');
    expect((await kube.run(NS, 'web', ['cat', '/IMAGE_VERSION'])).trim()).toBe('2.66.1');
  });

  it('attach: writes to the container stdin and reads its stdout', async () => {
    const { kube, cluster } = ctx();
    await kube.waitRunning(NS, 'reader');
    const out = new Collect();
    const stdin = new PassThrough();
    const ws = await new k8s.Attach(cluster.kc).attach(NS, 'reader', 'main', out, null, stdin, false);
    try {
      stdin.write('ping\n');
      await until('echo through attach', () => expect(out.text()).toBe('got: ping\n'), 30_000, 200);
      stdin.write('pong\n');
      await until('second line', () => expect(out.text()).toBe('got: ping\ngot: pong\n'), 30_000, 200);
    } finally {
      ws.close();
    }
  });

  it('port-forward: HTTP to a port inside the pod VM through the API server', async () => {
    const { kube, cluster } = ctx();
    await kube.waitRunning(NS, 'web');
    const pf = new k8s.PortForward(cluster.kc);
    const server = net.createServer((socket) => {
      pf.portForward(NS, 'web', [8080], socket, null, socket).catch(() => socket.destroy());
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    try {
      const get = (p: string) => new Promise<string>((resolve, reject) => {
        http.get({ host: '127.0.0.1', port, path: p, agent: false, timeout: 30_000 }, (res) => {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => resolve(body));
        }).on('error', reject).on('timeout', function (this: http.ClientRequest) { this.destroy(new Error('timeout')); });
      });
      expect(await get('/hostname')).toBe('web\n');
      // two connections at once, each its own stream
      expect(await Promise.all([get('/one'), get('/two')])).toEqual(['one\n', 'two\n']);
    } finally {
      server.close();
    }
  });
}
