// Probes of each kind (exec, httpGet, tcpSocket, grpc), run by kubelet against containers in pod
// VMs: a failing liveness probe restarts its container (counted, with a Liveness event),
// readiness drives each container's ready flag without restarts, a startup probe holds liveness
// off until it passes. exec probes go through CRI ExecSync into the guest; the network probes go
// from the host to the pod IP. Two pod VMs, one container per probe: `live` and `ready` (where the
// one gRPC server, agnhost, is probed for startup, readiness and liveness).
// The test makes each probe fail or pass itself (exec into the pod: a file removed, a server
// stopped, agnhost's /make-not-serving), never by sleeping in the container: in a starved TCG
// VM a timed script runs late and a timed assertion measures the machine's load. Every probed
// container has a startup probe, so liveness counts only once the server is up (agnhost takes
// seconds to listen under TCG, minutes on a loaded machine).
import type * as k8s from '@kubernetes/client-node';
import { IMAGES } from '../support/cluster';
import { describeStatuses } from '../support/kube';
import { containerStatus, type Namespace, podOf, shContainer } from '../support/namespace';
import { until } from '../support/procs';
import type { Ctx, SpecGroup } from './context';

const NS = 'e2e-probes';
/** a liveness probe's pace: period 2 s, two failures in a row; a timeout a loaded VM can meet */
const fast = { periodSeconds: 2, timeoutSeconds: 10, failureThreshold: 2 };
/** waits up to 10 min for the container to pass `check` once */
const startup = (check: Partial<k8s.V1Probe>): k8s.V1Probe => ({ ...check, periodSeconds: 2, timeoutSeconds: 10, failureThreshold: 300 });
/** busybox httpd serving /www (a healthz file) on `port`, beside the container's main process */
const httpd = (port: number) => `mkdir -p /www && echo ok > /www/healthz && httpd -f -p ${port} -h /www`;
const grpcServer = (httpPort: number): k8s.V1Container => ({
  name: 'grpc', image: IMAGES.agnhost, args: ['grpc-health-checking', '--port=5000', `--http-port=${httpPort}`],
});

const LIVE = podOf('live', [
  shContainer('exec', 'touch /tmp/healthy; exec sleep 7200', {
    startupProbe: startup({ exec: { command: ['cat', '/tmp/healthy'] } }),
    livenessProbe: { exec: { command: ['cat', '/tmp/healthy'] }, ...fast },
  }),
  shContainer('http', `${httpd(8080)}`, {
    startupProbe: startup({ httpGet: { path: '/healthz', port: 8080 } }),
    livenessProbe: { httpGet: { path: '/healthz', port: 8080 }, ...fast },
  }),
  // the port closes while the container's main process (sleep) goes on
  shContainer('tcp', `${httpd(8081)} & exec sleep 7200`, {
    startupProbe: startup({ tcpSocket: { port: 8081 } }),
    livenessProbe: { tcpSocket: { port: 8081 }, ...fast },
  }),
]);

const READY = podOf('ready', [
  // first: agnhost is the slowest to listen. Ready once it serves; restarted once it says NOT_SERVING
  {
    ...grpcServer(8082),
    startupProbe: startup({ grpc: { port: 5000 } }),
    readinessProbe: { grpc: { port: 5000 }, periodSeconds: 2, timeoutSeconds: 10 },
    livenessProbe: { grpc: { port: 5000 }, ...fast },
  },
  shContainer('http', httpd(8080), { readinessProbe: { httpGet: { path: '/healthz', port: 8080 }, periodSeconds: 2, timeoutSeconds: 10 } }),
  shContainer('tcp', httpd(8081), { readinessProbe: { tcpSocket: { port: 8081 }, periodSeconds: 2, timeoutSeconds: 10 } }),
  // ready once the test makes the file
  shContainer('exec', 'exec sleep 7200', { readinessProbe: { exec: { command: ['cat', '/tmp/ready'] }, periodSeconds: 2, timeoutSeconds: 10 } }),
  // nothing listens on 9999: never ready
  shContainer('never', 'exec sleep 7200', { readinessProbe: { httpGet: { path: '/healthz', port: 9999 }, periodSeconds: 2, timeoutSeconds: 10 } }),
  // liveness fails until the file exists, and waits for the startup probe, which waits for it
  // (its startup probe allows an hour: the test makes the file minutes after the pod started)
  shContainer('startup', 'exec sleep 7200', {
    startupProbe: { exec: { command: ['cat', '/tmp/started'] }, periodSeconds: 3, timeoutSeconds: 10, failureThreshold: 1200 },
    livenessProbe: { exec: { command: ['cat', '/tmp/started'] }, ...fast },
  }),
]);

export const probes: SpecGroup = {
  title: 'probes',
  namespace: NS,
  // agnhost took ~2 min to serve gRPC in a TCG VM at load 15-20: its pods start with the cluster
  early: true,
  setup: (ns) => ns.createAll([LIVE, READY]),
  specs,
};

function specs(ctx: Ctx, ns: () => Namespace): void {
  const st = (p: k8s.V1Pod, c: string) => containerStatus(p, c);

  /**
   * The pod once `container` has run for `ms` (many probe periods): what its probes made of it.
   * (Not kubelet's Unhealthy events: a pod's Warning events are rate-limited, 25 and then one
   * per 5 min, and failing probes of several containers use that up within seconds.)
   */
  const runningFor = (pod: string, container: string, ms: number) => ns().wait(pod, `${container} running for ${ms / 1000} s`, (x) => {
    const running = st(x, container).state?.running;
    if (!running || Date.now() - Date.parse(String(running.startedAt)) < ms) throw new Error(describeStatuses(x));
  }, 480_000);

  describe('readiness and startup', () => {
    beforeAll(async () => {
      await ns().wait('ready', 'every container running', (p) => {
        for (const c of READY.spec!.containers) if (!st(p, c.name).state?.running) throw new Error(describeStatuses(p));
      }, 480_000);
    }, 500_000);

    const ready = async (container: string) => {
      const p = await ns().wait('ready', `${container} ready`, (x) => {
        if (!st(x, container).ready) throw new Error(describeStatuses(x));
      }, 480_000);
      expect(st(p, container)).toMatchObject({ ready: true, started: true, restartCount: 0 });
      return p;
    };
    it('httpGet: Ready, no restarts', () => ready('http'));
    it('tcpSocket: Ready, no restarts', () => ready('tcp'));
    it('grpc: Ready, no restarts', () => ready('grpc'));

    it('exec: not Ready while the command fails, Ready once it succeeds', async () => {
      // a container without a readiness probe is ready once started; this one is not
      expect(st(await runningFor('ready', 'exec', 10_000), 'exec')).toMatchObject({ started: true, ready: false, restartCount: 0 });
      await ns().run('ready', ['touch', '/tmp/ready'], 'exec');
      await ready('exec');
    });

    it('failing: Running but not Ready (nor the pod), and never restarted', async () => {
      const p = await runningFor('ready', 'never', 20_000);
      expect(st(p, 'never')).toMatchObject({ ready: false, started: true, restartCount: 0 });
      expect(p.status!.phase).toBe('Running');
      expect(p.status!.conditions!.find((c) => c.type === 'Ready')!.status).toBe('False');
      expect(p.status!.conditions!.find((c) => c.type === 'ContainersReady')!.status).toBe('False');
    });

    it('startup: liveness waits for it (no restart while it fails); started and Ready once it passes', async () => {
      // its liveness probe (the same command, 2 failures at 2 s) would have restarted it by now
      const before = st(await runningFor('ready', 'startup', 15_000), 'startup');
      expect(before).toMatchObject({ started: false, ready: false, restartCount: 0 });
      await ns().run('ready', ['touch', '/tmp/started'], 'startup');
      const p = await ready('startup');
      expect(st(p, 'startup').state!.running!.startedAt).toEqual(before.state!.running!.startedAt);
    });
  });

  describe('liveness', () => {
    beforeAll(async () => {
      // every container up and past its startup probe
      await ns().wait('live', 'every container started', (p) => {
        for (const c of LIVE.spec!.containers) if (!st(p, c.name).started || !st(p, c.name).state?.running) throw new Error(describeStatuses(p));
      }, 480_000);
    }, 500_000);
    afterAll(() => Promise.all(['live', 'ready'].map((p) => ns().delete(p).catch(() => undefined))));

    /**
     * Makes the probe of `container` fail (its main process goes on) and waits for kubelet to
     * restart it, saying why (a Normal event: those are not used up by failing probes).
     */
    const restarted = (pod: string, container: string, fail: string, from = container) => async () => {
      const before = st(await ns().read(pod), container).restartCount;
      const r = await ns().sh(pod, fail, from);
      expect({ code: r.code, stderr: r.stderr }).toMatchObject({ code: 0 });
      const p = await ns().wait(pod, `${container} restarted by its liveness probe`, (x) => {
        if (st(x, container).restartCount <= before || !st(x, container).state?.running) throw new Error(describeStatuses(x));
      }, 240_000);
      // stopped by kubelet, not ended by itself
      expect(st(p, container).lastState?.terminated?.exitCode).not.toBe(0);
      await until(`kubelet says why it restarted ${container}`, async () => {
        expect((await ns().events(pod, container)).join('\n')).toMatch(new RegExp(`Killing: Container ${container} failed liveness probe, will be restarted`));
      }, 30_000, 2000);
    };

    it('exec: restarts the container once the command fails', restarted('live', 'exec', 'rm /tmp/healthy'));
    it('httpGet: restarts the container once /healthz answers 404', restarted('live', 'http', 'rm /www/healthz'));
    it('tcpSocket: restarts the container once nothing listens on the port', restarted('live', 'tcp', 'kill $(pidof httpd)'));
    // the pod's containers share one network: wget from its exec container to agnhost's control port
    it('grpc: restarts the container once the health service says NOT_SERVING', restarted('ready', 'grpc', 'wget -q -O /dev/null http://127.0.0.1:8082/make-not-serving', 'exec'));
  });
}
