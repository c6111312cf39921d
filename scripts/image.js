#!/usr/bin/env node
// Builds podvisor's OCI image from a release (scripts/release.sh), with no container tool and
// nothing fetched: an OCI image layout (oci-layout, index.json, blobs/) written here, pushed
// with any OCI client (`skopeo copy oci:DIR:<version> docker://REGISTRY/podvisor/podvisor:<version>`;
// `make image-push REGISTRY=…`). One image, `podvisor/podvisor:<version>`, serves every manifest
// in deploy/: its entrypoint is the release's CLI (the CSI plugins run `podvisor csi …`), and
// /installer/node-install.sh installs that same release onto a node (deploy/daemonset.yaml).
// Two layers:
//   base      busybox (static, from the build host's Debian package) with its applets in /bin:
//             the shell, nsenter and the tools install.sh uses; the C libraries the release's
//             Node and koffi link against (the build host's glibc), so the CLI runs in the image,
//             and librados/librbd with theirs, which the CSI controller loads (RBD images)
//   release   /release/podvisor-<version>/ (the release tree) and /installer/node-install.sh
// The trade-off: the base comes from the build host's packages rather than a pinned base image
// (none can be fetched here), so two build hosts may make different base layers; the release
// layer, made with a fixed mtime, owner and order, is the same for the same release.
// Usage: node scripts/image.js RELEASE_DIR OUT_DIR     (prints OUT_DIR:<version>)
'use strict';
const { execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const zlib = require('node:zlib');

const EPOCH = '2024-01-01T00:00:00Z';
/** Libraries the CLI loads with koffi (dlopen by soname), not linked: looked up where Debian puts them. */
const CEPH_LIBS = ['librados.so.2', 'librbd.so.1'];
const LIB_DIRS = ['/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu'];
const sha256 = (b) => `sha256:${crypto.createHash('sha256').update(b).digest('hex')}`;

function fail(msg) {
  process.stderr.write(`image: ${msg}\n`);
  process.exit(1);
}

/** A reproducible uncompressed tar of `dir`'s contents (GNU tar: sorted, root-owned, fixed mtime). */
function tarOf(dir) {
  return execFileSync('tar', ['-C', dir, '--sort=name', `--mtime=${EPOCH}`, '--owner=0', '--group=0', '--numeric-owner', '--format=posix',
    '--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime', '-cf', '-', '.'], { maxBuffer: 4 << 30 });
}

/** The shared libraries `files` load (ldd), with the dynamic loader, as absolute host paths. */
function sharedLibraries(files) {
  const libs = new Set();
  for (const f of files) {
    let out;
    try {
      out = execFileSync('ldd', [f], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    } catch {
      continue; // "not a dynamic executable": a static binary loads nothing
    }
    for (const line of out.split('\n')) {
      const m = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line);
      if (m) libs.add(m[1]);
    }
  }
  return [...libs].sort();
}

function baseLayer(stage, release, version) {
  const lib = path.join(release, 'lib', 'podvisor', version);
  const busybox = '/bin/busybox';
  if (!fs.existsSync(busybox) || sharedLibraries([busybox]).length) fail(`${busybox} is not a static busybox (apt-get install busybox-static)`);
  fs.mkdirSync(path.join(stage, 'bin'), { recursive: true });
  fs.copyFileSync(busybox, path.join(stage, 'bin', 'busybox'));
  fs.chmodSync(path.join(stage, 'bin', 'busybox'), 0o755);
  for (const applet of execFileSync(busybox, ['--list'], { encoding: 'utf8' }).split('\n').filter(Boolean)) {
    if (applet !== 'busybox') fs.symlinkSync('busybox', path.join(stage, 'bin', applet));
  }
  const natives = [path.join(lib, 'node'), ...execFileSync('find', [path.join(lib, 'node_modules'), '-name', '*.node'], { encoding: 'utf8' }).split('\n').filter(Boolean)];
  // what koffi dlopen()s at run time, which ldd of the natives cannot see: librados and librbd
  // for the CSI controller (RBD images; storage/ceph/), with everything they link against
  const ceph = CEPH_LIBS.map((name) => {
    const at = LIB_DIRS.map((d) => path.join(d, name)).find((f) => fs.existsSync(f));
    if (!at) fail(`${name} is not installed (apt-get install librados2 librbd1): the CSI controller needs it in the image`);
    return at;
  });
  for (const so of new Set([...ceph, ...sharedLibraries([...natives, ...ceph])])) {
    const to = path.join(stage, so);
    fs.mkdirSync(path.dirname(to), { recursive: true });
    fs.copyFileSync(fs.realpathSync(so), to);
  }
  // at the paths ldd names (/lib64/ld-linux-x86-64.so.2 is the loader the ELF files ask for)
  fs.mkdirSync(path.join(stage, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(stage, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  fs.writeFileSync(path.join(stage, 'etc', 'group'), 'root:x:0:\n');
  for (const d of ['tmp', 'root', 'host', 'proc', 'sys', 'dev']) fs.mkdirSync(path.join(stage, d), { recursive: true, mode: d === 'tmp' ? 0o1777 : 0o755 });
  fs.chmodSync(path.join(stage, 'tmp'), 0o1777);
}

function releaseLayer(stage, release, version) {
  fs.mkdirSync(path.join(stage, 'release'), { recursive: true });
  execFileSync('cp', ['-a', release, path.join(stage, 'release', `podvisor-${version}`)]);
  fs.mkdirSync(path.join(stage, 'installer'));
  fs.copyFileSync(path.join(__dirname, 'node-install.sh'), path.join(stage, 'installer', 'node-install.sh'));
  fs.chmodSync(path.join(stage, 'installer', 'node-install.sh'), 0o755);
}

function main() {
  const [release, out] = process.argv.slice(2);
  if (!release || !out) fail('usage: node scripts/image.js RELEASE_DIR OUT_DIR');
  const versions = fs.readdirSync(path.join(release, 'lib', 'podvisor')).filter((v) => v !== 'current');
  if (versions.length !== 1) fail(`${release} is not a release directory (lib/podvisor/<version>)`);
  const version = versions[0];
  const meta = JSON.parse(fs.readFileSync(path.join(release, 'lib', 'podvisor', version, 'release.json'), 'utf8'));

  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-image-'));
  try {
    fs.rmSync(out, { recursive: true, force: true });
    const blobs = path.join(out, 'blobs', 'sha256');
    fs.mkdirSync(blobs, { recursive: true });
    const put = (b) => {
      const d = sha256(b);
      fs.writeFileSync(path.join(blobs, d.slice(7)), b);
      return { digest: d, size: b.length };
    };
    const layers = [];
    for (const [name, make] of [['base', baseLayer], ['release', releaseLayer]]) {
      const stage = path.join(work, name);
      fs.mkdirSync(stage);
      make(stage, release, version);
      const raw = tarOf(stage);
      const gz = zlib.gzipSync(raw, { level: 6 });
      layers.push({ diffId: sha256(raw), desc: { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...put(gz) }, name });
    }
    const labels = {
      'org.opencontainers.image.title': 'podvisor',
      'org.opencontainers.image.version': version,
      'org.opencontainers.image.revision': meta.commit,
      'org.opencontainers.image.description': 'podvisor release (entrypoint: the podvisor CLI) and its node installer (/installer/node-install.sh)',
    };
    const config = Buffer.from(JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      created: EPOCH,
      config: {
        Entrypoint: [`/release/podvisor-${version}/bin/podvisor`],
        Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
        WorkingDir: '/',
        Labels: labels,
      },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
      history: layers.map((l) => ({ created: EPOCH, created_by: `podvisor scripts/image.js: ${l.name} layer` })),
    }));
    const manifest = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...put(config) },
      layers: layers.map((l) => l.desc),
      annotations: labels,
    }));
    const top = { mediaType: 'application/vnd.oci.image.manifest.v1+json', ...put(manifest), platform: { architecture: 'amd64', os: 'linux' } };
    fs.writeFileSync(path.join(out, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    fs.writeFileSync(path.join(out, 'index.json'), JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [{ ...top, annotations: { 'org.opencontainers.image.ref.name': version } }],
    }));
    process.stdout.write(`${out}:${version}\n`);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main();
