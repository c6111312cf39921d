// Test images built from this machine's files (no internet): tar layers made with tar-stream,
// an OCI image layout written here, pushed with skopeo to a local registry (registry.ts).
//   pushBusybox(reg, 'library/busybox', 'latest')   → manifest digest
//   pushImage(reg, 'x/y', 'tag', [layer…], {config}) → manifest digest
//   pushMultiArch(reg, 'x/y', 'tag')                 → index digest (amd64 + arm64)
// Options push Docker schema2 (`format: 'v2s2'`) instead of OCI.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp, readFileSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import * as tar from 'tar-stream';
import type { Registry } from './registry';

const execFileP = promisify(execFile);

export interface TarEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo';
  content?: Buffer | string;
  mode?: number;
  uid?: number;
  gid?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  mtime?: Date;
  pax?: Record<string, string>;
}

const EPOCH = new Date('2024-01-01T00:00:00Z');

/** An uncompressed tar archive of the entries, in order. */
export async function makeTar(entries: TarEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of pack as AsyncIterable<Buffer>) chunks.push(c);
  })();
  for (const e of entries) {
    const type = e.type ?? 'file';
    const content = e.content === undefined ? undefined : Buffer.from(e.content);
    await new Promise<void>((resolve, reject) => {
      const header: any = {
        name: e.name,
        type,
        mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644),
        uid: e.uid ?? 0,
        gid: e.gid ?? 0,
        mtime: e.mtime ?? EPOCH,
        linkname: e.linkname,
        devmajor: e.devmajor,
        devminor: e.devminor,
        pax: e.pax,
      };
      if (type === 'file') pack.entry({ ...header, size: content?.length ?? 0 }, content ?? Buffer.alloc(0), (err) => (err ? reject(err) : resolve()));
      else pack.entry(header, (err) => (err ? reject(err) : resolve()));
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

export interface Layer {
  blob: Buffer;
  mediaType: string;
  digest: string;
  diffId: string;
}

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export async function makeLayer(entries: TarEntry[] | Buffer, compression: 'gzip' | 'none' | 'zstd' = 'gzip'): Promise<Layer> {
  const raw = Buffer.isBuffer(entries) ? entries : await makeTar(entries);
  let blob = raw;
  let mediaType = 'application/vnd.oci.image.layer.v1.tar';
  if (compression === 'gzip') {
    blob = gzipSync(raw, { level: 1 });
    mediaType += '+gzip';
  } else if (compression === 'zstd') {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'podvisor-zstd-'));
    await fsp.writeFile(path.join(dir, 'l.tar'), raw);
    await execFileP('zstd', ['-q', '-3', path.join(dir, 'l.tar'), '-o', path.join(dir, 'l.tar.zst')]);
    blob = await fsp.readFile(path.join(dir, 'l.tar.zst'));
    await fsp.rm(dir, { recursive: true, force: true });
    mediaType += '+zstd';
  }
  return { blob, mediaType, digest: sha(blob), diffId: sha(raw) };
}

/** A small busybox rootfs from busybox-static: /bin/busybox, applet symlinks, passwd/group. */
export function busyboxEntries(extra: TarEntry[] = []): TarEntry[] {
  const bin = readFileSync('/bin/busybox');
  const applets = ['sh', 'ls', 'cat', 'echo', 'true', 'false', 'sleep', 'id', 'env', 'ps', 'mkdir', 'rm', 'touch', 'test', 'wc', 'head', 'hostname', 'mount', 'top'];
  return [
    { name: 'bin/', type: 'directory' },
    { name: 'bin/busybox', content: bin, mode: 0o755 },
    ...applets.map((a): TarEntry => ({ name: `bin/${a}`, type: 'symlink', linkname: 'busybox' })),
    { name: 'etc/', type: 'directory' },
    { name: 'etc/passwd', content: 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' },
    { name: 'etc/group', content: 'root:x:0:\nnogroup:x:65534:\n' },
    { name: 'root/', type: 'directory', mode: 0o700 },
    { name: 'tmp/', type: 'directory', mode: 0o1777 },
    { name: 'dev/', type: 'directory' },
    { name: 'proc/', type: 'directory' },
    { name: 'sys/', type: 'directory' },
    ...extra,
  ];
}

export interface ImageSpec {
  layers: Layer[];
  config?: Record<string, unknown>; // the `config` section (Env, Cmd, User…)
  architecture?: string;
}

function configBlob(spec: ImageSpec): Buffer {
  return Buffer.from(
    JSON.stringify({
      architecture: spec.architecture ?? 'amd64',
      os: 'linux',
      created: EPOCH.toISOString(),
      config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['sh'], ...spec.config },
      rootfs: { type: 'layers', diff_ids: spec.layers.map((l) => l.diffId) },
      history: spec.layers.map(() => ({ created: EPOCH.toISOString(), created_by: 'podvisor test' })),
    }),
  );
}

interface Desc {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { os: string; architecture: string };
  annotations?: Record<string, string>;
}

/** Writes an OCI image layout holding one image (or an index of several) under `tag`. */
export async function writeOciLayout(dir: string, tag: string, images: ImageSpec[], asIndex = images.length > 1): Promise<void> {
  const blobs = path.join(dir, 'blobs', 'sha256');
  await fsp.mkdir(blobs, { recursive: true });
  const put = async (b: Buffer) => {
    const d = sha(b);
    await fsp.writeFile(path.join(blobs, d.slice(7)), b);
    return d;
  };
  const manifests: Desc[] = [];
  for (const img of images) {
    const cfg = configBlob(img);
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: await put(cfg), size: cfg.length },
        layers: await Promise.all(img.layers.map(async (l) => ({ mediaType: l.mediaType, digest: await put(l.blob), size: l.blob.length }))),
      }),
    );
    manifests.push({
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: await put(manifest),
      size: manifest.length,
      platform: { os: 'linux', architecture: img.architecture ?? 'amd64' },
    });
  }
  let top: Desc = manifests[0];
  if (asIndex) {
    const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests }));
    top = { mediaType: 'application/vnd.oci.image.index.v1+json', digest: await put(index), size: index.length };
  }
  await fsp.writeFile(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await fsp.writeFile(
    path.join(dir, 'index.json'),
    JSON.stringify({ schemaVersion: 2, manifests: [{ ...top, platform: undefined, annotations: { 'org.opencontainers.image.ref.name': tag } }] }),
  );
}

export interface PushOptions {
  format?: 'oci' | 'v2s2';
  creds?: { username: string; password: string };
}

/** Pushes an OCI layout to `registry` as name:tag with skopeo; returns the pushed top digest. */
export async function pushLayout(layout: string, tag: string, registry: Pick<Registry, 'host' | 'creds'>, name: string, opts: PushOptions = {}): Promise<string> {
  const digestFile = path.join(layout, `.digest-${Date.now()}-${Math.random()}`);
  const creds = opts.creds ?? registry.creds;
  const args = ['copy', '--quiet', '--all', '--dest-tls-verify=false', '--digestfile', digestFile];
  if (opts.format === 'v2s2') args.push('--format', 'v2s2');
  if (creds) args.push('--dest-creds', `${creds.username}:${creds.password}`);
  args.push(`oci:${layout}:${tag}`, `docker://${registry.host}/${name}:${tag}`);
  try {
    await execFileP('skopeo', args, { env: { ...process.env, HOME: layout } });
  } catch (e: any) {
    throw new Error(`skopeo copy failed: ${e.stderr || e.message}`);
  }
  const digest = (await fsp.readFile(digestFile, 'utf8')).trim();
  await fsp.rm(digestFile, { force: true });
  return digest;
}

/** Builds and pushes an image; returns its manifest (or index) digest. */
export async function pushImage(registry: Pick<Registry, 'host' | 'creds'>, name: string, tag: string, images: ImageSpec | ImageSpec[], opts: PushOptions = {}): Promise<string> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'podvisor-oci-'));
  try {
    await writeOciLayout(dir, tag, Array.isArray(images) ? images : [images]);
    return await pushLayout(dir, tag, registry, name, opts);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

/** The busybox test image (one gzip layer, plus optional extra entries and config). */
export async function busyboxImage(extra: TarEntry[] = [], config: Record<string, unknown> = {}): Promise<ImageSpec> {
  return { layers: [await makeLayer(busyboxEntries(extra))], config };
}

export async function pushBusybox(registry: Pick<Registry, 'host' | 'creds'>, name = 'library/busybox', tag = 'latest', opts: PushOptions & { extra?: TarEntry[]; config?: Record<string, unknown> } = {}): Promise<string> {
  return pushImage(registry, name, tag, await busyboxImage(opts.extra, opts.config), opts);
}

/** An index with an amd64 busybox and an arm64 image that holds only /ARM64. */
export async function pushMultiArch(registry: Pick<Registry, 'host' | 'creds'>, name: string, tag: string, opts: PushOptions = {}): Promise<string> {
  const amd64 = await busyboxImage([{ name: 'AMD64', content: 'amd64\n' }]);
  const arm64: ImageSpec = { layers: [await makeLayer([{ name: 'ARM64', content: 'arm64\n' }])], architecture: 'arm64' };
  const dir = mkdtempSync(path.join(os.tmpdir(), 'podvisor-oci-'));
  try {
    await writeOciLayout(dir, tag, [arm64, amd64], true);
    return await pushLayout(dir, tag, registry, name, opts);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}
