// One cluster at a time on a machine: every cluster shares the pod bridge, the node address on lo
// and the iptables guard, so a second one would collide with (and, tearing down, undo) the first.
// The lock is flock(1) on a file, held by a child process that lives until we close its stdin or
// we die: a crashed test run never leaves the lock taken.
import { spawn, type ChildProcess } from 'node:child_process';

export const CLUSTER_LOCK = '/tmp/pv-k8s-cluster.lock';

export class ClusterLock {
  private constructor(private readonly holder: ChildProcess) {}

  /** Waits (up to `ms`) until no other cluster runs on this machine, then holds the lock. */
  static acquire(onWait?: () => void, ms = 90 * 60_000): Promise<ClusterLock> {
    return new Promise((resolve, reject) => {
      // flock's child: says it holds the lock, then waits for stdin to close
      const holder = spawn('flock', ['-x', CLUSTER_LOCK, 'sh', '-c', 'echo locked; exec cat >/dev/null'], { stdio: ['pipe', 'pipe', 'inherit'] });
      const waiting = setTimeout(() => onWait?.(), 2000);
      const giveUp = setTimeout(() => {
        holder.kill('SIGKILL');
        reject(new Error(`another cluster held ${CLUSTER_LOCK} for ${ms / 60_000} min`));
      }, ms);
      const done = () => {
        clearTimeout(waiting);
        clearTimeout(giveUp);
      };
      holder.stdout!.once('data', () => {
        done();
        resolve(new ClusterLock(holder));
      });
      holder.once('error', (err) => {
        done();
        reject(err);
      });
      holder.once('exit', (code) => {
        done();
        reject(new Error(`flock ${CLUSTER_LOCK} exited ${code}`));
      });
    });
  }

  release(): Promise<void> {
    if (this.holder.exitCode !== null || this.holder.signalCode !== null) return Promise.resolve();
    const exited = new Promise<void>((r) => this.holder.once('exit', () => r()));
    this.holder.stdin!.end();
    return exited;
  }
}
