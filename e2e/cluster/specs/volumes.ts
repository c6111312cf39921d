// Volumes kubelet prepares on the host and podvisor hands into the pod VM (virtio-9p): ConfigMap,
// Secret, downward API and the projected service-account token appear with their content and
// modes; a ConfigMap update reaches a container that is already running; emptyDir (disk and
// memory) is shared between two containers of a pod. Read through exec via the API server.
import { IMAGES } from '../support/cluster';
import { until } from '../support/procs';
import type { Ctx, SpecGroup } from './context';

const ns = 'e2e-volumes';
const mount = (name: string, mountPath: string, readOnly?: boolean) => ({ name, mountPath, readOnly });

export const volumes: SpecGroup = {
  title: 'volumes',
  namespace: ns,
  async setup({ kube }) {
    await kube.core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'cm' }, data: { greeting: 'hello', 'multi-line': 'a\nb\n' } } });
    await kube.core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: 'sec' }, stringData: { password: 's3cr3t' } } });
    await Promise.all([
      kube.createPod(ns, {
        metadata: { name: 'api-volumes', labels: { app: 'volumes', tier: 'test' }, annotations: { note: 'from-the-api' } },
        spec: {
          terminationGracePeriodSeconds: 1,
          containers: [{
            name: 'main', image: IMAGES.busybox, command: ['sleep', '7200'],
            resources: { limits: { cpu: '500m', memory: '128Mi' } },
            volumeMounts: [mount('cm', '/etc/cm', true), mount('sec', '/etc/sec', true), mount('info', '/etc/info', true), mount('token', '/var/run/secrets/tokens', true)],
          }],
          volumes: [
            { name: 'cm', configMap: { name: 'cm' } },
            { name: 'sec', secret: { secretName: 'sec', defaultMode: 0o400 } },
            {
              name: 'info',
              downwardAPI: {
                items: [
                  { path: 'labels', fieldRef: { fieldPath: 'metadata.labels' } },
                  { path: 'annotations', fieldRef: { fieldPath: 'metadata.annotations' } },
                  { path: 'name', fieldRef: { fieldPath: 'metadata.name' } },
                  { path: 'cpu_limit_millis', resourceFieldRef: { containerName: 'main', resource: 'limits.cpu', divisor: '1m' } },
                  { path: 'mem_limit_mib', resourceFieldRef: { containerName: 'main', resource: 'limits.memory', divisor: '1Mi' } },
                ],
              },
            },
            { name: 'token', projected: { sources: [{ serviceAccountToken: { path: 'token', audience: 'e2e-audience', expirationSeconds: 3600 } }] } },
          ],
        },
      }),
      kube.createPod(ns, {
        metadata: { name: 'shared' },
        spec: {
          terminationGracePeriodSeconds: 1,
          containers: [
            { name: 'writer', image: IMAGES.busybox, command: ['sh', '-c', 'echo disk-data > /disk/f; echo mem-data > /mem/f; exec sleep 7200'], volumeMounts: [mount('disk', '/disk'), mount('mem', '/mem')] },
            { name: 'reader', image: IMAGES.busybox, command: ['sleep', '7200'], volumeMounts: [mount('disk', '/disk'), mount('mem', '/mem')] },
          ],
          volumes: [{ name: 'disk', emptyDir: {} }, { name: 'mem', emptyDir: { medium: 'Memory' } }],
        },
      }),
    ]);
  },
  specs,
};

function specs(ctx: Ctx): void {
  const run = (pod: string, cmd: string[], container?: string) => ctx().kube.run(ns, pod, cmd, container);

  beforeAll(() => Promise.all([ctx().kube.waitRunning(ns, 'api-volumes'), ctx().kube.waitRunning(ns, 'shared')]));

  it('ConfigMap keys are files with their values', async () => {
    expect(await run('api-volumes', ['cat', '/etc/cm/greeting'])).toBe('hello');
    expect(await run('api-volumes', ['cat', '/etc/cm/multi-line'])).toBe('a\nb\n');
  });

  it('Secret keys are files with the defaultMode asked for', async () => {
    expect(await run('api-volumes', ['cat', '/etc/sec/password'])).toBe('s3cr3t');
    expect((await run('api-volumes', ['stat', '-L', '-c', '%a', '/etc/sec/password'])).trim()).toBe('400');
  });

  it('downward API: labels, annotations, name and resource limits', async () => {
    const labels = await run('api-volumes', ['cat', '/etc/info/labels']);
    expect(labels.split('\n').sort()).toEqual(['app="volumes"', 'tier="test"']);
    expect(await run('api-volumes', ['cat', '/etc/info/annotations'])).toMatch(/^note="from-the-api"$/m);
    expect(await run('api-volumes', ['cat', '/etc/info/name'])).toBe('api-volumes');
    expect(await run('api-volumes', ['cat', '/etc/info/cpu_limit_millis'])).toBe('500');
    expect(await run('api-volumes', ['cat', '/etc/info/mem_limit_mib'])).toBe('128');
  });

  it('projected service-account token: a JWT for the pod with the audience asked for; the default token mount too', async () => {
    const token = await run('api-volumes', ['cat', '/var/run/secrets/tokens/token']);
    const claims = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());
    expect(claims.aud).toEqual(['e2e-audience']);
    expect(claims['kubernetes.io']).toMatchObject({ namespace: ns, pod: { name: 'api-volumes' }, serviceaccount: { name: 'default' } });
    // the automounted service-account volume (token, ca.crt, namespace)
    expect(await run('api-volumes', ['cat', '/var/run/secrets/kubernetes.io/serviceaccount/namespace'])).toBe(ns);
    expect(await run('api-volumes', ['cat', '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt'])).toMatch(/^-----BEGIN CERTIFICATE-----/);
  });

  it('a ConfigMap update reaches the running container', async () => {
    const { kube } = ctx();
    await kube.core.replaceNamespacedConfigMap({ name: 'cm', namespace: ns, body: { metadata: { name: 'cm' }, data: { greeting: 'updated', 'multi-line': 'a\nb\n' } } });
    await until('updated value in the container', async () => expect(await run('api-volumes', ['cat', '/etc/cm/greeting'])).toBe('updated'), 120_000, 2000);
    const p = await kube.core.readNamespacedPod({ name: 'api-volumes', namespace: ns });
    expect(p.status!.containerStatuses![0].restartCount).toBe(0);
  });

  it('emptyDir on disk and in memory: what one container writes, the other reads', async () => {
    await until('writer wrote', async () => {
      expect(await run('shared', ['cat', '/disk/f'], 'reader')).toBe('disk-data\n');
      expect(await run('shared', ['cat', '/mem/f'], 'reader')).toBe('mem-data\n');
    }, 60_000, 1000);
    // and back the other way
    await run('shared', ['sh', '-c', 'echo from-reader > /disk/g; echo from-reader > /mem/g'], 'reader');
    expect(await run('shared', ['cat', '/disk/g', '/mem/g'], 'writer')).toBe('from-reader\nfrom-reader\n');
  });
}
