// ImageManager and the CRI image handlers against real local registries (docker-registry).
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp, mkdtempSync, readFileSync, existsSync, lstatSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { PodvisorError, type ErrorCode } from '../../src/util/errors';
import { imageHandlers } from '../../src/cri/image';
import { ImageManager, type ImageManagerOptions } from '../../src/image/manager';
import { closeAgents } from '../../src/image/registry';
import { makeLayer, pushBusybox, pushImage, pushMultiArch } from '../support/images';
import { registryBlobPath, startProxy, startRegistry, type Proxy, type Registry } from '../support/registry';
import { mountErofs, rawTar, readXattrs, startSlowProxy, unmountAll } from './helpers';

jest.setTimeout(60_000);

const work = mkdtempSync(path.join(os.tmpdir(), 'podvisor-pull-'));
let reg: Registry;
let digests: Record<string, string> = {};
const managers: ImageManager[] = [];
let logText = '';

/** A logger whose output is kept, to prove secrets never reach it. */
const captureLogger = () =>
  pino(
    { level: 'debug' },
    new Writable({
      write(chunk, _e, cb) {
        logText += chunk.toString();
        cb();
      },
    }),
  );

let nMgr = 0;
async function manager(extra: Partial<ImageManagerOptions> & { hosts?: Record<string, string> } = {}): Promise<ImageManager> {
  const root = extra.root ?? path.join(work, `mgr-${++nMgr}`, 'images');
  const configDir = extra.configDir ?? path.join(work, `mgr-${nMgr}`, 'etc');
  for (const [host, toml] of Object.entries(extra.hosts ?? {})) {
    await fsp.mkdir(path.join(configDir, 'certs.d', host), { recursive: true });
    await fsp.writeFile(path.join(configDir, 'certs.d', host, 'hosts.toml'), toml);
  }
  const m = new ImageManager({ root, configDir, logger: captureLogger(), ...extra });
  await m.init();
  managers.push(m);
  return m;
}

async function codeOf(p: Promise<unknown>): Promise<ErrorCode> {
  try {
    await p;
  } catch (e) {
    if (e instanceof PodvisorError) return e.code;
    throw e;
  }
  throw new Error('expected a rejection');
}
async function errorOf(p: Promise<unknown>): Promise<PodvisorError> {
  try {
    await p;
  } catch (e) {
    return e as PodvisorError;
  }
  throw new Error('expected a rejection');
}

/** Runs `fn` while the registry serves blob `digest` with `damage` done to its bytes; the good blob is put back after. */
async function withDamagedBlob(digest: string, damage: (bytes: Buffer) => void, fn: () => Promise<void>): Promise<void> {
  const file = registryBlobPath(reg, digest);
  const good = await fsp.readFile(file);
  const bad = Buffer.from(good);
  damage(bad);
  await fsp.writeFile(file, bad);
  try {
    await fn();
  } finally {
    await fsp.writeFile(file, good);
  }
}

/** Extracts an erofs image with fsck.erofs (also validates it). */
function extractErofs(img: string): string {
  const out = mkdtempSync(path.join(work, 'extract-'));
  execFileSync('fsck.erofs', [`--extract=${out}`, '--overwrite', img], { stdio: 'pipe' });
  return out;
}

const mirrorToml = (upstream: string, mirror: string) => `server = "https://${upstream}"\n[host."http://${mirror}"]\n  capabilities = ["pull", "resolve"]\n`;

beforeAll(async () => {
  reg = await startRegistry();
  digests.busybox = await pushBusybox(reg, 'library/busybox', 'latest', { config: { User: '1000:50', WorkingDir: '/root', Labels: { a: 'b' } } });
  digests.v2s2 = await pushBusybox(reg, 'v2s2/busybox', 'v1', { format: 'v2s2', extra: [{ name: 'V2S2', content: 'v2s2' }] });
  digests.ociIndex = await pushMultiArch(reg, 'multi/oci', 'v1');
  digests.dockerList = await pushMultiArch(reg, 'multi/docker', 'v1', { format: 'v2s2' });
  digests.e2e = await pushBusybox(reg, 'e2e-test-images/busybox', '1.29-2', { extra: [{ name: 'E2E', content: 'e2e' }], config: { User: 'nobody' } });
});

afterAll(async () => {
  await unmountAll();
  await closeAgents();
  await reg?.stop();
  await fsp.rm(work, { recursive: true, force: true });
});

async function manifestMediaType(r: Registry, repo: string, ref: string): Promise<string> {
  const res = await fetch(`${r.url}/v2/${repo}/manifests/${ref}`, {
    headers: { accept: 'application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' },
  });
  return JSON.parse(await res.text()).mediaType;
}

describe('pull', () => {
  test('by tag: record, erofs content, ownership and modes', async () => {
    const m = await manager();
    const r = await m.pull(`${reg.host}/library/busybox`);
    expect(r.id).toMatch(/^sha256:[a-f0-9]{64}$/);
    expect(r.repoTags).toEqual([`${reg.host}/library/busybox:latest`]);
    expect(r.repoDigests).toEqual([`${reg.host}/library/busybox@${digests.busybox}`]);
    expect(r.size).toBeGreaterThan(500_000);
    expect(r.user).toEqual({ uid: 1000 });
    expect(r.config.config.WorkingDir).toBe('/root');
    expect(r.erofsPath).toBe(path.join(path.dirname(path.dirname(r.erofsPath)), 'erofs', `${r.id.slice(7)}.erofs`));
    const x = extractErofs(r.erofsPath);
    expect(readFileSync(path.join(x, 'bin/busybox')).equals(readFileSync('/bin/busybox'))).toBe(true);
    expect(statSync(path.join(x, 'bin/busybox')).mode & 0o777).toBe(0o755);
    expect(lstatSync(path.join(x, 'bin/sh')).isSymbolicLink()).toBe(true);
    expect(readFileSync(path.join(x, 'etc/passwd'), 'utf8')).toMatch(/^root:x:0:0/);
    expect(statSync(path.join(x, 'tmp')).mode & 0o7777).toBe(0o1777);
    expect(statSync(path.join(x, 'root')).mode & 0o777).toBe(0o700);
    // Nothing left behind in tmp/.
    expect(await fsp.readdir(path.join(path.dirname(path.dirname(r.erofsPath)), 'tmp'))).toEqual([]);
  });

  test('by digest, and name:tag@digest (the digest wins)', async () => {
    const m = await manager();
    const r = await m.pull(`${reg.host}/library/busybox@${digests.busybox}`);
    expect(r.repoTags).toEqual([]);
    expect(r.repoDigests).toEqual([`${reg.host}/library/busybox@${digests.busybox}`]);
    const r2 = await m.pull(`${reg.host}/library/busybox:whatever@${digests.busybox}`);
    expect(r2.id).toBe(r.id);
    expect(m.list()).toHaveLength(1);
    expect(await codeOf(m.pull(`${reg.host}/library/busybox@sha256:${'0'.repeat(64)}`))).toBe('not_found');
  });

  test('OCI index and Docker manifest list → the linux/amd64 image', async () => {
    expect(await manifestMediaType(reg, 'multi/oci', 'v1')).toBe('application/vnd.oci.image.index.v1+json');
    expect(await manifestMediaType(reg, 'multi/docker', 'v1')).toBe('application/vnd.docker.distribution.manifest.list.v2+json');
    const m = await manager();
    for (const repo of ['multi/oci', 'multi/docker']) {
      const r = await m.pull(`${reg.host}/${repo}:v1`);
      expect(r.config.architecture).toBe('amd64');
      // Both lists hold the same amd64 image, so it ends up with both repo digests.
      expect(r.repoDigests).toContain(`${reg.host}/${repo}@${repo === 'multi/oci' ? digests.ociIndex : digests.dockerList}`);
      const x = extractErofs(r.erofsPath);
      expect(readFileSync(path.join(x, 'AMD64'), 'utf8')).toBe('amd64\n');
      expect(existsSync(path.join(x, 'ARM64'))).toBe(false);
    }
  });

  test('xattrs (a file capability, user.*) survive into the image the guest mounts', async () => {
    const cap = Buffer.from('0100000200200000000000000000000000000000', 'hex'); // cap_net_raw+ep
    const lower = await makeLayer(rawTar([{ name: 'usr/bin/ping', data: Buffer.from('v1'), mode: 0o755, pax: [['SCHILY.xattr.user.v', Buffer.from('1')]] }]));
    const upper = await makeLayer(
      rawTar([
        { name: 'usr/bin/ping', data: readFileSync('/bin/busybox'), mode: 0o755, pax: [['SCHILY.xattr.security.capability', cap], ['SCHILY.xattr.user.mime', Buffer.from('application/x-executable')], ['SCHILY.xattr.trusted.overlay.opaque', Buffer.from('y')]] },
      ]),
    );
    await pushImage(reg, 'xattr/img', 'v1', { layers: [lower, upper] });
    const m = await manager();
    const r = await m.pull(`${reg.host}/xattr/img:v1`);
    const mnt = mkdtempSync(path.join(work, 'mnt-'));
    await mountErofs(r.erofsPath, mnt);
    try {
      expect(readFileSync(path.join(mnt, 'usr/bin/ping')).equals(readFileSync('/bin/busybox'))).toBe(true);
      expect(await readXattrs(path.join(mnt, 'usr/bin/ping'))).toEqual({ 'security.capability': cap, 'user.mime': Buffer.from('application/x-executable') });
    } finally {
      await unmountAll();
    }
  });

  test('Docker schema2 manifest', async () => {
    expect(await manifestMediaType(reg, 'v2s2/busybox', 'v1')).toBe('application/vnd.docker.distribution.manifest.v2+json');
    const m = await manager();
    const r = await m.pull(`${reg.host}/v2s2/busybox:v1`);
    expect(readFileSync(path.join(extractErofs(r.erofsPath), 'V2S2'), 'utf8')).toBe('v2s2');
  });

  test('through a mirror (hosts.toml): the image keeps its upstream name', async () => {
    const m = await manager({ hosts: { 'registry.example.invalid': mirrorToml('registry.example.invalid', reg.host) } });
    const r = await m.pull('registry.example.invalid/e2e-test-images/busybox:1.29-2');
    expect(r.repoTags).toEqual(['registry.example.invalid/e2e-test-images/busybox:1.29-2']);
    expect(r.repoDigests).toEqual([`registry.example.invalid/e2e-test-images/busybox@${digests.e2e}`]);
    expect(r.user).toEqual({ username: 'nobody' });
    expect(m.resolve('registry.example.invalid/e2e-test-images/busybox:1.29-2')?.id).toBe(r.id);
    // A missing image: the mirror's 404 wins over the unreachable upstream.
    expect(await codeOf(m.pull('registry.example.invalid/e2e-test-images/nope:1'))).toBe('not_found');
  });

  test('_default hosts.toml and Docker Hub names through a mirror (short names resolve)', async () => {
    const m = await manager({ hosts: { _default: `[host."http://${reg.host}"]\n  capabilities = ["pull", "resolve"]\n` } });
    const r = await m.pull('busybox');
    expect(r.repoTags).toEqual(['docker.io/library/busybox:latest']);
    for (const name of ['busybox', 'busybox:latest', 'library/busybox', 'docker.io/library/busybox:latest', `busybox@${digests.busybox}`, `docker.io/library/busybox@${digests.busybox}`, r.id, r.id.slice(7), r.id.slice(7, 19), r.id.slice(0, 19)])
      expect(m.resolve(name)?.id).toBe(r.id);
    for (const name of ['busybox:other', 'nothere', r.id.slice(7, 17), `sha256:${'f'.repeat(64)}`, 'BAD NAME']) expect(m.resolve(name)).toBeUndefined();
  });

  test('errors: bad reference, unknown repo, unreachable registry', async () => {
    const m = await manager();
    expect(await codeOf(m.pull('Not A Ref'))).toBe('invalid_argument');
    expect(await codeOf(m.pull(`${reg.host}/no/such:thing`))).toBe('not_found');
    expect(await codeOf(m.pull(`${reg.host}/library/busybox:nosuchtag`))).toBe('not_found');
    expect(await codeOf(m.pull('127.0.0.1:1/x:y'))).toBe('unavailable');
    expect(m.list()).toEqual([]);
  });
});

describe('auth', () => {
  let basic: Registry;
  let token: Registry;
  beforeAll(async () => {
    [basic, token] = await Promise.all([startRegistry({ auth: 'htpasswd', password: 's3cr3t-basic' }), startRegistry({ auth: 'token', password: 's3cr3t-token' })]);
    await Promise.all([pushBusybox(basic, 'private/busybox', 'v1'), pushBusybox(token, 'private/busybox', 'v1')]);
  });
  afterAll(async () => {
    await basic?.stop();
    await token?.stop();
  });

  test('Basic: right password (username/password and auth), wrong password, none', async () => {
    const m = await manager();
    const ref = `${basic.host}/private/busybox:v1`;
    expect((await m.pull(ref, { username: 'alice', password: 's3cr3t-basic' })).repoTags).toEqual([ref]);
    await m.remove(ref);
    await m.pull(ref, { auth: Buffer.from('alice:s3cr3t-basic').toString('base64') });
    const wrong = await errorOf(m.pull(ref, { username: 'alice', password: 'WRONG-pass-123' }));
    expect(wrong.code).toBe('unauthenticated');
    expect(wrong.message).not.toMatch(/WRONG-pass-123/);
    expect(await codeOf(m.pull(ref))).toBe('unauthenticated');
  });

  test('Bearer token: user/password, identity token, registry token; wrong and anonymous refused', async () => {
    const m = await manager();
    const ref = `${token.host}/private/busybox:v1`;
    const ts = token.token!;
    ts.requests.length = 0;
    await m.pull(ref, { username: 'alice', password: 's3cr3t-token' });
    expect(ts.requests.some((r) => r.account === 'alice' && r.scope.includes('repository:private/busybox:pull'))).toBe(true);
    await m.remove(ref);
    const wrong = await errorOf(m.pull(ref, { username: 'alice', password: 'WRONG-pass-456' }));
    expect(wrong.code).toBe('unauthenticated');
    expect(wrong.message).not.toMatch(/WRONG-pass-456/);
    expect(await codeOf(m.pull(ref))).toBe('unauthenticated');
    await m.pull(ref, { identity_token: ts.refreshToken });
    expect(ts.requests.some((r) => r.method === 'POST' && r.grant === 'refresh_token')).toBe(true);
    await m.remove(ref);
    expect(await codeOf(m.pull(ref, { identity_token: 'bogus-refresh-789' }))).toBe('unauthenticated');
    const direct = ts.issue([{ type: 'repository', name: 'private/busybox', actions: ['pull'] }], 'alice');
    expect((await m.pull(ref, { registry_token: direct })).repoTags).toEqual([ref]);
  });

  test('credentials never reach the logs', () => {
    expect(logText.length).toBeGreaterThan(0);
    for (const secret of ['s3cr3t-basic', 's3cr3t-token', 'WRONG-pass', 'bogus-refresh', Buffer.from('alice:s3cr3t-basic').toString('base64')]) expect(logText).not.toContain(secret);
  });
});

describe('robustness', () => {
  let proxy: Proxy;
  beforeEach(async () => {
    proxy = await startProxy(reg.url);
  });
  afterEach(async () => {
    await proxy.stop();
  });

  const layerOf = async (repo: string, tag: string) => {
    const res = await fetch(`${reg.url}/v2/${repo}/manifests/${tag}`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
    return JSON.parse(await res.text()).layers[0].digest as string;
  };

  test('concurrent pulls of one image share one download', async () => {
    const m = await manager();
    proxy.delayMs = 300;
    const layer = await layerOf('library/busybox', 'latest');
    const [a, b, c] = await Promise.all([
      m.pull(`${proxy.host}/library/busybox:latest`),
      m.pull(`${proxy.host}/library/busybox:latest`),
      m.pull(`${proxy.host}/library/busybox@${digests.busybox}`),
    ]);
    expect(new Set([a.id, b.id, c.id]).size).toBe(1);
    expect(proxy.blobGets(layer)).toBe(1);
    expect(m.list()).toHaveLength(1);
    expect(m.list()[0].repoTags).toEqual([`${proxy.host}/library/busybox:latest`]);
  });

  test('a layer worker downloads the blob itself; when it is refused there, this thread fetches it (fail-over, auth)', async () => {
    const repo = 'fallback/busybox';
    await pushBusybox(reg, repo, 'v1', { extra: [{ name: 'FALLBACK', content: 'f' }] });
    const layer = await layerOf(repo, 'v1');
    const m = await manager();
    logText = '';
    await m.pull(`${proxy.host}/${repo}:v1`);
    expect(proxy.blobGets(layer)).toBe(1);
    const fetchedBy = (digest: string) =>
      logText
        .split('\n')
        .filter((l) => l.includes(digest) && l.includes('layer downloaded'))
        .map((l) => JSON.parse(l).fetchedBy ?? 'main');
    expect(fetchedBy(layer)).toEqual(['worker']);

    // An expired token (401) or a failing mirror (503) on the worker's one try: the usual
    // path answers it (here the next GET succeeds), and the image is complete.
    for (const status of [401, 503]) {
      const m2 = await manager();
      proxy.counts.clear();
      logText = '';
      proxy.refuseBlob(layer, status, 1);
      const r = await m2.pull(`${proxy.host}/${repo}:v1`);
      expect(proxy.blobGets(layer)).toBe(2);
      expect(fetchedBy(layer)).toEqual(['main']);
      expect(logText).toContain(`"reason":"HTTP ${status}"`);
      const out = extractErofs(r.erofsPath);
      expect(readFileSync(path.join(out, 'FALLBACK'), 'utf8')).toBe('f');
    }

    // Refused every time: the error is the usual one, and nothing is left behind.
    const root = path.join(work, 'refused', 'images');
    const m3 = await manager({ root });
    proxy.counts.clear();
    proxy.refuseBlob(layer, 503, 10);
    const err = await errorOf(m3.pull(`${proxy.host}/${repo}:v1`));
    expect(err.code).toBe('unavailable');
    expect(err.message).toMatch(/HTTP 503.*REFUSED_BY_TEST_PROXY/);
    expect(proxy.blobGets(layer)).toBe(2);
    expect(m3.list()).toEqual([]);
    expect(await fsp.readdir(path.join(root, 'tmp'))).toEqual([]);
    expect(existsSync(path.join(root, 'blobs/sha256', layer.slice(7)))).toBe(false);
    proxy.refuseBlob(layer, 503, 0);
  });

  test('a large layer\'s download progress is logged every 10% (worker and main-thread downloads)', async () => {
    const repo = 'progress/big';
    const layer = await makeLayer([{ name: 'noise', content: randomBytes(12 << 20) }]);
    await pushImage(reg, repo, 'v1', { layers: [layer] });
    const digest = await layerOf(repo, 'v1');
    const steps = () =>
      logText
        .split('\n')
        .filter((l) => l.includes('downloading layer') && l.includes(digest))
        .map((l) => JSON.parse(l));
    for (const refuse of [false, true]) {
      const m = await manager();
      logText = '';
      // Refused once: the worker gives it back and this thread downloads and logs it.
      if (refuse) proxy.refuseBlob(digest, 503, 1);
      await m.pull(`${proxy.host}/${repo}:v1`);
      const s = steps();
      expect(s.map((x) => x.pct)).toEqual([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100].filter((p) => s.some((x) => x.pct === p)));
      expect(s.length).toBeGreaterThanOrEqual(5);
      expect(s[s.length - 1]).toMatchObject({ pct: 100, bytes: layer.blob.length, total: layer.blob.length });
      expect(logText.includes('"fetchedBy":"worker"')).toBe(!refuse);
    }
  });

  test('an interrupted download leaves nothing visible; a retry (and a restart) work', async () => {
    const root = path.join(work, 'interrupted', 'images');
    const m = await manager({ root });
    const layer = await layerOf('library/busybox', 'latest');
    proxy.breakBlob(layer, 100_000);
    const err = await errorOf(m.pull(`${proxy.host}/library/busybox:latest`));
    expect(err.code).toBe('unavailable');
    expect(m.list()).toEqual([]);
    expect(m.resolve(`${proxy.host}/library/busybox:latest`)).toBeUndefined();
    expect(await fsp.readdir(path.join(root, 'erofs'))).toEqual([]);
    expect(await fsp.readdir(path.join(root, 'tmp'))).toEqual([]);
    expect(existsSync(path.join(root, 'blobs/sha256', layer.slice(7)))).toBe(false);
    // A restart in between: still nothing, then the retry succeeds.
    const m2 = await manager({ root, configDir: path.join(work, 'interrupted', 'etc') });
    expect(m2.list()).toEqual([]);
    proxy.breakBlob(undefined);
    const r = await m2.pull(`${proxy.host}/library/busybox:latest`);
    expect(existsSync(r.erofsPath)).toBe(true);
  });

  test('a corrupted blob is refused (DATA_LOSS naming the blob), then a retry works', async () => {
    const repo = 'corrupt/busybox';
    await pushBusybox(reg, repo, 'v1', { extra: [{ name: 'CORRUPT', content: 'c' }] });
    const layer = await layerOf(repo, 'v1');
    const m = await manager();
    await withDamagedBlob(layer, (b) => (b[b.length - 100] ^= 0xff), async () => {
      const err = await errorOf(m.pull(`${reg.host}/${repo}:v1`));
      expect(err.code).toBe('data_loss');
      expect(err.message).toContain(layer);
      expect(m.list()).toEqual([]);
    });
    await m.pull(`${reg.host}/${repo}:v1`);
    expect(m.list()).toHaveLength(1);
  });

  test('a blob whose layer reads fine but whose bytes differ (gzip header) is DATA_LOSS: the reader\'s digest is checked', async () => {
    const repo = 'corrupt/header';
    const layer = await makeLayer([{ name: 'f', content: randomBytes(2 << 20) }]);
    await pushImage(reg, repo, 'v1', { layers: [layer] });
    const m = await manager();
    // gzip MTIME: gunzip ignores it, the tar and its diff_id are unchanged
    await withDamagedBlob(layer.digest, (b) => (b[4] ^= 0x01), async () => {
      const err = await errorOf(m.pull(`${reg.host}/${repo}:v1`));
      expect(err.code).toBe('data_loss');
      expect(err.message).toContain(layer.digest);
      expect(m.list()).toEqual([]);
    });
    await m.pull(`${reg.host}/${repo}:v1`);
    expect(m.list()).toHaveLength(1);
  });

  test('a blob corrupted mid-way is DATA_LOSS even though its layer is read while it downloads', async () => {
    const repo = 'corrupt/middle';
    // compressible (Huffman-coded) data, so that the corruption breaks the deflate stream itself
    const big = await makeLayer([{ name: 'big', content: randomBytes(3 << 20).toString('base64') }, { name: 'small', content: 'x'.repeat(100_000) }]);
    await pushImage(reg, repo, 'v1', { layers: [big] });
    const root = path.join(work, 'corrupt-middle', 'images');
    const m = await manager({ root });
    // the deflate stream breaks in the middle
    const damage = (b: Buffer) => { for (let i = 0; i < 64; i++) b[(b.length >> 1) + i] ^= 0x5a; };
    await withDamagedBlob(big.digest, damage, async () => {
      const slow = await startSlowProxy(reg.url); // the reader hits the bad bytes long before the download ends
      try {
        const err = await errorOf(m.pull(`${slow.host}/${repo}:v1`));
        expect(err.code).toBe('data_loss');
        expect(err.message).toContain(big.digest);
        expect(m.list()).toEqual([]);
        expect(await fsp.readdir(path.join(root, 'erofs'))).toEqual([]);
        expect(await fsp.readdir(path.join(root, 'tmp'))).toEqual([]);
      } finally {
        await slow.stop();
      }
    });
  });

  test('layers that finish downloading out of order still apply in order (whiteouts, opaque dirs, replacements)', async () => {
    const bottom = await makeLayer([
      { name: 'big', content: randomBytes(8 << 20) },
      { name: 'gone', content: 'lower' },
      { name: 'd/old', content: 'lower' },
      { name: 'keep', content: 'lower' },
    ]);
    const middle = await makeLayer([{ name: '.wh.gone', content: '' }, { name: 'd/', type: 'directory' }, { name: 'd/.wh..wh..opq', content: '' }, { name: 'd/new', content: 'middle' }, { name: 'keep', content: 'middle' }]);
    const top = await makeLayer([{ name: 'big', content: 'small now' }, { name: 'gone', type: 'directory' }]);
    await pushImage(reg, 'order/img', 'v1', { layers: [bottom, middle, top] });
    const m = await manager();
    const r = await m.pull(`${proxy.host}/order/img:v1`);
    const mnt = mkdtempSync(path.join(work, 'mnt-'));
    await mountErofs(r.erofsPath, mnt);
    try {
      expect(readFileSync(path.join(mnt, 'big'), 'utf8')).toBe('small now');
      expect(statSync(path.join(mnt, 'gone')).isDirectory()).toBe(true);
      expect(await fsp.readdir(path.join(mnt, 'd'))).toEqual(['new']);
      expect(readFileSync(path.join(mnt, 'keep'), 'utf8')).toBe('middle');
    } finally {
      await unmountAll();
    }
  });

  test('a hostile layer pulled from a registry is refused and leaves nothing', async () => {
    const outside = path.join(work, 'hostile-outside');
    await fsp.mkdir(outside);
    const layer = await makeLayer([
      { name: 'ok', content: 'fine' },
      { name: 'evil', type: 'symlink', linkname: outside },
      { name: 'evil/pwned', content: 'neutralized' },
      { name: '../../../../../../../tmp/podvisor-pwned', content: 'refused' },
    ]);
    await pushImage(reg, 'hostile/img', 'v1', { layers: [layer] });
    const root = path.join(work, 'hostile', 'images');
    const m = await manager({ root });
    const err = await errorOf(m.pull(`${reg.host}/hostile/img:v1`));
    expect(err.code).toBe('failed_precondition');
    expect(err.message).toMatch(/escapes the root/);
    expect(await fsp.readdir(outside)).toEqual([]);
    expect(existsSync('/tmp/podvisor-pwned')).toBe(false);
    expect(m.list()).toEqual([]);
    expect(await fsp.readdir(path.join(root, 'tmp'))).toEqual([]);
    expect(await fsp.readdir(path.join(root, 'erofs'))).toEqual([]);
  });
});

describe('status, list, remove (CRI handlers)', () => {
  test('PullImage / ImageStatus / ListImages / RemoveImage / ImageFsInfo', async () => {
    const m = await manager({ hosts: { 'registry.example.invalid': mirrorToml('registry.example.invalid', reg.host) }, pinned: ['registry.example.invalid/e2e-test-images/busybox:1.29-2'] });
    const containerDir = path.join(work, 'containers');
    await fsp.mkdir(containerDir, { recursive: true });
    await fsp.writeFile(path.join(containerDir, 'f'), 'x'.repeat(10000));
    // the test reads the answers as plain objects (the handlers' types say every field is optional)
    const h = imageHandlers(m, { containerFsDir: containerDir }) as unknown as Record<string, (req?: object) => Promise<any>>;
    const spec = (image: string) => ({ image, annotations: {}, user_specified_image: '', runtime_handler: '' });

    const e2e = 'registry.example.invalid/e2e-test-images/busybox:1.29-2';
    const pulled = await h.PullImage({ image: spec(e2e), auth: null, sandbox_config: null });
    expect(pulled.image_ref).toMatch(/^sha256:/);
    const bb = await h.PullImage({ image: spec(`${reg.host}/library/busybox:latest`), auth: { username: '', password: '', auth: '', server_address: '', identity_token: '', registry_token: '' } });

    const st = await h.ImageStatus({ image: spec(e2e), verbose: true });
    expect(st.image).toMatchObject({ id: pulled.image_ref, repo_tags: [e2e], repo_digests: [`registry.example.invalid/e2e-test-images/busybox@${digests.e2e}`], uid: null, username: 'nobody', pinned: true });
    expect(Number(st.image.size)).toBeGreaterThan(0);
    expect(JSON.parse(st.info.info).imageSpec.config.User).toBe('nobody');
    const st2 = await h.ImageStatus({ image: spec(bb.image_ref), verbose: false });
    expect(st2.image).toMatchObject({ uid: { value: '1000' }, username: '', pinned: false });
    expect(st2.info).toEqual({});
    expect(await h.ImageStatus({ image: spec('registry.example.invalid/nothere:1'), verbose: false })).toEqual({ image: null, info: {} });
    expect(await codeOf(h.ImageStatus({ image: spec('') }))).toBe('invalid_argument');

    expect((await h.ListImages({ filter: null })).images).toHaveLength(2);
    expect((await h.ListImages({ filter: { image: spec('') } })).images).toHaveLength(2);
    expect((await h.ListImages({ filter: { image: spec(e2e) } })).images.map((i: any) => i.id)).toEqual([pulled.image_ref]);
    expect((await h.ListImages({ filter: { image: spec('nothere') } })).images).toEqual([]);

    // Removing the only tag removes the image (and its erofs file); removal is idempotent.
    const img = m.resolve(bb.image_ref)!;
    await h.RemoveImage({ image: spec(`${reg.host}/library/busybox:latest`) });
    expect(m.resolve(bb.image_ref)).toBeUndefined();
    expect(existsSync(img.erofsPath)).toBe(false);
    await h.RemoveImage({ image: spec(`${reg.host}/library/busybox:latest`) }); // idempotent
    await h.RemoveImage({ image: spec(`sha256:${'e'.repeat(64)}`) });

    const fs = await h.ImageFsInfo({});
    expect(fs.image_filesystems).toHaveLength(1);
    const u = fs.image_filesystems[0];
    expect(existsSync(u.fs_id.mountpoint)).toBe(true);
    expect(Number(u.used_bytes.value)).toBeGreaterThan(0);
    expect(Number(u.inodes_used.value)).toBeGreaterThan(0);
    expect(u.timestamp).toMatch(/^\d{19}$/);
    expect(fs.container_filesystems[0].fs_id.mountpoint).toBe(containerDir);
    expect(Number(fs.container_filesystems[0].used_bytes.value)).toBeGreaterThanOrEqual(10000);
  });

  test('tags: removing one of two only untags; last tag removes; by id removes all', async () => {
    await pushBusybox(reg, 'tags/img', 'a', { extra: [{ name: 'T', content: 't' }] });
    await pushBusybox(reg, 'tags/img', 'b', { extra: [{ name: 'T', content: 't' }] });
    const m = await manager();
    const a = await m.pull(`${reg.host}/tags/img:a`);
    const b = await m.pull(`${reg.host}/tags/img:b`);
    expect(b.id).toBe(a.id);
    expect(m.list()).toHaveLength(1);
    expect(m.list()[0].repoTags.sort()).toEqual([`${reg.host}/tags/img:a`, `${reg.host}/tags/img:b`]);
    await m.remove(`${reg.host}/tags/img:a`);
    expect(m.resolve(`${reg.host}/tags/img:a`)).toBeUndefined();
    expect(m.resolve(`${reg.host}/tags/img:b`)?.id).toBe(a.id);
    await m.remove(`${reg.host}/tags/img:b`);
    expect(m.list()).toEqual([]);
    expect(existsSync(a.erofsPath)).toBe(false);
    // By id: everything goes.
    await m.pull(`${reg.host}/tags/img:a`);
    await m.pull(`${reg.host}/tags/img:b`);
    await m.remove(a.id.slice(7, 20));
    expect(m.list()).toEqual([]);
    // Blobs were collected too.
    expect(await fsp.readdir(path.join(path.dirname(path.dirname(a.erofsPath)), 'blobs/sha256'))).toEqual([]);
  });

  test('an image in use is hidden on removal and deleted on release', async () => {
    const m = await manager();
    const r = await m.pull(`${reg.host}/library/busybox:latest`);
    m.acquire(r.id);
    m.acquire(r.id);
    await m.remove(r.id);
    expect(m.resolve(r.id)).toBeUndefined();
    expect(m.list()).toEqual([]);
    expect(existsSync(r.erofsPath)).toBe(true);
    m.release(r.id);
    await new Promise((res) => setTimeout(res, 50));
    expect(existsSync(r.erofsPath)).toBe(true);
    m.release(r.id);
    for (let i = 0; i < 50 && existsSync(r.erofsPath); i++) await new Promise((res) => setTimeout(res, 20));
    expect(existsSync(r.erofsPath)).toBe(false);
  });

  test('a moved tag leaves the old image listed by digest; state survives a restart', async () => {
    const root = path.join(work, 'moved', 'images');
    const m = await manager({ root });
    const d1 = await pushBusybox(reg, 'moving/img', 'latest', { extra: [{ name: 'V', content: '1' }] });
    const old = await m.pull(`${reg.host}/moving/img:latest`);
    await pushBusybox(reg, 'moving/img', 'latest', { extra: [{ name: 'V', content: '2' }] });
    const neu = await m.pull(`${reg.host}/moving/img:latest`);
    expect(neu.id).not.toBe(old.id);
    expect(m.resolve(old.id)).toMatchObject({ repoTags: [], repoDigests: [`${reg.host}/moving/img@${d1}`] });
    expect(m.resolve(`${reg.host}/moving/img:latest`)?.id).toBe(neu.id);
    // Restart: the same state, leftovers in tmp/ and stray blobs are cleaned.
    await fsp.writeFile(path.join(root, 'tmp', 'blob-leftover'), 'x');
    await fsp.writeFile(path.join(root, 'blobs/sha256', 'f'.repeat(64)), 'stray');
    const m2 = await manager({ root, configDir: path.join(work, 'moved', 'etc') });
    expect(m2.list().map((i) => i.id).sort()).toEqual([old.id, neu.id].sort());
    expect(m2.resolve(`${reg.host}/moving/img:latest`)?.id).toBe(neu.id);
    expect(await fsp.readdir(path.join(root, 'tmp'))).toEqual([]);
    expect(existsSync(path.join(root, 'blobs/sha256', 'f'.repeat(64)))).toBe(false);
  });
});
