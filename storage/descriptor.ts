// Volume descriptors: a versioned JSON file (`podvisor-volume.json`) placed in a directory that
// tells podvisor "attach this volume to the pod's VM" instead of sharing the directory over 9p.
// Format: storage/README.md. Parsing is strict (unknown fields, odd strings and inline keys are
// refused) because the descriptor decides what QEMU opens and what the guest mounts.
//
// Trust: a pod that can write into some host directory (a rw hostPath, an emptyDir) could drop a
// descriptor there and have a later container attach an arbitrary host device. So descriptors
// are sealed: an HMAC-SHA256 over the canonical descriptor and its directory, keyed by a
// root-only host secret (`seal key`). `podvisor volume add` and the CSI plugin seal what they
// write; classify() refuses unsealed or mis-sealed descriptors unless sealing is switched off.
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { invalid, notFound, precondition, StorageError } from './errors';
import { status } from '@grpc/grpc-js';

export const DESCRIPTOR_FILE = 'podvisor-volume.json';
export const DESCRIPTOR_VERSION = 1;
const MAX_DESCRIPTOR_BYTES = 64 * 1024;

export const FS_TYPES = ['ext4', 'ext3', 'ext2', 'xfs', 'btrfs', 'vfat', 'erofs', 'squashfs', 'auto'] as const;
export const FORMATTABLE = ['ext4', 'ext3', 'ext2', 'xfs', 'btrfs', 'vfat'] as const;
export const NFS_VERSIONS = ['4.1', '4.2', '4', '3'] as const;
export type FsType = (typeof FS_TYPES)[number];
export type NfsVersion = (typeof NFS_VERSIONS)[number];

/** Where an RBD client key comes from. Never the key itself. */
export type SecretRef =
  /** a root-only (0600/0400, owner root) file holding the bare base64 key or a ceph keyring */
  | { keyFile: string }
  /** a root-only Kubernetes-Secret-style JSON file ({"data": {<field>: base64}} or stringData) */
  | { secretFile: string; field?: string };

export interface RbdSpec {
  /** "host", "host:port", "[v6addr]:port"; port defaults to 6789 (msgr v1) */
  monitors: string[];
  pool: string;
  namespace?: string;
  image: string;
  /** cephx user without the "client." prefix */
  user: string;
  secret: SecretRef;
}

export interface NfsSpec {
  server: string;
  export: string;
  version: NfsVersion;
}

interface Common {
  version: 1;
  fsType: string;
  mountOptions: string[];
  readOnly: boolean;
  /** allowed to mkfs the device (with fsType) when it carries no filesystem */
  format: boolean;
  metadata: Record<string, string>;
}

export type VolumeDescriptor =
  | (Common & { kind: 'block'; block: { device: string } })
  | (Common & { kind: 'rbd'; rbd: RbdSpec })
  | (Common & { kind: 'nfs'; nfs: NfsSpec });

export type VolumeKind = VolumeDescriptor['kind'];

/** What a descriptor file holds: the descriptor plus, when sealed, `seal`. */
export type DescriptorInput = Partial<Omit<Common, 'version'>> & { version: number; kind: string; seal?: string; [k: string]: unknown };

const fail = (field: string, msg: string): never => {
  throw invalid(`volume descriptor: ${field}: ${msg}`);
};

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function onlyKeys(obj: Record<string, unknown>, allowed: string[], where: string): void {
  for (const k of Object.keys(obj)) {
    if (allowed.includes(k)) continue;
    if (/^(key|keyring|userKey|adminKey|password|secretData)$/i.test(k)) {
      fail(`${where}${k}`, 'keys and secrets must never be inline; reference a root-only key file with rbd.secret');
    }
    fail(`${where}${k}`, `unknown field (allowed: ${allowed.join(', ')})`);
  }
}

function str(v: unknown, field: string, re: RegExp, max: number, hint: string): string {
  if (typeof v !== 'string') return fail(field, 'must be a string');
  if (v.length === 0 || v.length > max) return fail(field, `must be 1..${max} characters`);
  if (!re.test(v)) return fail(field, `invalid value ${JSON.stringify(v)} (${hint})`);
  return v;
}

/** An absolute, normalised path without control characters, commas or `..`. */
function absPath(v: unknown, field: string, max = 1024): string {
  const s = str(v, field, /^\/[^\x00-\x1f\x7f,]*$/, max, 'absolute path without control characters or commas');
  if (path.posix.normalize(s) !== s || s.split('/').includes('..') || (s.length > 1 && s.endsWith('/'))) {
    fail(field, `path ${JSON.stringify(s)} is not normalised`);
  }
  return s;
}

const DNS_NAME = /^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

/** IPv4, IPv6 (bare or in brackets) or an RFC 1123 host name. */
export function validHost(h: string): boolean {
  if (h.startsWith('[') && h.endsWith(']')) return net.isIPv6(h.slice(1, -1));
  if (net.isIP(h)) return true;
  if (/^[\d.]+$/.test(h)) return false; // looks like an address but is not one
  return DNS_NAME.test(h);
}

export function parseMonitor(m: string, field: string): { host: string; port: number } {
  if (typeof m !== 'string' || m.length === 0 || m.length > 300) return fail(field, 'must be a non-empty "host[:port]" string');
  let s = m.replace(/^v1:/, '');
  if (s.startsWith('v2:')) fail(field, 'msgr v2 addresses are not supported by QEMU\'s server list; give the v1 address (port 6789)');
  let host: string;
  let portStr: string | undefined;
  const br = /^\[([^\]]+)\](?::(\d+))?$/.exec(s);
  if (br) {
    host = br[1];
    portStr = br[2];
    if (!net.isIPv6(host)) fail(field, `invalid IPv6 address ${JSON.stringify(host)}`);
  } else if (net.isIPv6(s)) {
    host = s;
  } else {
    const i = s.lastIndexOf(':');
    if (i >= 0) {
      portStr = s.slice(i + 1);
      s = s.slice(0, i);
    }
    host = s;
    if (!validHost(host)) fail(field, `invalid monitor host ${JSON.stringify(host)}`);
  }
  let port = 6789;
  if (portStr !== undefined) {
    if (!/^\d{1,5}$/.test(portStr) || +portStr < 1 || +portStr > 65535) fail(field, `invalid port ${JSON.stringify(portStr)}`);
    port = +portStr;
  }
  return { host, port };
}

const MOUNT_OPTION = /^[A-Za-z0-9_][A-Za-z0-9_.:=+/@-]*$/;
const NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;

/** Validates a parsed descriptor and fills defaults. Throws INVALID_ARGUMENT naming the field. */
export function validateDescriptor(raw: unknown): VolumeDescriptor {
  if (!isObject(raw)) return fail('(root)', 'must be a JSON object');
  if (raw.version !== DESCRIPTOR_VERSION) {
    fail('version', `unsupported descriptor version ${JSON.stringify(raw.version)} (this podvisor reads ${DESCRIPTOR_VERSION})`);
  }
  const kind = raw.kind;
  if (kind !== 'block' && kind !== 'rbd' && kind !== 'nfs') return fail('kind', `must be "block", "rbd" or "nfs", not ${JSON.stringify(kind)}`);
  onlyKeys(raw, ['version', 'kind', kind, 'fsType', 'mountOptions', 'readOnly', 'format', 'metadata', 'seal'], '');

  const readOnlyRaw = raw.readOnly ?? false;
  if (typeof readOnlyRaw !== 'boolean') fail('readOnly', 'must be a boolean');
  const format = (raw.format ?? false) as boolean;
  if (typeof format !== 'boolean') fail('format', 'must be a boolean');

  const optsRaw = raw.mountOptions ?? [];
  if (!Array.isArray(optsRaw) || optsRaw.length > 32) fail('mountOptions', 'must be an array of at most 32 strings');
  const mountOptions = (optsRaw as unknown[]).map((o, i) => str(o, `mountOptions[${i}]`, MOUNT_OPTION, 256, 'one option per entry, no commas or spaces'));
  let readOnly = readOnlyRaw as boolean;
  if (mountOptions.includes('ro')) readOnly = true;
  if (readOnly && mountOptions.includes('rw')) fail('mountOptions', '"rw" contradicts readOnly');

  const metaRaw = raw.metadata ?? {};
  if (!isObject(metaRaw) || Object.keys(metaRaw).length > 32) fail('metadata', 'must be an object of at most 32 string values');
  const metadata: Record<string, string> = {};
  for (const [k, v] of Object.entries(metaRaw as Record<string, unknown>)) {
    str(k, 'metadata key', /^[A-Za-z0-9_./-]+$/, 128, 'letters, digits, _ . / -');
    metadata[k] = str(v, `metadata.${k}`, /^[^\x00-\x1f\x7f]*$/, 1024, 'printable text');
  }

  const spec = raw[kind];
  if (!isObject(spec)) return fail(kind, `kind "${kind}" needs a "${kind}" object`);

  if (kind === 'nfs') {
    if (raw.fsType !== undefined && raw.fsType !== 'nfs' && raw.fsType !== 'nfs4') fail('fsType', 'an NFS volume has no fsType (or "nfs")');
    if (format) fail('format', 'an NFS export cannot be formatted');
    onlyKeys(spec, ['server', 'export', 'version'], 'nfs.');
    const server = str(spec.server, 'nfs.server', /^[A-Za-z0-9.:[\]-]+$/, 255, 'IPv4, IPv6 or host name');
    if (!validHost(server)) fail('nfs.server', `invalid server ${JSON.stringify(server)} (IPv4, IPv6 or host name)`);
    const exp = absPath(spec.export, 'nfs.export');
    if (/\s/.test(exp)) fail('nfs.export', 'must not contain white space');
    const version = (spec.version ?? '4.1') as NfsVersion;
    if (!NFS_VERSIONS.includes(version)) fail('nfs.version', `must be one of ${NFS_VERSIONS.join(', ')} (a string), not ${JSON.stringify(spec.version)}`);
    for (const o of mountOptions) {
      if (/^(nfs)?vers=|^proto=|^(no)?lock$|^addr=|^clientaddr=/.test(o)) fail('mountOptions', `"${o}" is set by podvisor (use nfs.version)`);
    }
    return { version: 1, kind, nfs: { server: server.replace(/^\[(.*)\]$/, '$1'), export: exp, version }, fsType: 'nfs', mountOptions, readOnly, format: false, metadata };
  }

  const fsType = (raw.fsType ?? 'ext4') as string;
  if (typeof fsType !== 'string' || !(FS_TYPES as readonly string[]).includes(fsType)) fail('fsType', `must be one of ${FS_TYPES.join(', ')}`);
  if (format && !(FORMATTABLE as readonly string[]).includes(fsType)) fail('format', `cannot format as ${JSON.stringify(fsType)} (formattable: ${FORMATTABLE.join(', ')})`);
  if (format && readOnly) fail('format', 'a read-only volume cannot be formatted');

  if (kind === 'block') {
    onlyKeys(spec, ['device'], 'block.');
    const device = absPath(spec.device, 'block.device', 256);
    if (!device.startsWith('/dev/') || device === '/dev/') fail('block.device', 'must be a device path under /dev/');
    return { version: 1, kind, block: { device }, fsType, mountOptions, readOnly, format, metadata };
  }

  onlyKeys(spec, ['monitors', 'pool', 'namespace', 'image', 'user', 'secret'], 'rbd.');
  if (!Array.isArray(spec.monitors) || spec.monitors.length === 0 || spec.monitors.length > 16) {
    fail('rbd.monitors', 'must be a non-empty array (at most 16) of "host[:port]" strings');
  }
  const monitors = (spec.monitors as unknown[]).map((m, i) => {
    const { host, port } = parseMonitor(m as string, `rbd.monitors[${i}]`);
    return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
  });
  const pool = str(spec.pool, 'rbd.pool', NAME, 128, 'letters, digits, _ . -');
  const image = str(spec.image, 'rbd.image', NAME, 255, 'letters, digits, _ . -');
  const namespace = spec.namespace === undefined || spec.namespace === '' ? undefined : str(spec.namespace, 'rbd.namespace', NAME, 128, 'letters, digits, _ . -');
  const user = str(typeof spec.user === 'string' ? spec.user.replace(/^client\./, '') : spec.user, 'rbd.user', NAME, 64, 'cephx id without "client."');
  const sec = spec.secret;
  if (!isObject(sec)) return fail('rbd.secret', 'must be {"keyFile": path} or {"secretFile": path, "field": name}');
  let secret: SecretRef;
  if ('keyFile' in sec) {
    onlyKeys(sec, ['keyFile'], 'rbd.secret.');
    secret = { keyFile: absPath(sec.keyFile, 'rbd.secret.keyFile') };
  } else if ('secretFile' in sec) {
    onlyKeys(sec, ['secretFile', 'field'], 'rbd.secret.');
    secret = { secretFile: absPath(sec.secretFile, 'rbd.secret.secretFile') };
    if (sec.field !== undefined) secret.field = str(sec.field, 'rbd.secret.field', /^[A-Za-z0-9_.-]+$/, 253, 'a Secret data key');
  } else {
    onlyKeys(sec, [], 'rbd.secret.');
    return fail('rbd.secret', 'must be {"keyFile": path} or {"secretFile": path, "field": name}');
  }
  const rbd: RbdSpec = { monitors, pool, image, user, secret };
  if (namespace) rbd.namespace = namespace;
  return { version: 1, kind, rbd, fsType, mountOptions, readOnly, format, metadata };
}

export function parseDescriptor(text: string): VolumeDescriptor {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw invalid(`volume descriptor: not valid JSON: ${(err as Error).message}`);
  }
  return validateDescriptor(raw);
}

// ---- sealing ----

function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (isObject(v)) return `{${Object.keys(v).sort().filter((k) => v[k] !== undefined).map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(',')}}`;
  return JSON.stringify(v);
}

export function sealDescriptor(desc: VolumeDescriptor, dir: string, key: Buffer): string {
  return crypto.createHmac('sha256', key).update(`podvisor-volume-v1\0${path.resolve(dir)}\0${canonical(desc)}`).digest('hex');
}

/** Reads (creating on first use, 0600) the host's seal key. */
export async function loadSealKey(file: string, create = true): Promise<Buffer> {
  try {
    const st = await fsp.stat(file);
    if (st.uid !== 0 && process.getuid?.() === 0) throw precondition(`seal key ${file} must be owned by root`);
    if ((st.mode & 0o077) !== 0) throw precondition(`seal key ${file} must not be readable by group or others (mode ${(st.mode & 0o777).toString(8)})`);
    const key = await fsp.readFile(file);
    if (key.length < 32) throw precondition(`seal key ${file} is too short`);
    return key;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || !create) throw err;
    await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    try {
      await fsp.writeFile(file, crypto.randomBytes(32), { mode: 0o600, flag: 'wx' });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    return loadSealKey(file, false);
  }
}

// ---- files ----

export interface ReadOptions {
  /** when set, the descriptor must carry a valid seal made with this key */
  sealKey?: Buffer;
}

/**
 * Reads `dir/podvisor-volume.json`. Returns undefined when there is none; throws
 * INVALID_ARGUMENT for a malformed one, PERMISSION_DENIED for a bad seal.
 */
export async function readDescriptor(dir: string, opts: ReadOptions = {}): Promise<VolumeDescriptor | undefined> {
  const file = path.join(dir, DESCRIPTOR_FILE);
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    if (code === 'ELOOP') throw invalid(`volume descriptor ${file} is a symlink; refused`);
    throw err;
  }
  let text: string;
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw invalid(`volume descriptor ${file} is not a regular file`);
    if (st.size > MAX_DESCRIPTOR_BYTES) throw invalid(`volume descriptor ${file} is larger than ${MAX_DESCRIPTOR_BYTES} bytes`);
    const buf = Buffer.alloc(MAX_DESCRIPTOR_BYTES + 1);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    if (bytesRead > MAX_DESCRIPTOR_BYTES) throw invalid(`volume descriptor ${file} is larger than ${MAX_DESCRIPTOR_BYTES} bytes`);
    text = buf.subarray(0, bytesRead).toString('utf8');
  } finally {
    await fh.close();
  }
  let desc: VolumeDescriptor;
  let seal: unknown;
  try {
    const raw = JSON.parse(text);
    seal = isObject(raw) ? raw.seal : undefined;
    desc = validateDescriptor(raw);
  } catch (err) {
    if (err instanceof SyntaxError) throw invalid(`volume descriptor ${file}: not valid JSON: ${err.message}`);
    if (err instanceof StorageError) throw new StorageError(err.code, err.message.replace(/^volume descriptor:/, `volume descriptor ${file}:`));
    throw err;
  }
  if (opts.sealKey) {
    const want = sealDescriptor(desc, dir, opts.sealKey);
    if (typeof seal !== 'string' || seal.length !== want.length || !crypto.timingSafeEqual(Buffer.from(seal), Buffer.from(want))) {
      throw new StorageError('permission_denied',
        `volume descriptor ${file} is ${typeof seal === 'string' ? 'sealed with another key or for another directory' : 'not sealed'}; write it with \`podvisor volume add\` or the CSI plugin`);
    }
  }
  return desc;
}

/** Validates and writes a descriptor (mode 0644: it holds no secret) atomically into `dir`. */
export async function writeDescriptor(dir: string, raw: unknown, sealKey?: Buffer): Promise<VolumeDescriptor> {
  const desc = validateDescriptor(raw);
  const st = await fsp.stat(dir).catch(() => undefined);
  if (!st) throw notFound(`directory ${dir} does not exist`);
  if (!st.isDirectory()) throw invalid(`${dir} is not a directory`);
  const out: Record<string, unknown> = { ...desc };
  if (sealKey) out.seal = sealDescriptor(desc, dir, sealKey);
  const file = path.join(dir, DESCRIPTOR_FILE);
  const tmp = `${file}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`;
  await fsp.writeFile(tmp, JSON.stringify(out, null, 2) + '\n', { mode: 0o644, flag: 'wx' });
  try {
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
  return desc;
}

/** Removes the descriptor from `dir`; true when there was one. */
export async function removeDescriptor(dir: string): Promise<boolean> {
  try {
    await fsp.unlink(path.join(dir, DESCRIPTOR_FILE));
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

// ---- secrets ----

const CEPH_KEY = /^[A-Za-z0-9+/]{20,200}={0,2}$/;

async function readRootOnly(file: string, what: string): Promise<string> {
  let st: fs.Stats;
  try {
    st = await fsp.stat(file); // follows symlinks: Kubernetes secret volumes are symlink farms
  } catch (err) {
    throw notFound(`${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (!st.isFile()) throw invalid(`${what} ${file} is not a regular file`);
  if (st.size > 64 * 1024) throw invalid(`${what} ${file} is too large`);
  if (process.getuid?.() === 0 && st.uid !== 0) throw new StorageError('permission_denied', `${what} ${file} must be owned by root`);
  if ((st.mode & 0o077) !== 0) {
    throw new StorageError('permission_denied', `${what} ${file} must not be readable by group or others (mode ${(st.mode & 0o777).toString(8)}); chmod 600 it`);
  }
  return fsp.readFile(file, 'utf8');
}

/**
 * Resolves an RBD secret reference to the base64 cephx key. The key stays in memory: the caller
 * hands it to QEMU through a QMP secret object or to librados through rados_conf_set.
 */
export async function readRbdKey(ref: SecretRef, user: string): Promise<string> {
  let key: string | undefined;
  if ('keyFile' in ref) {
    const text = (await readRootOnly(ref.keyFile, 'key file')).trim();
    if (CEPH_KEY.test(text)) key = text;
    else {
      // a ceph keyring: [client.<user>] ... key = <base64>
      const section = new RegExp(`\\[client\\.${user.replace(/[.]/g, '\\.')}\\]([^[]*)`).exec(text)?.[1] ?? text;
      key = /^\s*key\s*=\s*(\S+)\s*$/m.exec(section)?.[1];
    }
    if (!key || !CEPH_KEY.test(key)) throw invalid(`key file ${ref.keyFile} holds neither a bare cephx key nor a keyring entry for client.${user}`);
  } else {
    const text = await readRootOnly(ref.secretFile, 'secret file');
    let obj: unknown;
    try {
      obj = JSON.parse(text);
    } catch {
      throw invalid(`secret file ${ref.secretFile} is not JSON (expected a Kubernetes Secret: {"data": {...}})`);
    }
    const field = ref.field ?? 'userKey';
    const o = isObject(obj) ? obj : {};
    const data = isObject(o.data) ? o.data : {};
    const stringData = isObject(o.stringData) ? o.stringData : {};
    if (typeof stringData[field] === 'string') key = (stringData[field] as string).trim();
    else if (typeof data[field] === 'string') key = Buffer.from(data[field] as string, 'base64').toString('utf8').trim();
    if (!key) throw invalid(`secret file ${ref.secretFile} has no "${field}" in data or stringData`);
    if (!CEPH_KEY.test(key)) throw invalid(`secret file ${ref.secretFile}: "${field}" is not a base64 cephx key`);
  }
  return key;
}
