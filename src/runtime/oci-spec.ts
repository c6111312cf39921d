// Builds the OCI runtime spec (config.json) of a container from its CRI config, the image
// config and the paths of its mounts, for one of two targets: a pod VM (guest paths; the pod's
// namespaces are those of the guest agent, /proc/1/ns/…; the agent only adjusts root.path and
// resolves a username) or the host (a host pod: the pod's pinned namespace files or the host's
// own, host paths as plain bind mounts, a cgroup under the pod's cgroup_parent, host device
// nodes). Every policy decision (caps, masks, namespaces, env, seccomp) is made here, once for
// both targets.
import type { ContainerConfig, KeyValue, LinuxContainerResources, LinuxContainerSecurityContext, NamespaceOption, PodSandboxConfig } from '../../cri-api/messages';

/** An OCI runtime spec namespace entry. */
interface OciNamespace {
  type: string;
  path?: string;
}
import { invalidArgument } from '../util/errors';
import type { DeviceRule } from './records';
import { seccompFor } from './seccomp';
import type { UserNsMapping } from './userns';

export const DEFAULT_CAPS = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_NET_RAW', 'CAP_SETGID',
  'CAP_SETUID', 'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE',
];

/** Every capability, in capability-number order (CAP_CHOWN = 0 … CAP_CHECKPOINT_RESTORE = 40). */
export const ALL_CAPS = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_DAC_READ_SEARCH', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_SETGID',
  'CAP_SETUID', 'CAP_SETPCAP', 'CAP_LINUX_IMMUTABLE', 'CAP_NET_BIND_SERVICE', 'CAP_NET_BROADCAST', 'CAP_NET_ADMIN',
  'CAP_NET_RAW', 'CAP_IPC_LOCK', 'CAP_IPC_OWNER', 'CAP_SYS_MODULE', 'CAP_SYS_RAWIO', 'CAP_SYS_CHROOT', 'CAP_SYS_PTRACE',
  'CAP_SYS_PACCT', 'CAP_SYS_ADMIN', 'CAP_SYS_BOOT', 'CAP_SYS_NICE', 'CAP_SYS_RESOURCE', 'CAP_SYS_TIME',
  'CAP_SYS_TTY_CONFIG', 'CAP_MKNOD', 'CAP_LEASE', 'CAP_AUDIT_WRITE', 'CAP_AUDIT_CONTROL', 'CAP_SETFCAP',
  'CAP_MAC_OVERRIDE', 'CAP_MAC_ADMIN', 'CAP_SYSLOG', 'CAP_WAKE_ALARM', 'CAP_BLOCK_SUSPEND', 'CAP_AUDIT_READ',
  'CAP_PERFMON', 'CAP_BPF', 'CAP_CHECKPOINT_RESTORE',
];

/** The capabilities set in a hex mask as /proc/<pid>/status shows them (ALL_CAPS is in bit order). */
export function capabilitiesIn(hexMask: string): string[] {
  const mask = BigInt(`0x${hexMask}`);
  return ALL_CAPS.filter((_, bit) => ((mask >> BigInt(bit)) & 1n) === 1n);
}

export const DEFAULT_MASKED_PATHS = [
  '/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list',
  '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi', '/sys/firmware', '/sys/devices/virtual/powercap',
];
export const DEFAULT_READONLY_PATHS = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

const NOFILE = 1048576;
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface GuestMount {
  destination: string;
  source: string;
  readonly: boolean;
  /** read-only for the mounts under it too (OCI "rro"; host pods, CRI recursive_read_only) */
  recursive?: boolean;
  propagation?: string;
}

/** A raw block device handed to the container (a guest device node; see containers.ts). */
export interface GuestDevice {
  /** where the container sees it */
  containerPath: string;
  major: number;
  minor: number;
  /** device cgroup access, subset of "rwm" */
  access: string;
  /** block (default) or character device (host pods may get those) */
  type?: 'b' | 'c';
  fileMode: number;
  uid: number;
  gid: number;
  /**
   * true: libcontainer creates the node (linux.devices, paths under /dev only); false: the
   * guest's node is bind-mounted at containerPath (a GuestMount the caller adds)
   */
  node: boolean;
}

/** A host device node for a privileged host container (as runc's privileged containers get). */
export interface HostDevice {
  path: string;
  type: 'b' | 'c';
  major: number;
  minor: number;
  fileMode: number;
  uid: number;
  gid: number;
}

/**
 * A container of a host pod. Namespace files absent where the pod uses the host's (NODE):
 * `netns` and `utsns` are both absent for a host-network pod (its UTS is the host's, as in
 * containerd), `ipcns` for host IPC, `pidns` unless the pod shares one PID namespace.
 */
export interface HostTarget {
  kind: 'host';
  netns?: string;
  ipcns?: string;
  utsns?: string;
  /** the pod's PID namespace (its init's /proc/<pid>/ns/pid) when the pod shares one */
  pidns?: string;
  /** the pod's /dev/shm (its own tmpfs), or the host's for host IPC */
  shm: string;
  /** files every container of the pod gets unless a CRI mount provides them */
  etc: { resolvConf?: string; hostname?: string };
  /** absolute path under each cgroup hierarchy (cgroup_parent + the container's own) */
  cgroupsPath: string;
  /** the root file system (the container's overlay) */
  rootfs: string;
  /** every host device node, for a privileged container */
  hostDevices?: HostDevice[];
  /** cgroup v2 host: the container gets a cgroup namespace of its own (as containerd) */
  cgroupV2: boolean;
  /**
   * The open-files limit containers get: the runtime's own hard limit (a container may not be
   * given more than its runtime holds, unless that has CAP_SYS_RESOURCE, which a confined host
   * daemon may lack), at most what a VM's containers get.
   */
  nofile: number;
  /**
   * The capabilities the runtime itself holds (its bounding set). A privileged container, or one
   * that adds ALL, gets these, not every capability there is, as containerd does
   * (WithAllCurrentCapabilities): a confined host daemon may lack some (CAP_SYS_RESOURCE), and a
   * container asking for one it cannot be given fails to start. Absent: all.
   */
  heldCapabilities?: string[];
}

export type SpecTarget = { kind: 'vm' } | HostTarget;

export interface SpecInput {
  /** default: a pod VM */
  target?: SpecTarget;
  config: ContainerConfig;
  sandboxConfig: PodSandboxConfig;
  imageConfig: any; // OCI image config
  mounts: GuestMount[];
  /** raw block devices: device nodes and their device cgroup rules */
  devices?: GuestDevice[];
  /** pid of the TARGET container for NamespaceMode TARGET (in the guest, or on the host) */
  targetPid?: number;
  /** the pod's user namespace mapping (runtime/userns.ts); absent: the host's users */
  userns?: UserNsMapping;
}

export interface BuiltSpec {
  spec: any;
  username: string | null;
  /**
   * CRI SupplementalGroupsPolicy: "merge" adds the groups the image's /etc/group gives the
   * user, "strict" only the spec's. spec.process.user.gid is absent when neither the CRI nor the
   * image's User names a group: the runtime takes the user's primary group from the image.
   */
  groupsPolicy: 'merge' | 'strict';
}

/** Guest paths a user-namespaced container binds where it cannot mount its own (see namespaces()). */
export const GUEST_MQUEUE = '/run/podvisor/mqueue';

function capName(c: string): string {
  const up = c.toUpperCase();
  return up.startsWith('CAP_') ? up : `CAP_${up}`;
}

function capabilities(sc: LinuxContainerSecurityContext | null | undefined, held?: string[]): string[] {
  const all = held ? ALL_CAPS.filter((c) => held.includes(c)) : ALL_CAPS;
  if (sc?.privileged) return [...all];
  let caps = new Set(DEFAULT_CAPS);
  const add: string[] = sc?.capabilities?.add_capabilities ?? [];
  const drop: string[] = sc?.capabilities?.drop_capabilities ?? [];
  if (add.some((c) => c.toUpperCase() === 'ALL')) caps = new Set(all);
  else for (const c of add) caps.add(capName(c));
  if (drop.some((c) => c.toUpperCase() === 'ALL')) caps.clear();
  for (const c of drop) caps.delete(capName(c));
  // adds win over a drop of ALL, as in containerd
  if (drop.some((c) => c.toUpperCase() === 'ALL')) for (const c of add) if (c.toUpperCase() !== 'ALL') caps.add(capName(c));
  return [...caps];
}

/** Splits an image config User ("uid", "name", "uid:gid", "name:group"). */
export function parseImageUser(user: string | undefined): { uid?: number; gid?: number; username?: string; group?: string } {
  if (!user) return {};
  const [u, g] = user.split(':', 2);
  const out: { uid?: number; gid?: number; username?: string; group?: string } = {};
  if (/^\d+$/.test(u)) out.uid = Number(u);
  else if (u) out.username = u;
  if (g !== undefined) {
    if (/^\d+$/.test(g)) out.gid = Number(g);
    else if (g) out.group = g;
  }
  return out;
}

function envList(image: string[] | undefined, cri: KeyValue[] | null | undefined): string[] {
  const env = new Map<string, string>();
  for (const e of image ?? []) {
    const i = e.indexOf('=');
    if (i > 0) env.set(e.slice(0, i), e.slice(i + 1));
  }
  for (const kv of cri ?? []) {
    if (!kv.key) throw invalidArgument('environment variable with an empty name');
    // KeyValue.value is bytes on the wire (a Buffer once decoded)
    const v = kv.value ?? '';
    env.set(kv.key, typeof v === 'string' ? v : Buffer.from(v).toString('utf8'));
  }
  if (!env.has('PATH')) env.set('PATH', DEFAULT_PATH);
  return [...env].map(([k, v]) => `${k}=${v}`);
}

/** command/args per the Kubernetes rules: command replaces Entrypoint, args replace Cmd. */
export function processArgs(config: ContainerConfig, imageCfg: any): string[] {
  const command: string[] = config.command ?? [];
  const args: string[] = config.args ?? [];
  const entrypoint: string[] = imageCfg?.Entrypoint ?? [];
  const cmd: string[] = imageCfg?.Cmd ?? [];
  let argv: string[];
  if (command.length) argv = [...command, ...args];
  else argv = [...entrypoint, ...(args.length ? args : cmd)];
  if (!argv.length) throw invalidArgument('no command specified: neither the container config nor the image gives one');
  return argv;
}

/**
 * A host pod's container namespaces: the pod's pinned files, nothing (the host's) for NODE, a
 * new one for CONTAINER.
 */
function hostNamespaces(nsOpts: NamespaceOption | null | undefined, targetPid: number | undefined, t: HostTarget, podOpts: NamespaceOption | null | undefined): OciNamespace[] {
  // the pod's host namespaces are its containers' too, whatever a container config says (a
  // client may send none: critest does), as containerd does
  const podMode = (k: 'network' | 'ipc' | 'pid') => (podOpts?.[k] === 'NODE' ? 'NODE' : undefined);
  const mode = (m: unknown, k: 'network' | 'ipc' | 'pid') => podMode(k) ?? (typeof m === 'string' ? m : 'POD');
  const shared = (type: string, m: string, file: string | undefined): OciNamespace[] => {
    if (m === 'NODE') return [];
    if (m === 'CONTAINER') return [{ type }];
    if (!file) throw invalidArgument(`the pod has no ${type} namespace of its own`);
    return [{ type, path: file }];
  };
  const ns: OciNamespace[] = [{ type: 'mount' }];
  const net = mode(nsOpts?.network, 'network');
  ns.push(...shared('network', net, t.netns));
  ns.push(...shared('ipc', mode(nsOpts?.ipc, 'ipc'), t.ipcns));
  if (net !== 'NODE') ns.push(...shared('uts', 'POD', t.utsns));
  const pid = mode(nsOpts?.pid, 'pid');
  if (pid === 'TARGET') {
    if (!targetPid) throw invalidArgument('namespace target container is not running');
    ns.push({ type: 'pid', path: `/proc/${targetPid}/ns/pid` });
  } else if (pid === 'POD') {
    ns.push(t.pidns ? { type: 'pid', path: t.pidns } : { type: 'pid' });
  } else {
    ns.push(...shared('pid', pid, undefined));
  }
  if (t.cgroupV2) ns.push({ type: 'cgroup' });
  return ns;
}

function namespaces(nsOpts: NamespaceOption | null | undefined, targetPid: number | undefined, userns: UserNsMapping | undefined): OciNamespace[] {
  if (userns) return usernsNamespaces(nsOpts, targetPid);
  const ns: OciNamespace[] = [{ type: 'mount' }];
  const mode = (m: unknown) => (typeof m === 'string' ? m : 'POD');
  const net = mode(nsOpts?.network);
  if (net === 'NODE') throw invalidArgument('host network is not available inside a pod VM');
  ns.push(net === 'CONTAINER' ? { type: 'network' } : { type: 'network', path: '/proc/1/ns/net' });
  const ipc = mode(nsOpts?.ipc);
  if (ipc === 'NODE') throw invalidArgument('host IPC is not available inside a pod VM');
  ns.push(ipc === 'CONTAINER' ? { type: 'ipc' } : { type: 'ipc', path: '/proc/1/ns/ipc' });
  ns.push({ type: 'uts', path: '/proc/1/ns/uts' });
  const pid = mode(nsOpts?.pid); // proto default (0) is POD, as for the others
  if (pid === 'NODE') throw invalidArgument('host PID is not available inside a pod VM');
  if (pid === 'POD') ns.push({ type: 'pid', path: '/proc/1/ns/pid' });
  else if (pid === 'TARGET') {
    if (!targetPid) throw invalidArgument('namespace target container is not running');
    ns.push({ type: 'pid', path: `/proc/${targetPid}/ns/pid` });
  } else ns.push({ type: 'pid' });
  ns.push({ type: 'cgroup' });
  return ns;
}

/**
 * A user-namespaced container's namespaces. The pod's namespaces are the guest's root ones,
 * owned by the guest's initial user namespace, and a process that has entered a new user
 * namespace cannot join those (libcontainer enters the user namespace first). So the container
 * *stays* in the pod's network, IPC, UTS and (shared) PID namespaces (the agent's, which it is
 * cloned from) by not listing them; what it cannot mount for namespaces it does not own (sysfs,
 * proc, mqueue) it binds from the guest instead (buildSpec). Each container gets a user
 * namespace of its own with the pod's mapping; a TARGET container joins its target's.
 */
function usernsNamespaces(nsOpts: NamespaceOption | null | undefined, targetPid: number | undefined): OciNamespace[] {
  const mode = (m: unknown) => (typeof m === 'string' ? m : 'POD');
  const ns: OciNamespace[] = [{ type: 'mount' }];
  const net = mode(nsOpts?.network);
  const ipc = mode(nsOpts?.ipc);
  const pid = mode(nsOpts?.pid);
  if (net === 'NODE' || ipc === 'NODE' || pid === 'NODE') throw invalidArgument('host namespaces are not available inside a pod VM');
  if (net === 'CONTAINER') ns.push({ type: 'network' });
  if (ipc === 'CONTAINER') ns.push({ type: 'ipc' });
  if (pid === 'TARGET') {
    if (!targetPid) throw invalidArgument('namespace target container is not running');
    ns.push({ type: 'user', path: `/proc/${targetPid}/ns/user` }, { type: 'pid', path: `/proc/${targetPid}/ns/pid` });
  } else {
    ns.push({ type: 'user' });
    if (pid === 'CONTAINER') ns.push({ type: 'pid' });
  }
  ns.push({ type: 'cgroup' });
  return ns;
}

/**
 * The device cgroup rules beyond the guest's defaults: a privileged container may use every
 * device of the VM (as runc's privileged containers every host device); others only their raw
 * block devices, each with its own access.
 */
export function deviceRules(privileged: boolean, devices: GuestDevice[]): DeviceRule[] {
  return privileged ? [{ allow: true, access: 'rwm' }] : devices.map(deviceRule);
}

/** The device cgroup rule that lets a container use one guest block device. */
export function deviceRule(d: Pick<GuestDevice, 'major' | 'minor' | 'access' | 'type'>): DeviceRule {
  return { allow: true, type: d.type ?? 'b', major: d.major, minor: d.minor, access: d.access };
}

/**
 * CRI LinuxContainerResources → OCI linux.resources. Devices: deny everything but the guest's
 * defaults (null, zero, tty, pts, …, which libcontainer always allows), then `allowDevices`.
 */
export function ociResources(r: LinuxContainerResources, allowDevices: DeviceRule[] = []): any {
  if (!r) return allowDevices.length ? { devices: [{ allow: false, access: 'rwm' }, ...allowDevices] } : {};
  const num = (v: unknown) => (v === undefined || v === null || v === '' ? 0 : Number(v));
  const out: any = { devices: [{ allow: false, access: 'rwm' }, ...allowDevices] };
  const cpu: any = {};
  if (num(r.cpu_shares) > 0) cpu.shares = num(r.cpu_shares);
  if (num(r.cpu_quota) > 0) cpu.quota = num(r.cpu_quota);
  if (num(r.cpu_period) > 0) cpu.period = num(r.cpu_period);
  if (r.cpuset_cpus) cpu.cpus = r.cpuset_cpus;
  if (r.cpuset_mems) cpu.mems = r.cpuset_mems;
  if (Object.keys(cpu).length) out.cpu = cpu;
  if (num(r.memory_limit_in_bytes) > 0) {
    out.memory = { limit: num(r.memory_limit_in_bytes) };
    if (num(r.memory_swap_limit_in_bytes) > 0) out.memory.swap = num(r.memory_swap_limit_in_bytes);
  }
  if (r.unified && Object.keys(r.unified).length) out.unified = r.unified;
  return out;
}

/** OCI linux.devices: raw block devices made as nodes, then (privileged host containers) every host device. */
function deviceNodes(devices: GuestDevice[], hostDevices: HostDevice[] | undefined): any[] | undefined {
  const out: any[] = devices.filter((d) => d.node).map((d) => ({ path: d.containerPath, type: d.type ?? 'b', major: d.major, minor: d.minor, fileMode: d.fileMode, uid: d.uid, gid: d.gid }));
  for (const d of hostDevices ?? []) if (!out.some((o) => o.path === d.path)) out.push({ ...d });
  return out.length ? out : undefined;
}

export function buildSpec(input: SpecInput): BuiltSpec {
  const { config, sandboxConfig, imageConfig, mounts } = input;
  const devices = input.devices ?? [];
  const target: SpecTarget = input.target ?? { kind: 'vm' };
  const host = target.kind === 'host' ? target : undefined;
  const img = imageConfig?.config ?? {};
  const linux = config.linux ?? {};
  const sc = linux.security_context ?? {};
  const privileged = !!sc.privileged;

  // user: CRI run_as_user / run_as_username win over the image's User
  const imageUser = parseImageUser(img.User);
  let uid: number | undefined = sc.run_as_user ? Number(sc.run_as_user.value) : undefined;
  let username: string | null = sc.run_as_username || null;
  if (uid === undefined && !username) {
    uid = imageUser.uid;
    username = imageUser.username ?? null;
  }
  if (sc.run_as_group && !sc.run_as_user && !sc.run_as_username) throw invalidArgument('run_as_group is set without run_as_user or run_as_username');
  let gid: number | undefined = sc.run_as_group ? Number(sc.run_as_group.value) : imageUser.gid;
  if (uid === undefined && !username) uid = 0;
  if (uid !== undefined && username) username = null;
  const extraGids = (sc.supplemental_groups ?? []).map(Number);
  const groupsPolicy = sc.supplemental_groups_policy === 'Strict' ? 'strict' : 'merge';

  const caps = capabilities(sc, host?.heldCapabilities);
  if (host && input.userns) throw invalidArgument('user namespaces are not available for host pods');
  const ns = host ? hostNamespaces(sc.namespace_options, input.targetPid, host, sandboxConfig?.linux?.security_context?.namespace_options) : namespaces(sc.namespace_options, input.targetPid, input.userns);
  const ipcShared = ns.some((n) => n.type === 'ipc' && n.path);
  const hasUts = ns.some((n) => n.type === 'uts');

  // a user-namespaced container binds the guest's sysfs, proc and mqueue of the pod's
  // namespaces it stays in (it may not mount them); mounts a namespace of its own as usual
  const own = (type: string) => !input.userns || ns.some((n) => n.type === type);
  const guestBind = (destination: string, source: string, ro: boolean) =>
    ({ destination, type: 'bind', source, options: ['rbind', 'nosuid', 'noexec', 'nodev', ro ? 'ro' : 'rw'] });
  const specMounts: any[] = [
    own('pid') ? { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] } : guestBind('/proc', '/proc', false),
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
    own('ipc') ? { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] } : guestBind('/dev/mqueue', GUEST_MQUEUE, false),
    own('network') ? { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', privileged ? 'rw' : 'ro'] } : guestBind('/sys', '/sys', !privileged),
    { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', privileged ? 'rw' : 'ro'] },
  ];
  // a host container with a bidirectional mount gets a shared root (rootfsPropagation below): the
  // binds made here from under the shared <state>/host must then not stay its peers
  const sharedRoot = !!host && mounts.some((m) => m.propagation === 'rshared');
  const ownBind = sharedRoot ? ['rbind', 'rw', 'rprivate'] : ['rbind', 'rw'];
  if (!mounts.some((m) => m.destination === '/dev/shm')) {
    // a host pod's containers share the pod's /dev/shm (with host IPC: the host's)
    const hostIpc = !ns.some((n) => n.type === 'ipc');
    const podShm = host ? (ipcShared || hostIpc ? host.shm : undefined) : ipcShared ? '/run/podvisor/shm' : undefined;
    specMounts.push(podShm
      ? { destination: '/dev/shm', type: 'bind', source: podShm, options: ownBind }
      : { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] });
  }
  // the pod's resolv.conf and hostname on the host (in a VM the agent binds them), unless a
  // CRI mount provides them
  for (const [dst, src] of [['/etc/resolv.conf', host?.etc.resolvConf], ['/etc/hostname', host?.etc.hostname]] as const) {
    if (src && !mounts.some((m) => m.destination === dst)) specMounts.push({ destination: dst, type: 'bind', source: src, options: ownBind });
  }
  // /etc/resolv.conf: the agent binds the pod's own unless a CRI mount provides one.
  for (const m of mounts) {
    const opts = ['rbind', m.readonly ? (m.recursive ? 'rro' : 'ro') : 'rw'];
    if (m.propagation) opts.push(m.propagation);
    specMounts.push({ destination: m.destination, type: 'bind', source: m.source, options: opts });
  }

  const maskedPaths = privileged ? [] : (sc.masked_paths?.length ? sc.masked_paths : DEFAULT_MASKED_PATHS);
  const readonlyPaths = privileged ? [] : (sc.readonly_paths?.length ? sc.readonly_paths : DEFAULT_READONLY_PATHS);

  const spec = {
    ociVersion: '1.0.2',
    process: {
      terminal: !!config.tty,
      user: gid === undefined ? { uid: uid ?? 0, additionalGids: extraGids } : { uid: uid ?? 0, gid, additionalGids: extraGids },
      args: processArgs(config, img),
      env: envList(img.Env, config.envs),
      cwd: config.working_dir || img.WorkingDir || '/',
      capabilities: { bounding: caps, effective: caps, permitted: caps, inheritable: [] as string[], ambient: [] as string[] },
      // omitted unless true: libcontainer loads seccomp before dropping capabilities only when unset
      noNewPrivileges: sc.no_new_privs ? true : undefined,
      oomScoreAdj: linux.resources?.oom_score_adj ? Number(linux.resources.oom_score_adj) : undefined,
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: host ? Math.min(host.nofile, NOFILE) : NOFILE, soft: host ? Math.min(host.nofile, NOFILE) : NOFILE }],
    },
    root: { path: host ? host.rootfs : 'rootfs', readonly: !!sc.readonly_rootfs },
    // a host-network pod's containers are in the host's UTS namespace, a user-namespaced
    // container stays in the pod's: the hostname is not theirs to set
    hostname: hasUts ? sandboxConfig?.hostname || undefined : undefined,
    mounts: specMounts,
    linux: {
      namespaces: ns,
      uidMappings: input.userns?.uids,
      gidMappings: input.userns?.gids,
      resources: ociResources(linux.resources ?? {}, deviceRules(privileged, devices)),
      devices: deviceNodes(devices, privileged ? host?.hostDevices : undefined),
      maskedPaths,
      readonlyPaths,
      seccomp: seccompFor(sc, caps, !!host),
      cgroupsPath: host?.cgroupsPath,
      // a bidirectional mount of a host container: its root shared (libcontainer makes "shared"
      // recursive), so its copies of the host's shared mounts stay their peers; the shim then
      // sets each mount's own propagation (launcher/src/shim/propagation.rs), as containerd
      // sets rshared for runc
      rootfsPropagation: sharedRoot ? 'shared' : undefined,
    },
  };
  return { spec, username: uid === undefined ? username : null, groupsPolicy };
}
