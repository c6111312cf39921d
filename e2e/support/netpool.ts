// A bridge name and a /24 that belong to this test run alone, so runs of the same e2e file in
// several e2e slots at once never share a bridge (one run's teardown deleting it under the other,
// or its leak check seeing the other's veths). The bridge name gets a random suffix; the subnet
// comes from a small pool, each entry held by an flock on /tmp/pv-subnet-<n>.lock for the life of
// the run. The lock is held by a `flock ... cat` child reading our stdin pipe: release() closes
// the pipe, and so does the kernel when this process dies, so a killed run never keeps a subnet.
// Trade-off: the pool is small (SLOTS /24s in 10.212.0.0/16; 10.214 is checkpoint.test's); a run that finds every entry held
// waits, then fails with a clear error.
import { execFileSync, spawn, type ChildProcessByStdio } from 'node:child_process';
import crypto from 'node:crypto';
import type { Readable, Writable } from 'node:stream';

const SLOTS = 8;
const WAIT_MS = 10 * 60_000;

export interface RunNetwork {
  /** `<prefix><6 hex>`, a Linux ifname (≤ 15 chars) no other run uses */
  bridge: string;
  /** the /24's first three octets, e.g. '10.212.3' */
  subnet: string;
  /** the pool entry (0..SLOTS-1): to derive other per-run resources, e.g. host ports */
  index: number;
  /** drops the subnet's lock (also dropped when the process dies) */
  release(): Promise<void>;
}

/** Holds /tmp/pv-subnet-<n>.lock, or resolves undefined when another process holds it. */
function tryLock(n: number): Promise<ChildProcessByStdio<Writable, Readable, null> | undefined> {
  return new Promise((resolve) => {
    const child = spawn('flock', ['-n', '-E', '99', `/tmp/pv-subnet-${n}.lock`, 'sh', '-c', 'echo held; exec cat >/dev/null'], { stdio: ['pipe', 'pipe', 'ignore'] });
    let out = '';
    child.stdout.on('data', (c) => {
      out += c;
      if (out.includes('held')) resolve(child);
    });
    child.on('exit', () => resolve(undefined));
    child.on('error', () => resolve(undefined));
  });
}

/** Deletes links left on this subnet by a killed run (we hold its lock: no live run uses it). */
function dropStaleLinks(subnet: string): void {
  const out = execFileSync('ip', ['-o', '-4', 'addr', 'show', 'to', `${subnet}.0/24`], { encoding: 'utf8' });
  for (const line of out.split('\n').filter(Boolean)) {
    const dev = line.split(/\s+/)[1].replace(/@.*$/, '');
    if (dev.startsWith('pv')) execFileSync('ip', ['link', 'del', dev], { stdio: 'ignore' });
  }
}

/** A bridge name and a /24 for this run; `prefix` at most 9 characters. */
export async function claimRunNetwork(prefix: string): Promise<RunNetwork> {
  if (prefix.length > 9) throw new Error(`bridge prefix ${prefix} longer than 9 characters`);
  const bridge = `${prefix}${crypto.randomBytes(3).toString('hex')}`;
  const deadline = Date.now() + WAIT_MS;
  const start = crypto.randomInt(SLOTS);
  for (;;) {
    for (let k = 0; k < SLOTS; k++) {
      const index = (start + k) % SLOTS;
      const holder = await tryLock(index);
      if (!holder) continue;
      const subnet = `10.212.${index}`;
      dropStaleLinks(subnet);
      const release = async () => {
        if (holder.exitCode !== null || holder.signalCode !== null) return;
        const exited = new Promise((r) => holder.once('exit', r));
        holder.stdin.end();
        await exited;
      };
      return { bridge, subnet, index, release };
    }
    if (Date.now() > deadline) throw new Error(`all ${SLOTS} test subnets (/tmp/pv-subnet-*.lock) held for ${WAIT_MS / 1000} s`);
    await new Promise((r) => setTimeout(r, 2_000));
  }
}
