// Pure units: reference normalization, hosts.toml resolution, auth challenge parsing.
import { mkdtempSync, promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PodvisorError} from '../../src/util/errors';
import { credentialsFrom, parseChallenges } from '../../src/image/auth';
import { resolveHosts } from '../../src/image/hosts';
import { parseUser } from '../../src/image/manager';
import { normalize, parseReference } from '../../src/image/reference';
import { pickPlatform } from '../../src/image/registry';

const D = `sha256:${'a'.repeat(64)}`;

describe('reference', () => {
  test.each([
    ['busybox', 'docker.io/library/busybox:latest'],
    ['busybox:1.36', 'docker.io/library/busybox:1.36'],
    ['library/busybox', 'docker.io/library/busybox:latest'],
    ['docker.io/busybox', 'docker.io/library/busybox:latest'],
    ['index.docker.io/library/busybox:1', 'docker.io/library/busybox:1'],
    ['bitnami/redis:7', 'docker.io/bitnami/redis:7'],
    ['registry.k8s.io/e2e-test-images/busybox:1.29-2', 'registry.k8s.io/e2e-test-images/busybox:1.29-2'],
    ['localhost/x', 'localhost/x:latest'],
    ['127.0.0.1:5000/a/b', '127.0.0.1:5000/a/b:latest'],
    ['[::1]:5000/a:t', '[::1]:5000/a:t'],
    [`busybox@${D}`, `docker.io/library/busybox@${D}`],
    [`busybox:1.36@${D}`, `docker.io/library/busybox@${D}`],
    [`host:5000/x:tag@${D}`, `host:5000/x@${D}`],
  ])('%s → %s', (i, o) => expect(normalize(i)).toBe(o));

  test.each(['', 'Busybox', 'busybox:', 'busybox@sha256:abc', 'a//b', 'busybox:-bad', `${'a'.repeat(64)}`, 'x@md5:00', 'UPPER.io/x/Y'])('%j is INVALID_ARGUMENT', (i) => {
    try {
      parseReference(i);
      throw new Error('parsed');
    } catch (e) {
      expect(e).toBeInstanceOf(PodvisorError);
      expect((e as PodvisorError).code).toBe('invalid_argument');
    }
  });

  test('user parsing', () => {
    expect(parseUser('1000')).toEqual({ uid: 1000 });
    expect(parseUser('1000:50')).toEqual({ uid: 1000 });
    expect(parseUser('nobody')).toEqual({ username: 'nobody' });
    expect(parseUser('www-data:www-data')).toEqual({ username: 'www-data' });
    expect(parseUser('')).toEqual({});
    expect(parseUser(undefined)).toEqual({});
  });

  test('platform pick prefers linux/amd64 and skips attestations', () => {
    const d = (os: string, architecture: string, variant?: string) => ({ mediaType: 'm', digest: `${os}-${architecture}-${variant}`, size: 1, platform: { os, architecture, variant } });
    expect(pickPlatform([d('linux', 'arm64', 'v8'), d('unknown', 'unknown'), d('linux', 'amd64')])?.digest).toBe('linux-amd64-undefined');
    expect(pickPlatform([d('linux', 'amd64', 'v3'), d('linux', 'amd64', 'v1')])?.digest).toBe('linux-amd64-v1');
    expect(pickPlatform([d('linux', 'arm64')])).toBeUndefined();
  });
});

describe('auth', () => {
  test('challenges', () => {
    expect(parseChallenges('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"')).toEqual([
      { scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/busybox:pull' } },
    ]);
    expect(parseChallenges('Basic realm="Registry Realm"')).toEqual([{ scheme: 'basic', params: { realm: 'Registry Realm' } }]);
    expect(parseChallenges('Basic realm="a", Bearer realm="b", error="insufficient_scope"').map((c) => c.scheme)).toEqual(['basic', 'bearer']);
    expect(parseChallenges('Bearer realm="x\\"y"')[0].params.realm).toBe('x"y');
  });

  test('CRI AuthConfig fields', () => {
    expect(credentialsFrom(undefined)).toBeUndefined();
    expect(credentialsFrom({})).toBeUndefined();
    expect(credentialsFrom({ auth: Buffer.from('u:p:with:colons').toString('base64') })).toEqual({ username: 'u', password: 'p:with:colons' });
    expect(credentialsFrom({ username: 'a', password: 'b' })).toEqual({ username: 'a', password: 'b' });
    expect(credentialsFrom({ identity_token: 'r', registry_token: 't' })).toEqual({ identityToken: 'r', registryToken: 't' });
  });
});

describe('hosts.toml', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'podvisor-hosts-'));
  afterAll(() => fsp.rm(dir, { recursive: true, force: true }));
  const write = async (host: string, text: string) => {
    await fsp.mkdir(path.join(dir, 'certs.d', host), { recursive: true });
    await fsp.writeFile(path.join(dir, 'certs.d', host, 'hosts.toml'), text);
  };

  test('no config: upstream over https (Docker Hub via registry-1), loopback may fall back to http', async () => {
    const hub = await resolveHosts(dir, 'docker.io');
    expect(hub.map((e) => [e.url, e.upstream, e.httpFallback])).toEqual([['https://registry-1.docker.io/v2', true, false]]);
    expect((await resolveHosts(dir, '127.0.0.1:5000'))[0].httpFallback).toBe(true);
  });

  test('mirrors in order, then the server; capabilities, skip_verify, ca, headers, override_path', async () => {
    await fsp.writeFile(path.join(dir, 'ca.pem'), 'CA PEM');
    await write(
      'registry.k8s.io',
      `server = "https://registry.k8s.io"
[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]
[host."https://mirror.example:8443/prefix"]
  capabilities = ["pull"]
  skip_verify = true
  ca = "${path.join(dir, 'ca.pem')}"
  override_path = true
  [host."https://mirror.example:8443/prefix".header]
    x-test = ["1", "2"]
`,
    );
    const eps = await resolveHosts(dir, 'registry.k8s.io');
    expect(eps.map((e) => e.url)).toEqual(['http://127.0.0.1:5000/v2', 'https://mirror.example:8443/prefix', 'https://registry.k8s.io/v2']);
    expect([...eps[0].capabilities]).toEqual(['pull', 'resolve']);
    expect(eps[0].upstream).toBe(false);
    expect(eps[1].skipVerify).toBe(true);
    expect(eps[1].ca).toEqual(['CA PEM']);
    expect(eps[1].headers).toEqual({ 'x-test': '1, 2' });
    expect(eps[2].upstream).toBe(true);
  });

  test('host:port dirs, the host_port_ form, and _default', async () => {
    await write('myreg.io_5000_', `[host."http://10.0.0.1:8080"]\n`);
    expect((await resolveHosts(dir, 'myreg.io:5000'))[0].url).toBe('http://10.0.0.1:8080/v2');
    await write('_default', `[host."http://127.0.0.9:1"]\n  capabilities = ["pull", "resolve"]\n`);
    const eps = await resolveHosts(dir, 'quay.io');
    expect(eps.map((e) => e.url)).toEqual(['http://127.0.0.9:1/v2', 'https://quay.io/v2']);
  });

  test('a broken hosts.toml is INVALID_ARGUMENT', async () => {
    await write('broken.io', 'server = ');
    await expect(resolveHosts(dir, 'broken.io')).rejects.toMatchObject({ code: 'invalid_argument' });
  });
});
