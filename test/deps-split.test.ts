// `make serve` installs what the daemon needs and nothing else: no test server (Ceph, NFS,
// rpcbind, a registry …) and no service left enabled. The package set is the one apt's own
// resolver picks for a bare machine (an empty dpkg status), and the units those packages'
// maintainer scripts enable are enabled and then disabled by scripts/install-deps.sh in a
// DPKG_ROOT, as they would be on a fresh host.

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { execFileSync, spawnSync } from 'child_process';

const SCRIPT = path.join(__dirname, '..', 'scripts', 'install-deps.sh');
const list = (profile: string) => execFileSync('bash', [SCRIPT, '--list', profile], { encoding: 'utf8' }).split('\n').filter(Boolean);

/** The packages `apt-get install --no-install-recommends pkgs` installs on a machine with none. */
function freshClosure(pkgs: string[]): Set<string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-deps-'));
  try {
    fs.writeFileSync(path.join(dir, 'status'), '');
    const r = spawnSync('apt-get', ['install', '-s', '--no-install-recommends', '-o', `Dir::State::status=${dir}/status`,
      '-o', 'Debug::NoLocking=1', ...pkgs], { encoding: 'utf8', maxBuffer: 64 << 20, timeout: 240_000 });
    if (r.status !== 0) throw new Error(`apt-get -s failed (${r.status}): ${r.stderr || r.stdout}`);
    return new Set([...r.stdout.matchAll(/^Inst (\S+)/gm)].map((m) => m[1]));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Units a package's postinst enables with deb-systemd-helper on first install. */
function enabledByPostinst(pkg: string): string[] {
  for (const f of [`/var/lib/dpkg/info/${pkg}.postinst`, `/var/lib/dpkg/info/${pkg}:amd64.postinst`]) {
    if (fs.existsSync(f)) return [...fs.readFileSync(f, 'utf8').matchAll(/deb-systemd-helper enable '([^']+)'/g)].map((m) => m[1]);
  }
  return [];
}

// Packages that run a server the tests start themselves (or that nothing in podvisor needs).
const SERVERS = ['ceph-mon', 'ceph-osd', 'ceph-mgr', 'ceph-mds', 'ceph-base', 'nfs-ganesha', 'nfs-kernel-server',
  'rpcbind', 'docker-registry', 'skopeo', 'apache2-utils', 'containerd', 'docker.io'];

describe('install-deps.sh: serve installs no test server and enables no service', () => {
  const serve = list('serve');
  const testProfile = list('test');
  let serveClosure: Set<string>;

  beforeAll(() => {
    serveClosure = freshClosure(serve);
  }, 300_000);

  test('the test profile is the serve profile plus the test servers', () => {
    expect(testProfile.slice(0, serve.length)).toEqual(serve);
    for (const s of ['ceph-mon', 'ceph-osd', 'nfs-ganesha', 'rpcbind', 'docker-registry', 'skopeo']) {
      expect(testProfile).toContain(s);
      expect(serve).not.toContain(s);
    }
  });

  test('a bare machine gets the daemon\'s packages and no server from make serve', () => {
    for (const p of serve) expect(serveClosure.has(p)).toBe(true);
    expect(SERVERS.filter((s) => serveClosure.has(s))).toEqual([]);
  });

  test('the same resolver does see the servers in the test profile (the check can fail)', () => {
    const testOnly = freshClosure(testProfile.filter((p) => !serve.includes(p)));
    expect(SERVERS.filter((s) => testOnly.has(s))).toEqual(expect.arrayContaining(['ceph-mon', 'ceph-osd', 'nfs-ganesha', 'rpcbind', 'docker-registry']));
  }, 300_000);

  test('units that the serve packages enable on install are disabled again, and stay so on upgrade', () => {
    const enabling = [...serveClosure].map((p) => ({ p, units: enabledByPostinst(p) })).filter((e) => e.units.length);
    // containernetworking-plugins enables cni-dhcp: there is something to disable.
    expect(enabling.map((e) => e.p)).toContain('containernetworking-plugins');
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-dpkgroot-'));
    try {
      const env = { ...process.env, DPKG_ROOT: root };
      for (const { p } of enabling) {
        // The package's unit files, where a fresh install puts them.
        const files = execFileSync('dpkg-query', ['-L', p], { encoding: 'utf8' }).split('\n')
          .filter((f) => /^\/(usr\/)?lib\/systemd\/system\/[^/]+$/.test(f) && fs.statSync(f, { throwIfNoEntry: false })?.isFile());
        for (const f of files) {
          fs.mkdirSync(path.join(root, path.dirname(f)), { recursive: true });
          fs.copyFileSync(f, path.join(root, f));
        }
      }
      const enabledLinks = () => {
        const etc = path.join(root, 'etc', 'systemd', 'system');
        if (!fs.existsSync(etc)) return [];
        return fs.readdirSync(etc, { recursive: true, withFileTypes: true }).filter((d) => d.isSymbolicLink()).map((d) => d.name);
      };
      // What the packages' postinsts do on first install.
      for (const { p, units } of enabling) {
        for (const u of units) execFileSync('deb-systemd-helper', ['enable', u], { env: { ...env, DPKG_MAINTSCRIPT_PACKAGE: p } });
      }
      expect(enabledLinks()).toEqual(expect.arrayContaining(['cni-dhcp.socket']));
      execFileSync('bash', [SCRIPT, 'disable-units', ...enabling.map((e) => e.p)], { env });
      expect(enabledLinks()).toEqual([]);
      // An upgrade's postinst asks was-enabled before enabling again: it must say no.
      for (const { p, units } of enabling) {
        for (const u of units) {
          const r = spawnSync('deb-systemd-helper', ['--quiet', 'was-enabled', u], { env: { ...env, DPKG_MAINTSCRIPT_PACKAGE: p } });
          expect({ u, status: r.status }).toEqual({ u, status: 1 });
        }
      }
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
});
