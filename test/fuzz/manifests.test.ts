// Fuzz: a hostile registry. For each case a local HTTP registry serves a generated manifest or
// index (media types, descriptors with wrong or absurd digests and sizes, unknown schema
// versions, missing fields, garbage JSON, wrong status codes and digest headers) with configs
// and layers that may or may not match, and a real ImageManager pulls from it. Every pull must
// end with an image or a PodvisorError (a gRPC status), never another error or a hang; the process's
// peak RSS over the run is printed and bounded.
import { createHash } from 'node:crypto';
import { mkdtempSync, promises as fsp } from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import * as zlib from 'node:zlib';
import { PodvisorError } from '../../src/util/errors';
import { silentLogger } from '../../src/util/log';
import { ImageManager } from '../../src/image/manager';
import { closeAgents } from '../../src/image/registry';
import { makeTar } from '../support/images';
import { fc, fuzzParams } from '../support/fuzz';
import { MiB, measurePeak } from '../support/rss';

jest.setTimeout(120_000);
const work = mkdtempSync(path.join(os.tmpdir(), 'podvisor-manifest-fuzz-'));
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
const MEDIA = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, 'application/vnd.docker.distribution.manifest.list.v2+json', 'application/vnd.docker.distribution.manifest.v1+json', 'text/html', ''];

// what the registry serves for this case: path → [status, headers, body]
let routes = new Map<string, [number, Record<string, string>, Buffer]>();
let server: http.Server;
let host = '';
let mgr: ImageManager;
let layer: Buffer;
let layerDiff: string;

beforeAll(async () => {
  const tar = await makeTar([{ name: 'hello', content: 'world\n' }]);
  layer = zlib.gzipSync(tar);
  layerDiff = sha(tar);
  server = http.createServer((req, res) => {
    const r = routes.get(req.url ?? '') ?? (req.url === '/v2/' ? [200, {}, Buffer.from('{}')] : [404, { 'content-type': 'application/json' }, Buffer.from('{"errors":[{"code":"NOT_FOUND"}]}')]);
    res.writeHead(r[0], { 'content-length': String(r[2].length), ...r[1] });
    res.end(req.method === 'HEAD' ? undefined : r[2]);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  host = `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  const configDir = path.join(work, 'etc');
  await fsp.mkdir(path.join(configDir, 'certs.d', host), { recursive: true });
  await fsp.writeFile(path.join(configDir, 'certs.d', host, 'hosts.toml'), `server = "http://${host}"\n\n[host."http://${host}"]\n  capabilities = ["pull", "resolve"]\n`);
  mgr = new ImageManager({ root: path.join(work, 'images'), configDir, logger: silentLogger });
  await mgr.init();
});
afterAll(async () => {
  (mgr as any)?.close?.();
  await closeAgents();
  await new Promise<void>((r) => server.close(() => r()));
  await fsp.rm(work, { recursive: true, force: true });
});

const digestArb = (right: string) => fc.oneof({ weight: 3, arbitrary: fc.constant(right) }, fc.constantFrom(`sha256:${'0'.repeat(64)}`, 'md5:abc', 'sha256:XYZ', '', 'sha512:' + 'a'.repeat(128)), fc.string({ maxLength: 80 }));
const sizeArb = (right: number) => fc.oneof({ weight: 3, arbitrary: fc.constant(right) }, fc.constantFrom(-1, 0, 2 ** 53, 1e300, 3.5, '12' as unknown as number), fc.nat());
const platformArb = fc.record({ architecture: fc.constantFrom('amd64', 'arm64', ''), os: fc.constantFrom('linux', 'windows') });

const caseArb = fc.record({
  configJson: fc.oneof(
    { weight: 3, arbitrary: fc.constant(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: ['@DIFF@'] }, config: { Cmd: ['/hello'] } })) },
    fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
    fc.string({ maxLength: 200 }),
  ),
  schemaVersion: fc.constantFrom(2, 2, 2, 1, 3, '2', null),
  mediaType: fc.constantFrom(...MEDIA),
  servedType: fc.constantFrom(...MEDIA),
  layers: fc.array(fc.record({ mediaType: fc.constantFrom('application/vnd.oci.image.layer.v1.tar+gzip', 'application/vnd.oci.image.layer.v1.tar+zstd', 'application/x-foo', ''), wrongDigest: fc.boolean(), wrongSize: fc.boolean() }), { maxLength: 3 }),
  index: fc.boolean(),
  platforms: fc.array(platformArb, { maxLength: 3 }),
  status: fc.constantFrom(200, 200, 200, 200, 404, 401, 500, 301),
  digestHeader: fc.constantFrom('right', 'wrong', 'none'),
  garbage: fc.option(fc.string({ maxLength: 300 }), { freq: 6 }),
  cDigest: digestArb('@CFG@'),
  cSize: sizeArb(-2),
});

let n = 0;
const outcomes: Record<string, number> = {};
async function pullCase(c: any): Promise<void> {
  const name = `fuzz/img${n++}`;
  routes = new Map();
  const config = Buffer.from(c.configJson.replace('@DIFF@', layerDiff));
  routes.set(`/v2/${name}/blobs/${sha(config)}`, [200, {}, config]);
  routes.set(`/v2/${name}/blobs/${sha(layer)}`, [200, {}, layer]);
  const manifestDoc: any = {
    schemaVersion: c.schemaVersion,
    mediaType: c.mediaType,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: c.cDigest === '@CFG@' ? sha(config) : c.cDigest, size: c.cSize === -2 ? config.length : c.cSize },
    layers: c.layers.map((l: any) => ({ mediaType: l.mediaType, digest: l.wrongDigest ? sha(Buffer.from('x')) : sha(layer), size: l.wrongSize ? layer.length + 1 : layer.length })),
  };
  const manifest = Buffer.from(c.garbage ?? JSON.stringify(manifestDoc));
  let top = manifest;
  let topType = c.servedType;
  routes.set(`/v2/${name}/manifests/${sha(manifest)}`, [200, { 'content-type': c.servedType, 'docker-content-digest': sha(manifest) }, manifest]);
  if (c.index) {
    top = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: c.platforms.map((p: any) => ({ mediaType: OCI_MANIFEST, digest: sha(manifest), size: manifest.length, platform: p })) }));
    topType = OCI_INDEX;
  }
  const dh: Record<string, string> = c.digestHeader === 'right' ? { 'docker-content-digest': sha(top) } : c.digestHeader === 'wrong' ? { 'docker-content-digest': sha(Buffer.from('no')) } : {};
  routes.set(`/v2/${name}/manifests/latest`, [c.status, { 'content-type': topType, ...dh }, top]);
  let outcome: string;
  try {
    const rec = await Promise.race([mgr.pull(`${host}/${name}:latest`), new Promise((_, rej) => setTimeout(() => rej(new Error('pull hung')), 15_000))]);
    outcome = 'pulled';
    expect((rec as any).id).toMatch(/^sha256:/);
  } catch (e) {
    if (!(e instanceof PodvisorError)) throw new Error(`not a PodvisorError: ${(e as Error)?.name}: ${(e as Error)?.message}`);
    outcome = `code ${e.code}`;
    if (process.env.FUZZ_DEBUG) console.log(e.message);
  }
  outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
}

test('a well-formed image from the same registry pulls (the fuzz starts from something that works)', async () => {
  const good = { configJson: JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: ['@DIFF@'] } }), schemaVersion: 2, mediaType: OCI_MANIFEST, servedType: OCI_MANIFEST, layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', wrongDigest: false, wrongSize: false }], index: false, platforms: [], status: 200, digestHeader: 'right', garbage: null, cDigest: '@CFG@', cSize: -2 };
  await pullCase(good);
  expect(outcomes).toEqual({ pulled: 1 });
  delete outcomes.pulled;
});

test('hostile registry answers: every pull ends with an image or a gRPC status, RSS bounded', async () => {
  const { growth } = await measurePeak('manifest fuzz', 'self', () => fc.assert(fc.asyncProperty(caseArb, pullCase), fuzzParams('manifests', 250, 20_000)));
  console.log(`manifest fuzz outcomes: ${JSON.stringify(outcomes)}`);
  expect(Object.keys(outcomes).length).toBeGreaterThan(2); // several kinds of refusal were reached
  expect(growth).toBeLessThan(128 * MiB);
});
