// The daemon under a service manager's NOTIFY_SOCKET (Type=notify), with systemd's stop
// semantics (KillMode=process: SIGTERM to the daemon alone, then a new process): a real unix
// datagram socket (test/support/notify-listener.py) receives the notifications and, the moment
// READY=1 arrives, connects to the CRI socket, so READY=1 sent before the socket listens would
// show. This machine has no systemd as PID 1 (see the README's systemd section for the unit).

import { ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { TestDaemon, podConfig, podQemuPids } from './support/daemon';

const LISTENER = path.join(__dirname, '..', 'test', 'support', 'notify-listener.py');

interface Note { t: number; msg: string; socket_listening?: boolean; cri?: string }

class Listener {
  readonly notes: Note[] = [];
  private waiters: Array<() => void> = [];
  private constructor(readonly proc: ChildProcess) {}

  static async start(sock: string): Promise<Listener> {
    const proc = spawn('python3', [LISTENER, sock], { stdio: ['ignore', 'pipe', 'inherit'] });
    const l = new Listener(proc);
    const bound = new Promise<void>((resolve, reject) => {
      proc.once('exit', (c) => reject(new Error(`notify listener exited ${c}`)));
      readline.createInterface({ input: proc.stdout! }).on('line', (line) => {
        const rec = JSON.parse(line);
        if (rec.bound) return resolve();
        l.notes.push(rec);
        for (const w of l.waiters.splice(0)) w();
      });
    });
    await bound;
    return l;
  }

  /** Waits until a notification whose lines include `field` arrives (after the first `from`). */
  async waitFor(field: string, from = 0, ms = 60_000): Promise<Note> {
    const deadline = Date.now() + ms;
    for (;;) {
      const n = this.notes.slice(from).find((x) => x.msg.split('\n').includes(field));
      if (n) return n;
      if (Date.now() > deadline) throw new Error(`no ${field} in ${JSON.stringify(this.notes)}`);
      await new Promise<void>((r) => { this.waiters.push(r); setTimeout(r, 500); });
    }
  }
}

describe('systemd notify protocol (Type=notify) and restart with KillMode=process', () => {
  let dir: string;
  let listener: Listener;
  let d: TestDaemon;

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-notify-'));
  });
  afterAll(async () => {
    await d?.destroy();
    listener?.proc.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  }, 120_000);

  test('STATUS while starting, READY=1 only once the CRI socket listens and answers', async () => {
    listener = await Listener.start(path.join(dir, 'notify.sock'));
    d = await TestDaemon.start({ env: { ...process.env, NOTIFY_SOCKET: path.join(dir, 'notify.sock') }, templates: false });
    const ready = await listener.waitFor('READY=1');
    expect(ready.cri).toBe(d.socket);
    expect(ready.socket_listening).toBe(true);
    expect(ready.msg).toMatch(/^STATUS=serving CRI on \S+ \(podvisor \d+\.\d+\.\d+\)$/m);
    expect(listener.notes[0].msg).toMatch(/^STATUS=starting/);
    expect(listener.notes.filter((n) => n.msg.includes('READY=1'))).toHaveLength(1);
  }, 180_000);

  test('SIGTERM: STOPPING=1; a new process keeps the pod and its VM, and is READY again', async () => {
    const pod = (await d.runtime('RunPodSandbox', { config: podConfig('notify-pod', path.join(d.dir, 'logs')) })).pod_sandbox_id;
    const vms = podQemuPids(d.state);
    expect(vms).toHaveLength(1);
    const before = listener.notes.length;
    await d.stopProcess(); // KillMode=process: only the daemon gets SIGTERM
    const stopping = await listener.waitFor('STOPPING=1', before);
    expect(stopping.msg).toMatch(/^STATUS=stopping/m);
    expect(podQemuPids(d.state)).toEqual(vms);
    const again = listener.notes.length;
    await d.launch();
    const ready = await listener.waitFor('READY=1', again);
    expect(ready.socket_listening).toBe(true);
    const st = await d.runtime('PodSandboxStatus', { pod_sandbox_id: pod });
    expect(st.status.state).toBe('SANDBOX_READY');
    expect(podQemuPids(d.state)).toEqual(vms);
    await d.runtime('StopPodSandbox', { pod_sandbox_id: pod });
    await d.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
  }, 240_000);
});
