// Shared set-up for the host backend's tests: the launcher the daemon would use, a small erofs
// image (busybox from this machine, users and groups), a scratch state/root pair whose state
// dir is a shared mount as the backend makes it, and leak checks.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..');

/** podvisor-launch as the daemon finds it: the guest build's, else cargo's. */
export function launcherPath(): string {
  const built = path.join(ROOT, 'build', 'guest', 'podvisor-launch');
  const cargo = path.join(ROOT, 'launcher', 'target', 'release', 'podvisor-launch');
  const newest = [built, cargo].filter((f) => fs.existsSync(f)).sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)[0];
  if (!newest) throw new Error('podvisor-launch is not built: bash guest/build.sh build/guest (or cargo build --release in launcher/)');
  const help = (() => {
    try {
      return execFileSync(newest, ['pinns'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (e) {
      return String((e as { stderr?: string }).stderr ?? '');
    }
  })();
  if (!help.includes('--dir')) throw new Error(`${newest} has no pinns subcommand: rebuild it`);
  return newest;
}

/** An erofs image with busybox (static), /etc/passwd and /etc/group; returns its file and id. */
export function busyboxErofs(dir: string): { id: string; erofsPath: string } {
  const tree = path.join(dir, 'tree');
  for (const d of ['bin', 'etc', 'tmp', 'proc', 'sys', 'dev', 'root', 'home/app']) fs.mkdirSync(path.join(tree, d), { recursive: true });
  fs.chmodSync(path.join(tree, 'tmp'), 0o1777);
  fs.copyFileSync('/bin/busybox', path.join(tree, 'bin', 'busybox'));
  fs.chmodSync(path.join(tree, 'bin', 'busybox'), 0o755);
  for (const a of ['sh', 'cat', 'echo', 'sleep', 'id', 'ls', 'hostname', 'ps', 'head', 'tr', 'true', 'false', 'stty', 'tty', 'ipcs', 'mount', 'wc', 'grep', 'nc', 'ip', 'cut', 'touch', 'mkdir']) {
    fs.symlinkSync('busybox', path.join(tree, 'bin', a));
  }
  fs.writeFileSync(path.join(tree, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n');
  fs.writeFileSync(path.join(tree, 'etc', 'group'), 'root:x:0:\napp:x:1000:\nextra:x:50000:app\n');
  const file = path.join(dir, 'image.erofs');
  execFileSync('mkfs.erofs', ['--quiet', file, tree], { stdio: 'ignore' });
  fs.rmSync(tree, { recursive: true, force: true });
  const id = 'sha256:' + crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  return { id, erofsPath: file };
}

/** Mount points under `dir` (any depth). */
export function mountsUnder(dir: string): string[] {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m) => m && (m === dir || m.startsWith(dir + '/')));
}

/** Unmounts everything under `dir` (deepest first) and removes it. */
export function removeDir(dir: string): void {
  for (const m of mountsUnder(dir).sort((a, b) => b.length - a.length)) {
    try {
      execFileSync('umount', ['-l', m], { stdio: 'ignore' });
    } catch {
      /* already gone */
    }
  }
  fs.rmSync(dir, { recursive: true, force: true });
}

/** Live (not zombie) processes whose command line contains `needle`. */
export function liveProcesses(needle: string): number[] {
  const out: number[] = [];
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
    try {
      const stat = fs.readFileSync(`/proc/${p}/stat`, 'utf8');
      if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) continue;
      if (fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').replace(/\0/g, ' ').includes(needle)) out.push(Number(p));
    } catch {
      /* gone */
    }
  }
  return out;
}

/** cgroup directories named `name` under any hierarchy (depth ≤ 4). */
export function cgroupsNamed(name: string): string[] {
  const out: string[] = [];
  const walk = (dir: string, depth: number) => {
    if (depth > 4) return;
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      const p = path.join(dir, e.name);
      if (e.name === name) out.push(p);
      walk(p, depth + 1);
    }
  };
  walk('/sys/fs/cgroup', 0);
  return out;
}
