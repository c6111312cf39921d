// The manifests in deploy/ agree with each other and with the project: one node label selects
// podvisor nodes (the DaemonSet, the RuntimeClass, the CSI node plugin), one image name at the
// project's version runs podvisor's own containers, and the CSI driver name is the plugin's.
// The installer and cleanup DaemonSets run the image's node-install.sh with the node's root
// where the script looks for it (e2e/image.test.ts runs that script in the built image).
import fs from 'node:fs';
import path from 'node:path';
import yaml from 'js-yaml';

const DEPLOY = path.join(__dirname, '..', 'deploy');
const files = ['daemonset.yaml', 'uninstall.yaml', 'runtimeclass.yaml', 'csi/node.yaml', 'csi/controller.yaml', 'csi/csidriver.yaml', 'csi/examples.yaml'];
const text = Object.fromEntries(files.map((f) => [f, fs.readFileSync(path.join(DEPLOY, f), 'utf8')]));
const version: string = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')).version;

describe('deploy/ manifests agree', () => {
  test('every podvisor node selector uses the one label podvisor.dev/runtime: "true"', () => {
    const selectors = files.flatMap((f) => [...text[f].matchAll(/(podvisor\.[a-z]+\/[a-z-]+):\s*"?([^"\s,}]+)"?/g)].map((m) => `${f}: ${m[1]}=${m[2]}`));
    expect(selectors.length).toBeGreaterThanOrEqual(3);
    for (const f of ['daemonset.yaml', 'runtimeclass.yaml', 'csi/node.yaml']) expect(selectors).toContain(`${f}: podvisor.dev/runtime=true`);
    expect(selectors.filter((s) => !s.endsWith('podvisor.dev/runtime=true'))).toEqual([]);
  });

  test(`podvisor's own containers use one image, podvisor/podvisor:${version}`, () => {
    const images = files.flatMap((f) => [...text[f].matchAll(/image:\s*(\S+)/g)].map((m) => m[1])).filter((i) => /podvisor/.test(i));
    expect(images.length).toBeGreaterThanOrEqual(3);
    expect([...new Set(images)]).toEqual([`podvisor/podvisor:${version}`]);
  });

  test('the CSI driver name is the one the plugin serves', () => {
    const src = fs.readFileSync(path.join(__dirname, '..', 'storage', 'csi', 'server.ts'), 'utf8');
    const name = /DRIVER_NAME = '([^']+)'/.exec(src)![1];
    expect(text['csi/csidriver.yaml']).toMatch(new RegExp(`name: ${name.replace(/\./g, '\\.')}$`, 'm'));
    expect(text['csi/node.yaml']).toContain(`/var/lib/kubelet/plugins/${name}/csi.sock`);
  });

  test('the CSI node plugin is a host-network pod: on a podvisor node the host-pod backend runs it, its socket on the host', () => {
    const ds = (yaml.loadAll(text['csi/node.yaml']) as any[]).find((o) => o?.kind === 'DaemonSet');
    expect(ds.spec.template.spec).toMatchObject({ hostNetwork: true, dnsPolicy: 'ClusterFirstWithHostNet' });
  });

  test.each([['daemonset.yaml', 'install'], ['uninstall.yaml', 'uninstall']])('%s runs node-install.sh %s on the node root it mounts at HOST_ROOT, in the host PID namespace', (file, action) => {
    const ds = yaml.load(text[file]) as any;
    expect(ds.kind).toBe('DaemonSet');
    const pod = ds.spec.template.spec;
    expect(ds.spec.selector.matchLabels).toEqual(ds.spec.template.metadata.labels);
    expect(pod).toMatchObject({ hostPID: true, hostNetwork: true });
    const [c] = pod.containers;
    expect(c.command).toEqual(['/bin/sh', '/installer/node-install.sh', action, '--stay']);
    expect(c.securityContext.privileged).toBe(true);
    const env = Object.fromEntries(c.env.map((e: any) => [e.name, e.value]));
    const script = fs.readFileSync(path.join(__dirname, '..', 'scripts', 'node-install.sh'), 'utf8');
    // the manifest says what the script defaults to: either alone would install the same way
    expect(script).toContain(`host=\${HOST_ROOT:-${env.HOST_ROOT}}`);
    expect(script).toContain(`prefix=\${PREFIX:-${env.PREFIX}}`);
    const mount = c.volumeMounts.find((m: any) => m.mountPath === env.HOST_ROOT);
    expect(pod.volumes.find((v: any) => v.name === mount.name).hostPath).toEqual({ path: '/', type: 'Directory' });
  });
});
