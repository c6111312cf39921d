// Pod checkpoints on disk (CheckpointPod, RestorePod, and CheckpointContainer's archive): one
// directory holding checkpoint.json (the manifest below), checkpoint.json.sha256 (the
// manifest's digest), the backend's files (VM: vm.state, QEMU's migration stream of the whole
// VM) and the containers' CRI logs at checkpoint time (logs/<n>.log). Versioned; every file's
// size and sha256 are in the manifest and checked, with the manifest's own digest, before
// anything is restored, so a truncated, edited or foreign checkpoint is refused before a VM
// starts. The digests detect damage, not forgery: whoever may write the directory may rewrite
// both (a checkpoint is as trusted as the place it is kept). Documented for users in README
// ("Checkpoint and restore").
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { ContainerConfig, ImageSpec, PodSandboxConfig } from '../../cri-api/messages';
import { dataLoss, failedPrecondition } from '../util/errors';
import type { ContainerRecord, ImageMount } from './records';

export const CHECKPOINT_FORMAT = 'podvisor.dev/pod-checkpoint';
export const CHECKPOINT_VERSION = 1;
export const MANIFEST = 'checkpoint.json';
export const MANIFEST_DIGEST = 'checkpoint.json.sha256';
const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;
const MAX_CONTAINERS = 256;
const FILE_NAME = /^[A-Za-z0-9._-]{1,64}(\/[A-Za-z0-9._-]{1,64})?$/;

/** A container as checkpointed: its record's lasting parts, and the id its pod knows it by. */
export interface CheckpointedContainer {
  /** the id the pod knows it by (a restored pod's containers keep theirs) */
  podId: string;
  /** its host id when checkpointed */
  id: string;
  config: ContainerConfig;
  imageId: string;
  imageSpec: ImageSpec;
  imageRef: string;
  createdAt: string;
  startedAt: string;
  finishedAt: string;
  state: ContainerRecord['state'];
  exitCode: number;
  reason: string;
  message: string;
  pid: number;
  stopSignal: number;
  streams: ContainerRecord['streams'];
  imageVolumes: NonNullable<ContainerRecord['imageVolumes']>;
  deviceRules: NonNullable<ContainerRecord['deviceRules']>;
  user?: ContainerRecord['user'];
  /** its CRI log at checkpoint time (a file of this checkpoint), or null */
  log: string | null;
  /**
   * where its host paths were bound in the pod's share ("c/<id>"; the i-th at "<shareDir>/<i>"):
   * the restored pod binds its own there (absent in checkpoints without share mounts)
   */
  shareDir?: string;
  /** the container paths of those host-path mounts, in that order */
  shareMounts?: string[];
}

export interface PodCheckpoint {
  format: typeof CHECKPOINT_FORMAT;
  version: typeof CHECKPOINT_VERSION;
  createdAt: string;
  /** the backend that made it (only that backend restores it) */
  backend: string;
  /** what the restoring host must have the same of (PodBackend.checkpoint's `host`) */
  host: Record<string, string>;
  sandbox: {
    id: string;
    config: PodSandboxConfig;
    runtimeHandler: string;
    images: Record<string, ImageMount>;
    network: { interfaces: Array<{ addresses: string[] }> } | null;
    agentVersion: string;
    /** the backend's own (PodBackend.checkpoint's `state`) */
    state: Record<string, unknown>;
  };
  containers: CheckpointedContainer[];
  /** every file of the checkpoint but the manifest and its digest */
  files: Record<string, { size: number; sha256: string }>;
}

/**
 * The file's sha256, read through one reused 1 MiB buffer: a read stream's fresh 64 KiB chunk
 * per read (~1800 for a pod's memory file) stayed in the C heap after the checkpoint, +27 MB
 * of the daemon's resident set per two ~110 MB files hashed (bench/README, issue 15).
 */
export async function sha256File(file: string): Promise<string> {
  const h = crypto.createHash('sha256');
  const buf = Buffer.allocUnsafeSlow(1 << 20);
  const fh = await fsp.open(file, 'r');
  try {
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

/** Digests the listed files and writes the manifest, then its digest (last: a checkpoint without it is incomplete). */
export async function writeCheckpoint(dir: string, cp: Omit<PodCheckpoint, 'files'>, files: string[]): Promise<PodCheckpoint> {
  const digests: PodCheckpoint['files'] = {};
  for (const f of files) {
    const abs = path.join(dir, f);
    digests[f] = { size: (await fsp.stat(abs)).size, sha256: await sha256File(abs) };
  }
  const full: PodCheckpoint = { ...cp, files: digests };
  const text = JSON.stringify(full, null, 2);
  await fsp.writeFile(path.join(dir, MANIFEST), text, { mode: 0o600 });
  await fsp.writeFile(path.join(dir, MANIFEST_DIGEST), `${crypto.createHash('sha256').update(text).digest('hex')}\n`, { mode: 0o600 });
  return full;
}

/**
 * Reads and verifies a checkpoint directory: the manifest's digest, its format and version,
 * its shape, and every file's size and sha256. DATA_LOSS for a damaged checkpoint,
 * FAILED_PRECONDITION for one of another format or version.
 */
export async function readCheckpoint(dir: string): Promise<PodCheckpoint> {
  const manifest = path.join(dir, MANIFEST);
  let text: string;
  let digest: string;
  try {
    const st = await fsp.stat(manifest);
    if (!st.isFile() || st.size > MAX_MANIFEST_BYTES) throw new Error(`${MANIFEST} is not a file of at most ${MAX_MANIFEST_BYTES} bytes`);
    text = await fsp.readFile(manifest, 'utf8');
    digest = (await fsp.readFile(path.join(dir, MANIFEST_DIGEST), 'utf8')).trim();
  } catch (err) {
    throw failedPrecondition(`${dir} is no podvisor pod checkpoint: ${(err as Error).message}`);
  }
  if (crypto.createHash('sha256').update(text).digest('hex') !== digest) throw dataLoss(`checkpoint ${dir}: ${MANIFEST} does not match its digest (damaged or edited)`);
  let cp: PodCheckpoint;
  try {
    cp = JSON.parse(text);
  } catch {
    throw dataLoss(`checkpoint ${dir}: ${MANIFEST} is not JSON`);
  }
  if (cp?.format !== CHECKPOINT_FORMAT) throw failedPrecondition(`checkpoint ${dir}: format ${JSON.stringify(cp?.format)} is not ${CHECKPOINT_FORMAT}`);
  if (cp.version !== CHECKPOINT_VERSION) throw failedPrecondition(`checkpoint ${dir}: version ${JSON.stringify(cp.version)}; this podvisor reads version ${CHECKPOINT_VERSION}`);
  checkShape(cp, dir);
  for (const [f, want] of Object.entries(cp.files)) {
    const abs = path.join(dir, f);
    const st = await fsp.stat(abs).catch(() => undefined);
    if (!st?.isFile()) throw dataLoss(`checkpoint ${dir}: ${f} is missing`);
    if (st.size !== want.size) throw dataLoss(`checkpoint ${dir}: ${f} has ${st.size} bytes, the manifest says ${want.size}`);
    if ((await sha256File(abs)) !== want.sha256) throw dataLoss(`checkpoint ${dir}: ${f} does not match its sha256 (damaged)`);
  }
  return cp;
}

function checkShape(cp: PodCheckpoint, dir: string): void {
  const bad = (what: string) => failedPrecondition(`checkpoint ${dir}: ${what}`);
  const obj = (v: unknown) => !!v && typeof v === 'object' && !Array.isArray(v);
  if (typeof cp.backend !== 'string' || !obj(cp.host) || !obj(cp.sandbox) || !obj(cp.files) || !Array.isArray(cp.containers)) throw bad('the manifest is incomplete');
  if (Object.values(cp.host).some((v) => typeof v !== 'string')) throw bad('host inputs are not strings');
  const sb = cp.sandbox;
  if (!obj(sb.config) || !obj(sb.images) || !obj(sb.state) || typeof sb.runtimeHandler !== 'string') throw bad('the sandbox is incomplete');
  for (const [id, m] of Object.entries(sb.images)) {
    if (!/^sha256:[0-9a-f]{64}$/.test(id) || typeof m?.nodeName !== 'string' || typeof m?.target !== 'string') throw bad(`image mount ${JSON.stringify(id)} is malformed`);
  }
  if (sb.network !== null && (!obj(sb.network) || !Array.isArray(sb.network.interfaces) || sb.network.interfaces.length > 16)) throw bad('the network is malformed');
  for (const f of sb.network?.interfaces ?? []) {
    if (!Array.isArray(f?.addresses) || f.addresses.length > 64 || f.addresses.some((a) => typeof a !== 'string' || a.length > 64)) throw bad('an interface\'s addresses are malformed');
  }
  if (cp.containers.length > MAX_CONTAINERS) throw bad(`more than ${MAX_CONTAINERS} containers`);
  for (const f of Object.keys(cp.files)) {
    if (!FILE_NAME.test(f) || f.split('/').some((p) => p === '.' || p === '..')) throw bad(`file name ${JSON.stringify(f)} is not allowed`);
  }
  const states = ['CONTAINER_CREATED', 'CONTAINER_RUNNING', 'CONTAINER_EXITED', 'CONTAINER_UNKNOWN'];
  for (const c of cp.containers) {
    if (!obj(c) || typeof c.podId !== 'string' || !/^[0-9a-f]{64}$/.test(c.podId) || !obj(c.config) || typeof c.imageId !== 'string' || !states.includes(c.state)) throw bad('a container is malformed');
    if (!obj(c.streams) || !Array.isArray(c.imageVolumes) || !Array.isArray(c.deviceRules)) throw bad(`container ${c.podId} is malformed`);
    if (c.log !== null && !(c.log in cp.files)) throw bad(`container ${c.podId}'s log is not a file of the checkpoint`);
    if (c.shareDir !== undefined && (typeof c.shareDir !== 'string' || !/^c\/[0-9a-f]{64}$/.test(c.shareDir))) throw bad(`container ${c.podId}'s share directory is malformed`);
    const mounts = c.shareMounts;
    if (mounts !== undefined && (!Array.isArray(mounts) || mounts.length > 1024 || mounts.some((m) => typeof m !== 'string' || m.length > 4096))) throw bad(`container ${c.podId}'s share mounts are malformed`);
  }
}

/** The checkpoint directory CheckpointPod writes into: absolute, new or empty; made 0700. */
export async function outputDir(p: string | undefined): Promise<string> {
  if (!p || !path.isAbsolute(p) || p.includes('\0')) throw failedPrecondition(`output path ${JSON.stringify(p ?? '')} must be an absolute path`);
  const dir = path.resolve(p);
  const entries = await fsp.readdir(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw failedPrecondition(`output path ${dir}: ${err.message}`);
  });
  if (entries && entries.length) throw failedPrecondition(`output path ${dir} is not empty`);
  if (!entries) {
    await fsp.mkdir(dir, { mode: 0o700 }).catch((err: Error) => {
      throw failedPrecondition(`output path ${dir}: ${err.message}`);
    });
  }
  return dir;
}

/**
 * Whether `ref` (a CreateContainer image) names a checkpoint archive on this host: an absolute
 * path to a tar file (CheckpointContainer's, whose first member is container.json, or another
 * runtime's). Only its first header is read. kubelet's restore of one container asks this;
 * a VM pod's containers come back only with their whole pod (RestorePod).
 */
export async function checkpointArchive(ref: string): Promise<'podvisor' | 'tar' | undefined> {
  if (!path.isAbsolute(ref) || ref.includes('\0')) return undefined;
  let fh;
  try {
    fh = await fsp.open(ref, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    if (!(await fh.stat()).isFile()) return undefined;
    const h = Buffer.alloc(512);
    const { bytesRead } = await fh.read(h, 0, 512, 0);
    if (bytesRead < 512 || h.toString('latin1', 257, 262) !== 'ustar') return undefined;
    const name = h.toString('utf8', 0, 100).replace(/\0.*$/s, '');
    return name === 'container.json' ? 'podvisor' : 'tar';
  } catch {
    return undefined;
  } finally {
    await fh?.close();
  }
}
