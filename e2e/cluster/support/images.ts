// The images the cluster tests run, pushed to the local test registry under the paths upstream's
// e2e suite uses (registry.k8s.io/e2e-test-images/...): podvisor pulls them by their upstream
// names through a certs.d mirror. Built here from this machine's files: busybox-static with every
// applet linked, and agnhost (Kubernetes' own test server, built by build.sh) on top of it, as
// upstream's agnhost image (ENTRYPOINT /agnhost, CMD pause). Two agnhost tags (the current and
// the previous version upstream pins) are distinct images, for rolling an image update.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { busyboxEntries, makeLayer, pushImage, type TarEntry } from '../../../test/support/images';
import type { Registry } from '../../../test/support/registry';

export const UPSTREAM_REGISTRY = 'registry.k8s.io';
export const IMAGES = {
  busybox: `${UPSTREAM_REGISTRY}/e2e-test-images/busybox:1.37.0-2`,
  agnhost: `${UPSTREAM_REGISTRY}/e2e-test-images/agnhost:2.66.1`,
  agnhostPrev: `${UPSTREAM_REGISTRY}/e2e-test-images/agnhost:2.55`,
} as const;

/** busybox-static with a link for each of its applets in /bin (the test image keeps only a few). */
function allApplets(): TarEntry[] {
  const have = new Set(busyboxEntries().map((e) => e.name));
  return execFileSync('/bin/busybox', ['--list'], { encoding: 'utf8' }).split('\n').filter(Boolean)
    .map((a): TarEntry => ({ name: `bin/${a}`, type: 'symlink', linkname: 'busybox' }))
    .filter((e) => !have.has(e.name) && e.name !== 'bin/busybox');
}

/** Pushes every image in IMAGES to `registry` (repository path without the upstream host). */
export async function pushClusterImages(registry: Registry, binDir: string): Promise<void> {
  const repo = (ref: string) => ref.slice(UPSTREAM_REGISTRY.length + 1).split(':');
  const base = await makeLayer(busyboxEntries([
    ...allApplets(),
    { name: 'etc/hosts', content: '127.0.0.1 localhost\n' },
    { name: 'var/', type: 'directory' },
    { name: 'var/run/', type: 'directory' },
  ]));
  const [bbName, bbTag] = repo(IMAGES.busybox);
  await pushImage(registry, bbName, bbTag, { layers: [base], config: { Cmd: ['sh'] } });
  const agnhost = await makeLayer([
    { name: 'agnhost', content: fs.readFileSync(path.join(binDir, 'agnhost')), mode: 0o755 },
    { name: 'agnhost-2', type: 'symlink', linkname: 'agnhost' },
    { name: 'uploads/', type: 'directory' },
  ]);
  for (const ref of [IMAGES.agnhost, IMAGES.agnhostPrev]) {
    const [name, tag] = repo(ref);
    const marker = await makeLayer([{ name: 'IMAGE_VERSION', content: `${tag}\n` }]);
    await pushImage(registry, name, tag, { layers: [base, agnhost, marker], config: { Entrypoint: ['/agnhost'], Cmd: ['pause'], ExposedPorts: { '80/tcp': {}, '8080/tcp': {}, '8081/tcp': {}, '5000/tcp': {} } } });
  }
}
