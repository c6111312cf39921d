// What a test cluster changes on the host, each change recorded with its undo so teardown leaves
// the machine as it found it: the node's address on `lo`, a FORWARD guard that keeps pod traffic
// on this machine, the sysctls kubelet sets, kubelet's iptables chains and cgroups, its
// /var/log/containers links and the mounts under its root dir. Undo steps run newest first and
// each one runs even when an earlier one failed; their errors are collected, not thrown early.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const ok = (cmd: string, args: string[]) => spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;

/** The sysctls kubelet sets on start (container manager's kernel tunables). */
export const KUBELET_SYSCTLS = ['vm.overcommit_memory', 'vm.panic_on_oom', 'kernel.panic', 'kernel.panic_on_oops', 'kernel.keys.root_maxkeys', 'kernel.keys.root_maxbytes'];
const IPTABLES_TABLES = ['filter', 'nat', 'mangle'];

export class HostChanges {
  private readonly undo: { what: string; fn: () => void }[] = [];

  private record(what: string, fn: () => void): void {
    this.undo.push({ what, fn });
  }

  /**
   * `ip/32` on lo: the node's InternalIP (kubelet refuses a loopback node address). An address
   * already there is used and left there (not ours to remove).
   */
  addLoopbackAddress(ip: string): void {
    if (sh('ip', ['-4', 'addr', 'show', 'dev', 'lo']).includes(` ${ip}/32 `)) return;
    sh('ip', ['addr', 'add', `${ip}/32`, 'dev', 'lo']);
    this.record(`lo address ${ip}`, () => { if (sh('ip', ['-4', 'addr', 'show', 'dev', 'lo']).includes(` ${ip}/32 `)) sh('ip', ['addr', 'del', `${ip}/32`, 'dev', 'lo']); });
  }

  /**
   * A chain first on FORWARD: traffic from or to the pod CIDR is forwarded only within it; the
   * host itself (INPUT/OUTPUT) stays reachable. Nothing a pod sends leaves the machine.
   */
  addForwardGuard(chain: string, podCidr: string): void {
    sh('iptables', ['-N', chain]);
    sh('iptables', ['-A', chain, '-s', podCidr, '-d', podCidr, '-j', 'ACCEPT']);
    sh('iptables', ['-A', chain, '-s', podCidr, '-j', 'DROP']);
    sh('iptables', ['-A', chain, '-d', podCidr, '-j', 'DROP']);
    sh('iptables', ['-I', 'FORWARD', '1', '-j', chain]);
    this.record(`iptables chain ${chain}`, () => {
      while (ok('iptables', ['-D', 'FORWARD', '-j', chain]));
      if (ok('iptables', ['-F', chain])) sh('iptables', ['-X', chain]);
    });
  }

  /** Saves sysctls now; teardown writes back the values seen. */
  saveSysctls(names: string[]): void {
    const saved = names.map((n) => [n, sh('sysctl', ['-n', n]).trim()] as const);
    this.record('sysctls', () => { for (const [n, v] of saved) sh('sysctl', ['-q', '-w', `${n}=${v}`]); });
  }

  /** Chains named KUBE-* that appear in iptables/ip6tables after now are removed at teardown, with the rules that jump to them (kubelet's canaries and KUBE-FIREWALL). */
  removeNewKubeChains(): void {
    const before = kubeChains();
    this.record('kubelet iptables chains', () => {
      for (const c of kubeChains()) {
        if (before.has(c)) continue;
        const [bin, table, chain] = c.split(' ');
        // the jumps into it first (kubelet's KUBE-FIREWALL is jumped to from INPUT and OUTPUT)
        for (const rule of sh(bin, ['-t', table, '-S']).split('\n')) {
          if (rule.startsWith('-A ') && rule.endsWith(` -j ${chain}`)) ok(bin, ['-t', table, '-D', ...rule.slice(3).split(' ')]);
        }
        ok(bin, ['-t', table, '-F', chain]);
        if (!ok(bin, ['-t', table, '-X', chain])) throw new Error(`cannot remove ${c}`);
      }
    });
  }

  /**
   * Makes cgroup `root` (kubelet's cgroupRoot: kubelet wants it to exist) in every hierarchy,
   * cpuset with its parent's CPUs and memory nodes (v1 does not inherit them); teardown removes
   * it with everything below, deepest first.
   */
  makeCgroupTree(root: string): void {
    this.record(`cgroups ${root}`, () => { for (const d of cgroupDirs(root)) removeTree(d); });
    for (const h of fs.readdirSync('/sys/fs/cgroup')) {
      const top = path.join('/sys/fs/cgroup', h);
      if (!fs.existsSync(path.join(top, 'cgroup.procs'))) continue;
      const dir = path.join(top, root);
      fs.mkdirSync(dir, { recursive: true });
      for (const f of ['cpuset.cpus', 'cpuset.mems']) {
        if (fs.existsSync(path.join(top, f))) fs.writeFileSync(path.join(dir, f), fs.readFileSync(path.join(top, f)));
      }
    }
  }

  /** Unmounts whatever is mounted under `dir`, then deletes it. */
  removeDir(dir: string): void {
    this.record(`dir ${dir}`, () => {
      for (const m of mountsUnder(dir).reverse()) ok('umount', ['-l', m]);
      fs.rmSync(dir, { recursive: true, force: true });
    });
  }

  /** Symlinks in `linkDir` pointing into `targetDir` go at teardown (kubelet's /var/log/containers). */
  removeLinksInto(linkDir: string, targetDir: string): void {
    const existed = fs.existsSync(linkDir);
    this.record(`links in ${linkDir}`, () => {
      if (!fs.existsSync(linkDir)) return;
      for (const f of fs.readdirSync(linkDir)) {
        const p = path.join(linkDir, f);
        try {
          if (fs.readlinkSync(p).startsWith(targetDir)) fs.rmSync(p);
        } catch { /* not a link */ }
      }
      if (!existed && fs.readdirSync(linkDir).length === 0) fs.rmdirSync(linkDir);
    });
  }

  /** Any other undo step. */
  onTeardown(what: string, fn: () => void | Promise<void>): void {
    this.record(what, fn as () => void);
  }

  async restore(): Promise<string[]> {
    const errors: string[] = [];
    while (this.undo.length) {
      const { what, fn } = this.undo.pop()!;
      try {
        await fn();
      } catch (err) {
        errors.push(`${what}: ${(err as Error).message}`);
      }
    }
    return errors;
  }
}

function kubeChains(): Set<string> {
  const out = new Set<string>();
  for (const bin of ['iptables', 'ip6tables']) {
    for (const table of IPTABLES_TABLES) {
      let rules = '';
      try { rules = sh(bin, ['-t', table, '-S']); } catch { continue; }
      for (const m of rules.matchAll(/^-N (KUBE-\S+)$/gm)) out.add(`${bin} ${table} ${m[1]}`);
    }
  }
  return out;
}

/** The directories of cgroup `root` in each mounted v1 hierarchy (and v2, if mounted). */
export function cgroupDirs(root: string): string[] {
  return fs.readdirSync('/sys/fs/cgroup').map((h) => path.join('/sys/fs/cgroup', h, root)).filter((d) => fs.existsSync(d));
}

function removeTree(dir: string): void {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) removeTree(path.join(dir, e.name));
  // a cgroup is removed with rmdir (its control files are not real files)
  for (let i = 0; ; i++) {
    try {
      fs.rmdirSync(dir);
      return;
    } catch (err) {
      // EBUSY while a dying process still counts; retry briefly
      if (i >= 50 || (err as NodeJS.ErrnoException).code !== 'EBUSY') throw err;
      execFileSync('sleep', ['0.1']);
    }
  }
}

/** Mount points at or below `dir`, in mount-table order. */
export function mountsUnder(dir: string): string[] {
  const prefix = path.resolve(dir);
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m) => m && (m === prefix || m.startsWith(`${prefix}/`)));
}
