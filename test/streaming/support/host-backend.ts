// A StreamingBackend made of host processes and host TCP ports, standing in for pod VMs:
// exec spawns the command (under `script` for a tty), attach joins a long-running `cat` per
// container, port-forward dials 127.0.0.1:<port>.
import { type ChildProcess, spawn } from 'node:child_process';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { failedPrecondition, notFound } from '../../../src/util/errors';
import type { ProcessIO, StreamingBackend, TerminalSize } from '../../../src/streaming/backend';

export class HostBackend implements StreamingBackend {
  readonly containers = new Map<string, 'running' | 'exited'>([
    ['c1', 'running'],
    ['stopped', 'exited'],
  ]);
  readonly sandboxes = new Set(['pod1']);
  readonly resizes: TerminalSize[] = [];
  readonly execs: Array<{ cmd: string[]; tty: boolean }> = [];
  /** pids of the exec'd processes, in order (a test reads how much one has written) */
  readonly execPids: number[] = [];
  /** what attach handed to its clients' stdout so far (a test waits for its echo, not a clock) */
  attachedOut = '';
  private readonly attached = new Map<string, ChildProcess>();
  /** exec'd processes still running (stop() ends them) */
  private readonly children = new Set<ChildProcess>();

  checkExec(id: string, _cmd: string[], _tty: boolean, _stdin: boolean): void {
    this.checkContainer(id);
  }
  checkAttach(id: string, _stdin: boolean): void {
    this.checkContainer(id);
  }
  checkPortForward(id: string): void {
    if (!this.sandboxes.has(id)) throw notFound(`sandbox ${id} not found`);
  }
  private checkContainer(id: string): void {
    const s = this.containers.get(id);
    if (!s) throw notFound(`container ${id} not found`);
    if (s !== 'running') throw failedPrecondition(`container ${id} is not running`);
  }

  private consumeResizes(io: ProcessIO): void {
    if (!io.resize) return;
    void (async () => {
      for await (const s of io.resize!) this.resizes.push(s);
    })();
  }

  async exec(_id: string, cmd: string[], io: ProcessIO): Promise<{ exitCode: number }> {
    this.execs.push({ cmd, tty: io.tty });
    this.consumeResizes(io);
    const quoted = cmd.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
    const child = io.tty
      ? spawn('script', ['-qfec', quoted, '/dev/null'], { stdio: 'pipe' })
      : spawn(cmd[0], cmd.slice(1), { stdio: 'pipe' });
    this.children.add(child);
    if (child.pid) this.execPids.push(child.pid);
    child.once('exit', () => this.children.delete(child));
    const exited = new Promise<number>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (code, signal) => resolve(code ?? 128 + (signal ? 9 : 0)));
    });
    child.stdin!.on('error', () => undefined);
    if (io.stdin) {
      io.stdin.pipe(child.stdin!);
      // a client that went away without closing stdin: the process gets EOF, as in a pod
      io.stdin.once('close', () => (io.tty ? child.kill('SIGHUP') : child.stdin!.end())); // a tty hangs up
    } else child.stdin!.end();
    const drained: Array<Promise<void>> = [];
    const pipeOut = (from: NodeJS.ReadableStream, to: NodeJS.WritableStream | undefined) => {
      if (!to) return void (from as any).resume();
      from.pipe(to, { end: false });
      drained.push(new Promise((r) => from.once('end', () => r())));
    };
    pipeOut(child.stdout!, io.stdout);
    pipeOut(child.stderr!, io.stderr ?? io.stdout);
    const exitCode = await exited;
    await Promise.all(drained);
    if (io.stdin) io.stdin.unpipe(child.stdin!);
    return { exitCode };
  }

  /** The container's own stdio: one `cat` per container that every attach shares. */
  async attach(id: string, io: ProcessIO): Promise<void> {
    this.consumeResizes(io);
    let proc = this.attached.get(id);
    if (!proc) {
      proc = spawn('cat', [], { stdio: 'pipe' });
      this.attached.set(id, proc);
    }
    const p = proc;
    const out = io.stdout;
    const onData = (b: Buffer) => {
      out?.write(b);
      this.attachedOut += b.toString();
    };
    p.stdout!.on('data', onData);
    const onIn = (b: Buffer) => p.stdin!.write(b);
    io.stdin?.on('data', onIn);
    await new Promise<void>((resolve) => {
      io.stdin?.once('end', resolve);
      io.stdin?.once('close', resolve);
      out?.once('close', resolve);
      p.once('exit', resolve);
    });
    p.stdout!.off('data', onData);
    io.stdin?.off('data', onIn);
  }

  async portForward(_sandbox: string, port: number, conn: Duplex): Promise<void> {
    const sock = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    });
    await new Promise<void>((resolve) => {
      let open = 2;
      const done = () => --open === 0 && resolve();
      sock.on('error', () => conn.destroy());
      conn.on('error', () => sock.destroy());
      conn.pipe(sock); // client → pod; ends the socket's write side on EOF
      sock.pipe(conn); // pod → client
      sock.once('close', () => {
        conn.end();
        resolve();
      });
      conn.once('close', () => sock.destroy());
      sock.once('end', done);
      conn.once('end', done);
    });
  }

  stop(): void {
    for (const p of this.attached.values()) p.kill();
    for (const p of this.children) p.kill('SIGKILL');
    this.attached.clear();
  }
}
