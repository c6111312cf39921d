// The guest agent's method table as the host sees it: one entry per method of
// guest/agent/src/rpc.rs (`dispatch`), with its params and result as guest/PROTOCOL.md gives
// them. AgentClient.call is typed by it, so a misspelled method or field fails to compile. The
// results are what a well-behaved guest sends; the guest is untrusted, so callers still check
// the values they act on (ids, numbers, lengths) before trusting them.

export interface DnsConfig {
  servers: string[];
  searches: string[];
  options: string[];
}

export interface GuestInterface {
  name: string;
  mac: string;
  mtu: number;
  /** CIDR form, IPv4 and IPv6 */
  addresses: string[];
  /** addresses to drop first (a restored pod: the checkpointed pod's) */
  remove_addresses?: string[];
}

export interface GuestRoute {
  dest: string;
  gateway: string | null;
  interface: string | null;
}

export interface GuestStdio {
  stdin: number;
  stdout: number;
  stderr: number;
  tty: boolean;
  stdin_once: boolean;
}

export interface DiskMountParams {
  scsi_id: number;
  lun: number;
  fstype: string;
  readonly: boolean;
  target: string;
  options: string[];
  /** format a blank device with this type first */
  format?: string | null;
  /** grow a read-write ext2/3/4 file system to the device's size */
  grow?: boolean;
  /** how long the disk may take to appear and take the mount (ms; the agent's default 10 s, at most 600 s) */
  wait_ms?: number;
}

/** An `exit` or `oom` event (guest/PROTOCOL.md "Events"); untrusted. */
export interface GuestExitEvent {
  type: 'exit';
  container_id: string;
  exec_id: string | null;
  pid: number;
  exit_code: number;
  signal: number | null;
  oom_killed: boolean;
  finished_unix_ns: string;
}

export interface GuestMethods {
  hello: {
    params: { protocol: number; nonce: string; time_unix_ns: string; entropy: string; hostname: string };
    result: { protocol: number; nonce: string; agent_version?: string; boot_id?: string };
  };
  'sandbox.setup': {
    params: { hostname: string; dns: DnsConfig | null; share_tag: string | null; sysctls: Record<string, string> };
    result: Record<string, never>;
  };
  'network.configure': {
    params: { interfaces: GuestInterface[]; routes: GuestRoute[] };
    result: Record<string, never>;
  };
  'disk.mount': {
    params: DiskMountParams;
    result: { device: string; fstype?: string; grown?: { from: number; to: number }; grow_error?: string };
  };
  'disk.device': {
    params: { scsi_id: number; lun: number; wait_ms?: number };
    result: { device: string; major: number; minor: number };
  };
  'disk.unmount': { params: { target: string }; result: Record<string, never> };
  'nfs.mount': {
    params: { server: string; export: string; version: string; options: string[]; readonly: boolean; target: string };
    result: Record<string, never>;
  };
  /** a pod-wide tmpfs in guest memory (a memory-backed emptyDir), idempotent */
  'tmpfs.mount': {
    params: { name: string; size: number; mode: number; uid: number; gid: number };
    result: { path: string };
  };
  'container.create': {
    params: {
      id: string;
      rootfs: { image: string; readonly: boolean };
      /** the OCI runtime spec built by runtime/oci-spec.ts */
      spec: object;
      username: string | null;
      /** CRI SupplementalGroupsPolicy: "merge" (default) adds the image's /etc/group memberships, "strict" does not */
      groups_policy?: 'merge' | 'strict';
      stdio: GuestStdio;
    };
    /** `user`: the identity the process runs with (absent from older agents) */
    result: { pid: number; user?: { uid: number; gid: number; additional_gids: number[] } };
  };
  'container.start': { params: { id: string }; result: { pid: number } };
  'container.signal': { params: { id: string; signal: number; all: boolean }; result: Record<string, never> };
  'container.delete': { params: { id: string }; result: Record<string, never> };
  'container.state': {
    params: { id: string };
    result: { status: 'created' | 'running' | 'stopped'; pid: number; exit_code: number | null; oom_killed: boolean };
  };
  'container.update': { params: { id: string; resources: object }; result: Record<string, never> };
  'exec.start': {
    params: {
      container_id: string;
      exec_id: string;
      args: string[];
      env: string[] | null;
      cwd: string | null;
      tty: boolean;
      stdin: number;
      stdout: number;
      stderr: number;
    };
    result: { pid: number };
  };
  'process.signal': { params: { container_id: string; exec_id: string | null; signal: number }; result: Record<string, never> };
  'process.resize': { params: { container_id: string; exec_id: string | null; rows: number; cols: number }; result: Record<string, never> };
  'portforward.connect': { params: { port: number; stream: number }; result: Record<string, never> };
  stats: {
    /** absent: every container; empty: the pod's own figures only */
    params: { ids?: string[] };
    /** figures per container and of the pod (guest/agent/src/stats.rs); untrusted, checked by runtime/stats.ts */
    result: { containers?: unknown[]; memory_total?: unknown; memory_available?: unknown; layer_fs?: unknown; interfaces?: unknown };
  };
  /** in-place resize: vCPUs 0..online-1 online, the rest offline (1 ≤ online ≤ the boot count) */
  'vm.cpus': { params: { online: number }; result: { online: number; present: number } };
  /** the 9p share let go for a checkpoint (guest/agent/src/share.rs): or who holds it */
  'share.release': {
    params: Record<string, never>;
    result: { released: boolean; mounts?: number; busy?: Array<{ container_id: string; pid: number; path: string }> };
  };
  /** what share.release took down, back from the share sandbox.setup mounted again */
  'share.attach': { params: Record<string, never>; result: { attached: number } };
  shutdown: { params: Record<string, never>; result: Record<string, never> };
}

export type GuestMethod = keyof GuestMethods;
export type GuestParams<M extends GuestMethod> = GuestMethods[M]['params'];
export type GuestResult<M extends GuestMethod> = GuestMethods[M]['result'];

/** Every method the agent serves (the keys of rpc.rs's dispatch); a unit test compares them. */
export const GUEST_METHODS: readonly GuestMethod[] = [
  'hello', 'sandbox.setup', 'network.configure', 'disk.mount', 'disk.device', 'disk.unmount', 'nfs.mount', 'tmpfs.mount',
  'container.create', 'container.start', 'container.signal', 'container.delete', 'container.state', 'container.update',
  'exec.start', 'process.signal', 'process.resize', 'portforward.connect', 'stats', 'vm.cpus', 'share.release', 'share.attach', 'shutdown',
];
