// The cluster's long-running processes (etcd, the control plane, kubelet, the CSI plugin): each
// in a process group of its own with its output in a log file, stopped with SIGTERM and then
// SIGKILL of the whole group, so nothing it started outlives the cluster.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export class Proc {
  private readonly child: ChildProcess;
  private readonly exited: Promise<void>;

  constructor(readonly name: string, bin: string, args: string[], readonly logFile: string, env: NodeJS.ProcessEnv = process.env) {
    fs.mkdirSync(path.dirname(logFile), { recursive: true });
    const fd = fs.openSync(logFile, 'a');
    this.child = spawn(bin, args, { stdio: ['ignore', fd, fd], detached: true, env });
    fs.closeSync(fd);
    this.exited = new Promise((r) => this.child.once('exit', () => r()));
  }

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** The last bytes of its log (for error messages). */
  tail(bytes = 3000): string {
    try {
      const s = fs.readFileSync(this.logFile, 'utf8');
      return s.slice(-bytes);
    } catch {
      return '';
    }
  }

  /** Throws (a Fatal: no use waiting longer) with its log tail if it has exited. */
  assertRunning(): void {
    if (!this.running) throw new Fatal(`${this.name} exited (${this.child.exitCode ?? this.child.signalCode}):\n${this.tail()}`);
  }

  async stop(graceMs = 10_000): Promise<void> {
    if (this.running) {
      this.signal('SIGTERM');
      await Promise.race([this.exited, new Promise((r) => setTimeout(r, graceMs))]);
    }
    // the group too: children of a process that exited on SIGTERM
    this.signal('SIGKILL');
    if (this.running) await this.exited;
  }

  private signal(sig: NodeJS.Signals): void {
    try {
      process.kill(-this.pid, sig);
    } catch { /* group gone */ }
  }
}

/** An error `until` does not retry: waiting longer cannot help (a process died). */
export class Fatal extends Error {}

/**
 * Calls `fn` until it returns without throwing, every `everyMs`, failing with its last error
 * after `ms`, or at once on a Fatal.
 */
export async function until<T>(what: string, fn: () => Promise<T> | T, ms: number, everyMs = 500): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof Fatal) throw new Error(`${what}: ${err.message}`);
      if (Date.now() > deadline) throw new Error(`${what}: not within ${ms / 1000} s: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, everyMs));
    }
  }
}

/** Whether a process of this pid exists (signal 0: nothing is sent). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
