// Daemon configuration: embedded defaults, overridden by a TOML file (like containerd's
// config.toml), then by the drop-ins in conf.d/*.toml beside it (in name order, each over the
// last), overridden by command-line flags. Unknown keys are an error, so a typo never silently
// falls back to a default. `version = 1` names the format (the only one so far).
import fs from 'node:fs';
import { isIP } from 'node:net';
import path from 'node:path';
import { parse, stringify } from 'smol-toml';

/**
 * TCG's translated-code buffer per VM, MiB. The code a pod runs again and again (an exec probe:
 * fork, setns, execve in the guest kernel plus libcontainer in the agent) translates to ~18-20
 * MiB here; a smaller buffer is flushed on every exec and retranslated (5th ExecSync in a pod:
 * 289 ms at 16 MiB, 86 ms at 20, 37 ms at 24). Each MiB is paid in every idle pod's PSS.
 * A pod's first container needs ~38 MiB (create, start, the idle guest since), so at 24 MiB the
 * buffer is flushed in CreateContainer and again in the first ExecSync (~180 ms of its ~290);
 * 40 MiB or more holds it (at 64: first ExecSync ~114 ms), but every idle pod then keeps
 * ~38 MiB of code plus the metadata of its blocks: +17 MiB PSS per idle pod at 50 pods
 * (bench/README, issue 21), against the density target. Hence 24.
 */
export const DEFAULT_TCG_CODE_MIB = 24;
/** the most each VM's console.log and qemu.log hold, KiB (src/vm/log-bound.ts) */
export const DEFAULT_VM_LOG_CAP_KIB = 8192;

export interface Config {
  socket: string;
  root: string;
  state: string;
  logLevel: string;
  /**
   * How kubelet writes a pod's cgroup_parent (its cgroupDriver; RuntimeConfig tells kubelet):
   * "cgroupfs" (a path) or "systemd" (a slice name). Pod VMs go into a cgroup under it.
   */
  cgroupDriver: 'cgroupfs' | 'systemd';
  vm: {
    qemu: string;
    kernel: string;
    initramfs: string;
    kernelArgs: string;
    /** podvisor-launch (opens taps in the pod netns, execs QEMU); '' = next to the kernel */
    launcher: string;
    accelerator: 'auto' | 'kvm' | 'tcg';
    defaultVcpus: number;
    defaultMemoryMiB: number;
    maxVcpus: number;
    maxMemoryMiB: number;
    /**
     * In-place resize ceilings of every pod VM (runtime/resize.ts): a VM boots with
     * max(its size, these) vCPUs and MiB of RAM and runs at its size, CPUs beyond it offline in
     * the guest and RAM beyond it in a balloon, so UpdatePodSandboxResources and
     * UpdateContainerResources can grow it up to the ceiling. 0: the pod's boot size is its
     * ceiling (it can shrink and grow back, never beyond).
     */
    resizeVcpus: number;
    resizeMemoryMiB: number;
    bootTimeoutS: number;
    stopTimeoutS: number;
    /** start pods as clones of VM templates (falls back to cold boot) */
    template: boolean;
    /** on tmpfs: template RAM lives here */
    templateDir: string;
    /** size classes to build at start, "<vcpus>x<MiB>" or "<vcpus>x<MiB>x<nics>" */
    prebuildTemplates: string[];
    /** warm clones kept running ahead of pods (of the size class last asked for); 0 = none */
    templateSpares: number;
    /**
     * TCG only: QEMU's translated-code buffer per VM, MiB (tb-size). Every pod fills it as it
     * starts, so it is most of an idle pod's memory; smaller means denser and slower, and below
     * the exec path's ~20 MiB every exec retranslates (DEFAULT_TCG_CODE_MIB, bench/README.md).
     */
    tcgCodeMiB: number;
    /** the most a VM's console.log and qemu.log may hold, KiB (a guest can write both) */
    logCapKiB: number;
    /**
     * Let the kernel's samepage merging (KSM) merge all of each VM's anonymous memory (QEMU's
     * heap, TCG buffers, relocated libraries), not only guest RAM. Denser, at the cost of ksmd
     * CPU and of KSM's cross-VM timing side channel; ksmd must be turned on by the operator.
     */
    ksm: boolean;
  };
  image: {
    /** directory holding certs.d/<host>/hosts.toml */
    configDir: string;
    pinned: string[];
  };
  cni: {
    confDir: string;
    binDirs: string[];
  };
  streaming: {
    address: string;
    /** 0 = any free port */
    port: number;
    tlsCert: string;
    tlsKey: string;
  };
  metrics: {
    /**
     * host:port of the Prometheus endpoint (GET /metrics, plain HTTP); '' = off (the default,
     * as containerd's). An IPv6 host goes in brackets: "[::1]:9338".
     */
    address: string;
  };
  runtime: {
    /**
     * CRI runtime handler name → pod backend kind (runtime/pod-backend.ts). A pod asks for a
     * handler (RuntimeClass); RuntimeConfig/Status report these names. A handler whose backend
     * is not built in is refused when a pod asks for it.
     */
    handlers: Record<string, string>;
    /**
     * Pods asking for the host's network, PID or IPC namespace: "host" runs them with the host
     * backend (when it exists), "reject" refuses them (FAILED_PRECONDITION).
     */
    hostNamespaces: 'host' | 'reject';
  };
}

/** The handlers a default config serves: the VM under every name kubelet users write for it. */
export const DEFAULT_HANDLERS: Readonly<Record<string, string>> = { '': 'vm', podvisor: 'vm', kata: 'vm', vm: 'vm', runc: 'host', host: 'host' };

/** The directory of the nearest package.json: the checkout, or a release's version directory. */
export function packageRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return dir;
}

/**
 * The built guest (kernel, initramfs, podvisor-launch): `guest/` of a release (scripts/release.sh
 * puts it beside the bundled daemon), else `build/guest` of a checkout (whose `guest/` holds the
 * guest's sources, no vmlinux).
 */
export function guestDir(): string {
  const root = packageRoot();
  const release = path.join(root, 'guest');
  return fs.existsSync(path.join(release, 'vmlinux')) ? release : path.join(root, 'build', 'guest');
}

export function defaultConfig(): Config {
  const guest = guestDir();
  return {
    socket: '/run/podvisor/podvisor.sock',
    root: '/var/lib/podvisor',
    state: '/run/podvisor',
    logLevel: 'info',
    cgroupDriver: 'cgroupfs',
    vm: {
      qemu: '/usr/bin/qemu-system-x86_64',
      kernel: path.join(guest, 'vmlinux'),
      initramfs: path.join(guest, 'initramfs.img'),
      kernelArgs: '',
      launcher: '',
      accelerator: 'auto',
      defaultVcpus: 1,
      defaultMemoryMiB: 256,
      maxVcpus: 8,
      maxMemoryMiB: 16384,
      resizeVcpus: 0,
      resizeMemoryMiB: 0,
      bootTimeoutS: 30,
      stopTimeoutS: 10,
      template: true,
      templateDir: '/dev/shm/podvisor/templates',
      prebuildTemplates: [],
      templateSpares: 1,
      tcgCodeMiB: DEFAULT_TCG_CODE_MIB,
      logCapKiB: DEFAULT_VM_LOG_CAP_KIB,
      ksm: false,
    },
    image: { configDir: '/etc/podvisor', pinned: [] },
    cni: { confDir: '/etc/cni/net.d', binDirs: ['/opt/cni/bin', '/usr/lib/cni'] },
    streaming: { address: '127.0.0.1', port: 0, tlsCert: '', tlsKey: '' },
    metrics: { address: '' },
    runtime: { handlers: { ...DEFAULT_HANDLERS }, hostNamespaces: 'host' },
  };
}

const TOML_KEYS: Record<string, [keyof Config | null, string | null]> = {
  socket: ['socket', null],
  root: ['root', null],
  state: ['state', null],
  log_level: ['logLevel', null],
  cgroup_driver: ['cgroupDriver', null],
};
const VM_KEYS: Record<string, keyof Config['vm']> = {
  qemu: 'qemu',
  kernel: 'kernel',
  initramfs: 'initramfs',
  kernel_args: 'kernelArgs',
  launcher: 'launcher',
  accelerator: 'accelerator',
  default_vcpus: 'defaultVcpus',
  default_memory_mib: 'defaultMemoryMiB',
  max_vcpus: 'maxVcpus',
  max_memory_mib: 'maxMemoryMiB',
  resize_vcpus: 'resizeVcpus',
  resize_memory_mib: 'resizeMemoryMiB',
  boot_timeout_s: 'bootTimeoutS',
  stop_timeout_s: 'stopTimeoutS',
  template: 'template',
  template_dir: 'templateDir',
  prebuild_templates: 'prebuildTemplates',
  template_spares: 'templateSpares',
  tcg_code_mib: 'tcgCodeMiB',
  log_cap_kib: 'logCapKiB',
  ksm: 'ksm',
};
const IMAGE_KEYS: Record<string, keyof Config['image']> = { config_dir: 'configDir', pinned: 'pinned' };
const CNI_KEYS: Record<string, keyof Config['cni']> = { conf_dir: 'confDir', bin_dirs: 'binDirs' };
const STREAMING_KEYS: Record<string, keyof Config['streaming']> = { address: 'address', port: 'port', tls_cert: 'tlsCert', tls_key: 'tlsKey' };
const METRICS_KEYS: Record<string, keyof Config['metrics']> = { address: 'address' };
const TABLES: Record<string, Record<string, string>> = { vm: VM_KEYS, image: IMAGE_KEYS, cni: CNI_KEYS, streaming: STREAMING_KEYS, metrics: METRICS_KEYS };

export class ConfigError extends Error {}

function assign(target: any, key: string, value: unknown, where: string): void {
  const cur = target[key];
  const ok = Array.isArray(cur) ? Array.isArray(value) && value.every((v) => typeof v === 'string') : typeof value === typeof cur;
  if (!ok) throw new ConfigError(`${where}: expected ${Array.isArray(cur) ? 'a list of strings' : typeof cur}`);
  if (typeof value === 'number' && (!Number.isFinite(value) || value < 0)) throw new ConfigError(`${where}: must be a non-negative number`);
  target[key] = value;
}

/** [runtime]: `handlers` (a table of handler name → backend kind) replaces the default table whole. */
function loadRuntime(cfg: Config, v: unknown, file: string): void {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ConfigError(`${file}: [runtime] must be a table`);
  for (const [sk, sv] of Object.entries(v)) {
    if (sk === 'handlers') {
      if (typeof sv !== 'object' || sv === null || Array.isArray(sv)) throw new ConfigError(`${file}: runtime.handlers must be a table of handler name = backend kind`);
      const handlers: Record<string, string> = {};
      for (const [name, kind] of Object.entries(sv)) {
        if (typeof kind !== 'string' || !/^[a-z][a-z0-9-]{0,31}$/.test(kind)) throw new ConfigError(`${file}: runtime.handlers.${name}: expected a backend kind such as "vm" or "host"`);
        if (name.length > 63 || !/^[A-Za-z0-9._-]*$/.test(name)) throw new ConfigError(`${file}: runtime.handlers: bad handler name ${JSON.stringify(name)}`);
        handlers[name] = kind;
      }
      cfg.runtime.handlers = handlers;
    } else if (sk === 'host_namespaces') {
      if (sv !== 'host' && sv !== 'reject') throw new ConfigError(`${file}: runtime.host_namespaces must be "host" or "reject"`);
      cfg.runtime.hostNamespaces = sv;
    } else {
      throw new ConfigError(`${file}: unknown key runtime.${sk}`);
    }
  }
}

/**
 * `[metrics] address` as host and port: "127.0.0.1:9338", "[::1]:9338", "node-1.internal:9338".
 * Throws ConfigError saying what is wrong and what is expected.
 */
export function parseHostPort(address: string, key = 'metrics.address'): { host: string; port: number } {
  const bad = (why: string) => new ConfigError(`${key} = ${JSON.stringify(address.slice(0, 100))}: ${why} (expected host:port such as "127.0.0.1:9338" or "[::1]:9338"; "" turns it off)`);
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(address);
  if (!m) throw bad(address.includes(':') ? 'not a host and port' : 'no port');
  const host = m[1] ?? m[2];
  const port = Number(m[3]);
  if (!(port >= 1 && port <= 65535)) throw bad('port must be 1..65535');
  if (m[1] !== undefined ? !isIP(host) : /^[0-9.]+$/.test(host) ? !isIP(host) : host.length > 253) throw bad(`bad host ${JSON.stringify(host)}`);
  return { host, port };
}

/** The config format this daemon reads (`version` key). */
export const CONFIG_VERSION = 1;

/** Applies one TOML document over `cfg`. */
function applyToml(cfg: Config, file: string, text: string): void {
  let doc: Record<string, unknown>;
  try {
    doc = parse(text) as Record<string, unknown>;
  } catch (err) {
    throw new ConfigError(`${file}: ${(err as Error).message}`);
  }
  for (const [k, v] of Object.entries(doc)) {
    if (k === 'version') {
      if (v !== CONFIG_VERSION) throw new ConfigError(`${file}: version = ${String(v)}: this podvisor reads config version ${CONFIG_VERSION}`);
    } else if (k === 'runtime') {
      loadRuntime(cfg, v, file);
    } else if (k in TABLES) {
      const keys = TABLES[k];
      if (typeof v !== 'object' || v === null) throw new ConfigError(`${file}: [${k}] must be a table`);
      for (const [sk, sv] of Object.entries(v)) {
        if (!(sk in keys)) throw new ConfigError(`${file}: unknown key ${k}.${sk}`);
        assign((cfg as any)[k], keys[sk], sv, `${file}: ${k}.${sk}`);
      }
    } else if (k in TOML_KEYS) {
      assign(cfg, TOML_KEYS[k][0] as string, v, `${file}: ${k}`);
    } else {
      throw new ConfigError(`${file}: unknown key ${k}`);
    }
  }
}

/** conf.d/*.toml beside `file`, in name order. */
export function dropIns(file: string): string[] {
  const dir = path.join(path.dirname(file), 'conf.d');
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  return names.filter((n) => n.endsWith('.toml')).sort().map((n) => path.join(dir, n));
}

/**
 * Loads `file` and then its conf.d drop-ins over the defaults. A missing file is fine only when
 * `optional` (its drop-ins still apply).
 */
export function loadConfig(file: string | undefined, optional: boolean): Config {
  const cfg = defaultConfig();
  if (!file) return cfg;
  try {
    applyToml(cfg, file, fs.readFileSync(file, 'utf8'));
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    if (!(optional && (err as NodeJS.ErrnoException).code === 'ENOENT')) throw new ConfigError(`cannot read config ${file}: ${(err as Error).message}`);
  }
  for (const drop of dropIns(file)) {
    let text: string;
    try {
      text = fs.readFileSync(drop, 'utf8');
    } catch (err) {
      throw new ConfigError(`cannot read config ${drop}: ${(err as Error).message}`);
    }
    applyToml(cfg, drop, text);
  }
  if (!['cgroupfs', 'systemd'].includes(cfg.cgroupDriver)) throw new ConfigError(`${file}: cgroup_driver must be cgroupfs or systemd`);
  if (!['auto', 'kvm', 'tcg'].includes(cfg.vm.accelerator)) throw new ConfigError(`${file}: vm.accelerator must be auto, kvm or tcg`);
  if (cfg.vm.defaultVcpus < 1 || cfg.vm.defaultMemoryMiB < 64) throw new ConfigError(`${file}: vm defaults too small (≥1 vCPU, ≥64 MiB)`);
  if (![cfg.vm.resizeVcpus, cfg.vm.resizeMemoryMiB].every(Number.isInteger)) throw new ConfigError(`${file}: vm.resize_vcpus and vm.resize_memory_mib must be integers`);
  if (!Number.isInteger(cfg.vm.templateSpares) || cfg.vm.templateSpares > 16) throw new ConfigError(`${file}: vm.template_spares must be an integer 0..16`);
  if (!Number.isInteger(cfg.vm.logCapKiB) || cfg.vm.logCapKiB < 16 || cfg.vm.logCapKiB > 1048576) throw new ConfigError(`${file}: vm.log_cap_kib must be an integer 16..1048576`);
  if (!Number.isInteger(cfg.vm.tcgCodeMiB) || cfg.vm.tcgCodeMiB < 4 || cfg.vm.tcgCodeMiB > 1024) throw new ConfigError(`${file}: vm.tcg_code_mib must be an integer 4..1024`);
  if (cfg.metrics.address) {
    try {
      parseHostPort(cfg.metrics.address);
    } catch (err) {
      throw new ConfigError(`${file}: ${(err as Error).message}`);
    }
  }
  return cfg;
}

/** `cfg` as the TOML this module reads (`podvisor config default|dump`). */
export function configToToml(cfg: Config): string {
  const doc: Record<string, unknown> = { version: CONFIG_VERSION };
  for (const [k, [prop]] of Object.entries(TOML_KEYS)) doc[k] = (cfg as any)[prop as string];
  for (const [table, keys] of Object.entries(TABLES)) {
    doc[table] = Object.fromEntries(Object.entries(keys).map(([k, prop]) => [k, (cfg as any)[table][prop]]));
  }
  return `${stringify(doc)}\n`;
}
