// Mount planning for a new container: turns CRI mounts and devices into what the pod shows the
// container (OCI mounts and device nodes), attaching what each needs on the way: an image
// volume is the image's mount in the pod, a volume descriptor or block device becomes a volume
// of the pod (a VM disk or a guest NFS mount, storage/), a memory-backed emptyDir a tmpfs of the
// pod's own memory (memory-volume.ts) when the pod can make one, anything else a host path
// bound into the pod. What it attached is recorded in `made` as it goes, so the caller can undo it all when
// a later step fails. Checks on the request itself (paths, permissions) come first, in check().
import type { ContainerConfig, Device, Mount } from '../../cri-api/messages';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { failedPrecondition, invalidArgument, notFound } from '../util/errors';
import type { AttachResult, VolumeManager } from '../../storage/volume-manager';
import { memoryVolume } from './memory-volume';
import { GuestDevice, GuestMount } from './oci-spec';
import type { Pod } from './pod-backend';

/** What an image volume needs: the image present, the mount read-only, a clean sub path. */
export interface ImageRef {
  id: string;
  erofsPath: string;
}

export interface CheckedMounts<I extends ImageRef> {
  imageVolumes: Array<{ containerPath: string; image: I; subPath: string }>;
  devices: Array<{ containerPath: string; hostPath: string; permissions: string }>;
}

/** Checks mounts and devices of a CreateContainer request before anything is attached. */
export function checkMounts<I extends ImageRef>(config: ContainerConfig, resolveImage: (ref: string) => I | undefined): CheckedMounts<I> {
  const imageVolumes: CheckedMounts<I>['imageVolumes'] = [];
  for (const m of config.mounts ?? []) {
    if (!m.container_path || !path.isAbsolute(m.container_path)) throw invalidArgument(`mount container_path ${JSON.stringify(m.container_path)} must be absolute`);
    if (m.image?.image) {
      imageVolumes.push({ containerPath: m.container_path, ...imageVolume(m, resolveImage(m.image.image)) });
      continue;
    }
    if (!m.host_path || !path.isAbsolute(m.host_path)) throw invalidArgument(`mount host_path ${JSON.stringify(m.host_path)} must be absolute`);
    // CRI: a recursive read-only mount must be read-only and private (a mount that propagates
    // cannot stay read-only all the way down); containerd refuses the same.
    if (m.recursive_read_only && !m.readonly) throw invalidArgument(`mount ${m.container_path}: recursive_read_only needs readonly`);
    if (m.recursive_read_only && m.propagation && m.propagation !== 'PROPAGATION_PRIVATE') {
      throw invalidArgument(`mount ${m.container_path}: recursive_read_only needs PROPAGATION_PRIVATE, got ${m.propagation}`);
    }
  }
  return { imageVolumes, devices: checkDevices(config.devices) };
}

export interface PlanDeps {
  pod: Pod;
  /** metadata.uid of the pod: tells its own memory-backed emptyDir volumes from others' */
  podUid: string;
  volumes: VolumeManager;
  /** the image's mount in the pod (made once per pod: SandboxManager.ensureImage) */
  ensureImage(image: ImageRef): Promise<string>;
  /** the CRI call's deadline (ms since the epoch): it bounds the guest's volume mounts */
  deadline?: number;
}

/** What planning attached, for the record and for undoing it. */
export interface Made {
  /** volume keys (VolumeManager.release) */
  volumes: string[];
  /** the directory under which host paths were bound for this container (Pod.unbindHostPaths) */
  hostPathDir: string;
}

/** Plans every mount and device; attaches what they need, noting it in `made`. */
export async function planMounts(
  deps: PlanDeps, config: ContainerConfig, checked: CheckedMounts<ImageRef>, made: Made,
): Promise<{ mounts: GuestMount[]; devices: GuestDevice[] }> {
  const { pod } = deps;
  const mounts: GuestMount[] = [];
  const guestDevices: GuestDevice[] = [];
  let i = 0;
  for (const m of config.mounts ?? []) {
    const containerPath = m.container_path ?? '';
    const hostPath = m.host_path ?? '';
    if (m.image?.image) {
      // an image volume: a bind out of the image's erofs, mounted in the pod once for all
      // its containers (the agent checks the sub path: present, no symlink on the way)
      const v = checked.imageVolumes.find((x) => x.containerPath === containerPath)!;
      const target = await deps.ensureImage(v.image);
      mounts.push({ destination: containerPath, source: v.subPath ? path.posix.join(target, v.subPath) : target, readonly: true });
      continue;
    }
    // A volume descriptor or block device goes to the pod as a volume (VM: a disk or NFS mount);
    // everything else reaches it as a bound host path.
    const volume = await deps.volumes.classify(hostPath);
    if (volume && pod.hostView) {
      // a pod on the host: a block device is given as the host's own node; a podvisor volume
      // descriptor exists to hand storage to a guest, so it is refused, naming the volume
      if (!volume.raw) {
        throw failedPrecondition(`mount ${containerPath}: ${hostPath} is a podvisor ${volume.descriptor.kind} volume (${volume.key}), which only a pod VM can attach; a host pod takes host paths and raw block devices`);
      }
      guestDevices.push(await hostDevice(hostPath, containerPath, m.readonly ? 'r' : 'rw', mounts));
      continue;
    }
    if (volume) {
      if (!pod.volumes) throw failedPrecondition(`${hostPath}: this kind of pod takes no volume descriptors or block devices`);
      const att = await deps.volumes.attach(pod.volumes, volume, !!m.readonly, { deadline: deps.deadline });
      made.volumes.push(att.key);
      if (att.raw) {
        // a block device as host_path: the container gets the device node at
        // container_path, read-only unless the mount is writable
        guestDevices.push(await rawGuestDevice(hostPath, containerPath, att, m.readonly ? 'r' : 'rw', mounts));
        continue;
      }
      mounts.push({ destination: containerPath, source: att.guestPath, readonly: !!m.readonly || att.bindReadonly || att.readonly, propagation: propagation(m.propagation) });
      continue;
    }
    // A memory-backed emptyDir (kubelet's tmpfs for this pod): a tmpfs of the pod of that size,
    // shared by its containers; the host's stays empty.
    const mem = pod.memoryVolume ? await memoryVolume(hostPath, deps.podUid) : undefined;
    if (mem) {
      const root = await pod.memoryVolume!(mem);
      mounts.push({ destination: containerPath, source: mem.subPath ? path.posix.join(root, mem.subPath) : root, readonly: !!m.readonly, propagation: propagation(m.propagation) });
      continue;
    }
    await fsp.mkdir(hostPath, { recursive: true }).catch(() => undefined); // as containerd: a missing host path becomes a directory
    // read-only is enforced on the host bind (top mount only, so submounts keep their
    // own mode as CRI's non-recursive read-only asks); recursive_read_only also in the pod
    const source = await pod.bindHostPath(hostPath, `${made.hostPathDir}/${i++}`, !!m.readonly);
    // a pod on the host binds the path itself: the container's mount is the read-only one
    // (non-recursive, as CRI's readonly asks; recursive_read_only makes it recursive)
    const readonly = pod.hostView ? !!m.readonly || !!m.recursive_read_only : !!m.recursive_read_only;
    mounts.push({ destination: containerPath, source, readonly, recursive: pod.hostView && !!m.recursive_read_only, propagation: propagation(m.propagation) });
  }
  // LinuxContainerConfig devices: host block devices, each a volume of the pod (VM: a SCSI
  // disk attached once per pod) whose node the container gets at container_path
  for (const dev of checked.devices) {
    if (pod.hostView) {
      guestDevices.push(await hostDevice(dev.hostPath, dev.containerPath, dev.permissions, mounts));
      continue;
    }
    if (!pod.volumes) throw failedPrecondition(`device ${dev.hostPath}: this kind of pod takes no block devices`);
    const source = await deps.volumes.rawDevice(dev.hostPath);
    const att = await deps.volumes.attach(pod.volumes, source, !dev.permissions.includes('w'), { deadline: deps.deadline });
    made.volumes.push(att.key);
    guestDevices.push(await rawGuestDevice(dev.hostPath, dev.containerPath, att, dev.permissions, mounts));
  }
  return { mounts, devices: guestDevices };
}

/**
 * The host paths planMounts binds into a VM pod's share for `config`, in its order: the i-th is
 * bound at `<hostPathDir>/<i>`. A restored pod binds its own host paths there, where its
 * guest's container mounts point (runtime/checkpoints.ts); so this must classify mounts as
 * planMounts does for a VM pod. Volumes are no host binds and no restored pod takes them:
 * refused, naming the mount.
 */
export async function hostPathBinds(config: ContainerConfig, podUid: string, volumes: Pick<VolumeManager, 'classify'>): Promise<Array<{ containerPath: string; hostPath: string; readonly: boolean }>> {
  const out: Array<{ containerPath: string; hostPath: string; readonly: boolean }> = [];
  for (const m of config.mounts ?? []) {
    if (m.image?.image) continue;
    const hostPath = m.host_path ?? '';
    if (!path.isAbsolute(hostPath)) throw invalidArgument(`mount host_path ${JSON.stringify(m.host_path)} must be absolute`);
    if (await volumes.classify(hostPath)) throw failedPrecondition(`mount ${m.container_path}: ${hostPath} is a volume or block device, which a restored pod cannot take`);
    if (await memoryVolume(hostPath, podUid)) continue;
    out.push({ containerPath: m.container_path ?? '', hostPath, readonly: !!m.readonly });
  }
  return out;
}

/**
 * A CRI image volume (Mount.image): the image must be present (kubelet pulls it first) and the
 * mount read-only (an image is never written); the sub path is relative and normalized.
 */
function imageVolume<I>(m: Mount, image: I | undefined): { image: I; subPath: string } {
  if (!image) throw notFound(`image volume ${JSON.stringify(m.image?.image)} at ${m.container_path}: image not found, pull it first`);
  if (!m.readonly) throw invalidArgument(`image volume at ${m.container_path} must be read-only`);
  const sub: string = m.image_sub_path ?? '';
  if (sub) {
    const parts = sub.split('/');
    if (sub.length > 4096 || sub.includes('\0') || path.posix.isAbsolute(sub) || parts.some((p) => p === '..' || p === '.' || p === '')) {
      throw invalidArgument(`image volume sub path ${JSON.stringify(sub)} must be relative and normalized`);
    }
  }
  return { image, subPath: sub };
}

/** CRI Device entries, checked before anything is attached. */
export function checkDevices(devices: Device[] | null | undefined): Array<{ containerPath: string; hostPath: string; permissions: string }> {
  const seen = new Set<string>();
  return (devices ?? []).map((d) => {
    const containerPath = String(d?.container_path ?? '');
    const hostPath = String(d?.host_path ?? '');
    if (!path.isAbsolute(containerPath) || path.posix.normalize(containerPath) !== containerPath || containerPath === '/') {
      throw invalidArgument(`device container_path ${JSON.stringify(d?.container_path)} must be an absolute, normalised path`);
    }
    if (!path.isAbsolute(hostPath)) throw invalidArgument(`device host_path ${JSON.stringify(d?.host_path)} must be absolute`);
    // kubelet sends "rwm"; an empty string means the default, as in containerd
    const permissions = String(d?.permissions ?? '') || 'rwm';
    if (!/^[rwm]{1,3}$/.test(permissions) || new Set(permissions).size !== permissions.length) {
      throw invalidArgument(`device ${hostPath}: permissions ${JSON.stringify(d?.permissions)} must be made of r, w and m`);
    }
    if (!permissions.includes('r') && !permissions.includes('w')) throw invalidArgument(`device ${hostPath}: permissions ${JSON.stringify(permissions)} give neither read nor write access`);
    if (seen.has(containerPath)) throw invalidArgument(`two devices at ${containerPath}`);
    seen.add(containerPath);
    return { containerPath, hostPath, permissions };
  });
}

/**
 * The container's view of a raw device attached to the pod: a device node made by
 * libcontainer when containerPath is under /dev (OCI linux.devices), else the guest's own node
 * bind-mounted there (added to `mounts`). Mode and owner come from the host's node, as
 * containerd does; `access` goes into the device cgroup rule.
 */
async function rawGuestDevice(hostPath: string, containerPath: string, att: AttachResult, access: string, mounts: GuestMount[]): Promise<GuestDevice> {
  if (!att.guestDevice) throw failedPrecondition(`${hostPath}: the guest did not report the device numbers of ${att.guestPath}`);
  const st = await fsp.stat(hostPath);
  const node = containerPath.startsWith('/dev/');
  if (!node) mounts.push({ destination: containerPath, source: att.guestPath, readonly: !access.includes('w') });
  return { containerPath, major: att.guestDevice.major, minor: att.guestDevice.minor, access, fileMode: st.mode & 0o777, uid: st.uid, gid: st.gid, node };
}

/**
 * A host device given to a container of a pod on the host: the node itself (under /dev: made by
 * the runtime from its numbers; elsewhere the host's node bound there), block or character.
 */
async function hostDevice(hostPath: string, containerPath: string, access: string, mounts: GuestMount[]): Promise<GuestDevice> {
  let st;
  try {
    st = await fsp.stat(hostPath, { bigint: true });
  } catch {
    throw notFound(`device ${hostPath} does not exist`);
  }
  if (!st.isBlockDevice() && !st.isCharacterDevice()) throw invalidArgument(`${hostPath} is not a device`);
  const rdev = st.rdev;
  // glibc's dev_t layout: major in bits 8-19 and 44-63, minor in bits 0-7 and 20-43
  const major = Number(((rdev & 0xfff00n) >> 8n) | ((rdev & 0xfffff00000000000n) >> 32n));
  const minor = Number((rdev & 0xffn) | ((rdev & 0xffffff00000n) >> 12n));
  const node = containerPath.startsWith('/dev/');
  if (!node) mounts.push({ destination: containerPath, source: hostPath, readonly: !access.includes('w') });
  return { containerPath, major, minor, access, fileMode: Number(st.mode & 0o777n), uid: Number(st.uid), gid: Number(st.gid), node, type: st.isCharacterDevice() ? 'c' : 'b' };
}

function propagation(p: Mount['propagation']): string | undefined {
  if (p === 'PROPAGATION_HOST_TO_CONTAINER') return 'rslave';
  if (p === 'PROPAGATION_BIDIRECTIONAL') return 'rshared';
  return 'rprivate';
}
