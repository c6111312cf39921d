// `podvisor check [--json]`: can this host run pods, and how fast? Each check looks at the real
// thing (the KVM probe boots a guest, QEMU is asked for its machines and devices, the CNI
// config is read, the socket is called), as Kata's `kata-runtime check` does. A check is
// blocking when pods cannot run without it (exit code 1), a warning when something runs
// slower or a feature is missing, info otherwise. Reads the daemon's config; writes only a
// scratch directory for the probe VM, removed afterwards.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { Config, loadConfig } from '../config/config';
import { createLogger } from '../util/log';
import { probeKvm } from '../vm/accel';
import { criAnswers } from './readiness';

export type Level = 'ok' | 'warn' | 'fail' | 'info';
export interface Check { name: string; level: Level; detail: string; blocking: boolean }
export interface Report { ok: boolean; accelerator: { accel: 'kvm' | 'tcg'; reason: string }; checks: Check[] }

const DEFAULT_CONFIG = '/etc/podvisor/config.toml';
/** QEMU devices a pod VM uses (src/vm/qemu.ts) */
const QEMU_DEVICES = ['virtio-serial-device', 'virtserialport', 'virtio-scsi-device', 'scsi-hd', 'virtio-rng-device', 'virtio-balloon-device', 'virtio-9p-device', 'virtio-net-device'];
const TMPFS_MAGIC = 0x01021994;
/** cgroup controllers pod VMs are limited with */
const CONTROLLERS = ['cpu', 'memory', 'pids'];

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', timeout: 20_000, stdio: ['ignore', 'pipe', 'pipe'] });
}

function which(bin: string): string | undefined {
  for (const dir of (process.env.PATH || '/usr/sbin:/usr/bin:/sbin:/bin').split(':').concat(['/usr/sbin', '/sbin'])) {
    const p = path.join(dir, bin);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

function qemuChecks(cfg: Config): Check[] {
  const out: Check[] = [];
  let version: string;
  try {
    version = run(cfg.vm.qemu, ['--version']).split('\n')[0];
  } catch (err) {
    return [{ name: 'qemu', level: 'fail', blocking: true, detail: `${cfg.vm.qemu}: ${(err as Error).message.split('\n')[0]}` }];
  }
  out.push({ name: 'qemu', level: 'ok', blocking: true, detail: version });
  const machines = run(cfg.vm.qemu, ['-machine', 'help']);
  out.push(/^microvm\s/m.test(machines)
    ? { name: 'qemu machine microvm', level: 'ok', blocking: true, detail: 'present' }
    : { name: 'qemu machine microvm', level: 'fail', blocking: true, detail: 'missing (QEMU ≥ 4.2 built with microvm)' });
  const devices = run(cfg.vm.qemu, ['-device', 'help']);
  const missing = QEMU_DEVICES.filter((d) => !new RegExp(`name "${d}"`).test(devices));
  out.push({ name: 'qemu devices', level: missing.length ? 'fail' : 'ok', blocking: true, detail: missing.length ? `missing: ${missing.join(', ')}` : QEMU_DEVICES.join(', ') });
  const rbd = ['/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so', '/usr/lib/qemu/block-rbd.so'].find((f) => fs.existsSync(f));
  out.push({ name: 'qemu rbd driver', level: rbd ? 'ok' : 'warn', blocking: false, detail: rbd ?? 'no block-rbd module (qemu-block-extra): Ceph RBD volumes cannot attach' });
  return out;
}

function guestChecks(cfg: Config): Check[] {
  const launcher = cfg.vm.launcher || path.join(path.dirname(cfg.vm.kernel), 'podvisor-launch');
  return ([['guest kernel', cfg.vm.kernel, fs.constants.R_OK], ['guest initramfs', cfg.vm.initramfs, fs.constants.R_OK], ['podvisor-launch', launcher, fs.constants.X_OK]] as const).map(([name, file, mode]) => {
    try {
      fs.accessSync(file, mode);
      return { name, level: 'ok' as Level, blocking: true, detail: file };
    } catch (err) {
      return { name, level: 'fail' as Level, blocking: true, detail: `${file}: ${(err as NodeJS.ErrnoException).code}` };
    }
  });
}

function deviceCheck(name: string, dev: string, blocking: boolean, why: string): Check {
  try {
    fs.closeSync(fs.openSync(dev, 'r+'));
    return { name, level: 'ok', blocking, detail: `${dev} opens read-write` };
  } catch (err) {
    return { name, level: blocking ? 'fail' : 'info', blocking, detail: `${dev}: ${(err as NodeJS.ErrnoException).code}: ${why}` };
  }
}

function cgroupCheck(): Check[] {
  if (fs.existsSync('/sys/fs/cgroup/cgroup.controllers')) {
    const have = fs.readFileSync('/sys/fs/cgroup/cgroup.controllers', 'utf8').trim().split(/\s+/);
    const missing = CONTROLLERS.filter((c) => !have.includes(c));
    return [{ name: 'cgroup', level: missing.length ? 'fail' : 'ok', blocking: true, detail: `v2, controllers: ${have.join(' ')}${missing.length ? `; missing ${missing.join(', ')}` : ''}` }];
  }
  const rows = fs.readFileSync('/proc/cgroups', 'utf8').split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split('\t'));
  const enabled = rows.filter((r) => r[3] === '1').map((r) => r[0]);
  const missing = CONTROLLERS.filter((c) => !enabled.includes(c));
  return [{
    name: 'cgroup', level: missing.length ? 'fail' : 'warn', blocking: true,
    detail: `v1 (kubelet ≥ 1.35 needs failCgroupV1: false), controllers: ${enabled.join(' ')}${missing.length ? `; missing ${missing.join(', ')}` : ''}`,
  }];
}

function filesystemChecks(): Check[] {
  const fss = fs.readFileSync('/proc/filesystems', 'utf8');
  const mod = (m: string) => { try { run('modinfo', ['-F', 'filename', m]); return true; } catch { return false; } };
  const out: Check[] = [];
  for (const fsName of ['erofs', 'overlay']) {
    const builtin = new RegExp(`\\s${fsName}$`, 'm').test(fss);
    out.push({ name: `${fsName} (host)`, level: builtin || mod(fsName) ? 'ok' : 'warn', blocking: false,
      detail: builtin ? 'in the kernel' : mod(fsName) ? 'module available' : 'not available: host-namespace pods cannot mount image layers' });
  }
  const mkfs = which('mkfs.erofs');
  out.push({ name: 'mkfs.erofs', level: mkfs ? 'ok' : 'fail', blocking: true, detail: mkfs ?? 'missing (erofs-utils): images cannot be unpacked into disks' });
  for (const tool of ['ip', 'tc', 'iptables', 'nsenter']) {
    const p = which(tool);
    out.push({ name: tool, level: p ? 'ok' : 'fail', blocking: true, detail: p ?? 'missing' });
  }
  return out;
}

function cniChecks(cfg: Config): Check[] {
  let files: string[] = [];
  try {
    files = fs.readdirSync(cfg.cni.confDir).filter((f) => /\.(conflist|conf|json)$/.test(f)).sort();
  } catch {
    /* none */
  }
  if (!files.length) return [{ name: 'cni config', level: 'warn', blocking: false, detail: `no network config in ${cfg.cni.confDir}: pods get loopback only (NetworkReady=false)` }];
  const file = path.join(cfg.cni.confDir, files[0]);
  let types: string[];
  try {
    const conf = JSON.parse(fs.readFileSync(file, 'utf8'));
    types = (conf.plugins ?? [conf]).map((p: { type?: string }) => String(p.type));
  } catch (err) {
    return [{ name: 'cni config', level: 'fail', blocking: false, detail: `${file}: ${(err as Error).message}` }];
  }
  const missing = types.filter((t) => !cfg.cni.binDirs.some((d) => fs.existsSync(path.join(d, t))));
  return [
    { name: 'cni config', level: 'ok', blocking: false, detail: `${file}: ${types.join(', ')}` },
    { name: 'cni plugins', level: missing.length ? 'fail' : 'ok', blocking: false, detail: missing.length ? `missing in ${cfg.cni.binDirs.join(':')}: ${missing.join(', ')}` : `found in ${cfg.cni.binDirs.join(':')}` },
  ];
}

function templateDirCheck(cfg: Config): Check {
  let dir = cfg.vm.templateDir;
  while (!fs.existsSync(dir)) dir = path.dirname(dir);
  const st = fs.statfsSync(dir);
  const freeMiB = Math.floor((st.bavail * st.bsize) / 2 ** 20);
  const tmpfs = st.type === TMPFS_MAGIC;
  return { name: 'template dir', level: tmpfs ? 'ok' : 'warn', blocking: false,
    detail: `${cfg.vm.templateDir} (${dir}): ${tmpfs ? 'tmpfs' : 'not tmpfs: template RAM on disk, clones slower'}, ${freeMiB} MiB free` };
}

function memoryCheck(): Check {
  const kb = Number(/^MemAvailable:\s+(\d+)/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  const mib = Math.floor(kb / 1024);
  return { name: 'memory', level: mib >= 1024 ? 'ok' : 'warn', blocking: false, detail: `${mib} MiB available (an idle pod VM: ~30 MiB cloned, ~190 MiB cold-booted under TCG)` };
}

async function socketCheck(cfg: Config): Promise<Check> {
  if (!fs.existsSync(cfg.socket)) {
    try {
      fs.accessSync(path.dirname(cfg.socket), fs.constants.W_OK);
      return { name: 'socket', level: 'info', blocking: false, detail: `${cfg.socket}: no daemon yet (directory writable)` };
    } catch {
      return { name: 'socket', level: 'info', blocking: false, detail: `${cfg.socket}: no daemon yet (made at start)` };
    }
  }
  try {
    return { name: 'socket', level: 'ok', blocking: false, detail: `${cfg.socket}: serving (${await criAnswers(cfg.socket, 3000)})` };
  } catch (err) {
    return { name: 'socket', level: 'warn', blocking: false, detail: `${cfg.socket}: there but not answering: ${(err as Error).message}` };
  }
}

export async function checkHost(cfg: Config): Promise<Report> {
  const checks: Check[] = [];
  checks.push(...qemuChecks(cfg), ...guestChecks(cfg));
  let accelerator: Report['accelerator'];
  if (cfg.vm.accelerator !== 'auto') {
    accelerator = { accel: cfg.vm.accelerator, reason: `configured ([vm] accelerator = "${cfg.vm.accelerator}")` };
  } else if (checks.some((c) => c.blocking && c.level === 'fail')) {
    accelerator = { accel: 'tcg', reason: 'KVM not probed: QEMU or the guest is missing' };
  } else {
    const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'podvisor-check-'));
    try {
      const logger = createLogger('silent');
      const qemu = { binary: cfg.vm.qemu, kernel: cfg.vm.kernel, initramfs: cfg.vm.initramfs, kernelArgs: cfg.vm.kernelArgs, launcher: cfg.vm.launcher, tcgCodeMiB: cfg.vm.tcgCodeMiB, ksm: false, logger };
      const p = await probeKvm(qemu, scratch);
      accelerator = { accel: p.kvm ? 'kvm' : 'tcg', reason: p.reason };
    } finally {
      fs.rmSync(scratch, { recursive: true, force: true });
    }
  }
  checks.unshift({ name: 'accelerator', level: accelerator.accel === 'kvm' ? 'ok' : 'warn', blocking: false,
    detail: accelerator.accel === 'kvm' ? `KVM: ${accelerator.reason}` : `TCG (emulation, several times slower): ${accelerator.reason}` });
  checks.push(deviceCheck('tun', '/dev/net/tun', true, 'pod NICs are taps'));
  checks.push(deviceCheck('vhost-net', '/dev/vhost-net', false, 'not used: NICs run without vhost'));
  checks.push(deviceCheck('vhost-vsock', '/dev/vhost-vsock', false, 'not used: the agent channel is virtio-serial'));
  checks.push(...cgroupCheck(), ...filesystemChecks(), ...cniChecks(cfg), templateDirCheck(cfg), memoryCheck(), await socketCheck(cfg));
  return { ok: !checks.some((c) => c.blocking && c.level === 'fail'), accelerator, checks };
}

function human(r: Report): string {
  const mark: Record<Level, string> = { ok: 'ok  ', warn: 'WARN', fail: 'FAIL', info: 'info' };
  const lines = r.checks.map((c) => `${mark[c.level]}  ${c.name.padEnd(20)} ${c.detail}`);
  lines.push('', r.ok ? 'this host can run pods' : 'this host cannot run pods: see FAIL lines');
  return `${lines.join('\n')}\n`;
}

export function registerCheckCommand(program: Command): void {
  program
    .command('check')
    .description('check whether this host can run pods (KVM probe, QEMU, devices, cgroups, CNI …); exit 1 when something blocking is missing')
    .option('--config <toml>', 'config file', DEFAULT_CONFIG)
    .option('--json', 'machine-readable report')
    .action(async (opts) => {
      let cfg: Config;
      try {
        cfg = loadConfig(opts.config, opts.config === DEFAULT_CONFIG);
      } catch (err) {
        process.stderr.write(`podvisor: ${(err as Error).message}\n`);
        process.exit(2);
      }
      const report = await checkHost(cfg);
      process.stdout.write(opts.json ? `${JSON.stringify(report, null, 2)}\n` : human(report));
      process.exit(report.ok ? 0 : 1);
    });
}
