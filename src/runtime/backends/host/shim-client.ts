// The daemon's side of a host container's shim (`podvisor-launch shim`, launcher/src/shim):
// starting it, which creates the container, and connections to its socket. The daemon keeps one
// connection per container for requests and the exit event; attach sessions and execs get a
// connection each, whose stdout/stderr arrive as streams that pause the socket (and so the
// shim, and so the process) when their reader falls behind. Frames: kind byte, 4-byte
// big-endian length, payload (launcher/src/shim/frame.rs).
import { spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { PassThrough } from 'node:stream';

const REQUEST = 0x43; // 'C'
const STDIN = 0x49; // 'I'
const STDIN_END = 0x45; // 'E'
const REPLY = 0x52; // 'R'
const STDOUT = 0x31; // '1'
const STDERR = 0x32; // '2'
const EXIT = 0x58; // 'X'
/** the shim's frames are at most 1 MiB; a bigger one is a broken shim */
const MAX_FRAME = (1 << 20) + 5;
const READY_LIMIT = 64 * 1024;

export interface ShimOptions {
  launcher: string;
  /** libcontainer's id of the container */
  id: string;
  bundle: string;
  ociRoot: string;
  socket: string;
  exitFile: string;
  /** CRI log file; none: output is dropped */
  log?: string;
  tty: boolean;
  stdin: boolean;
  stdinOnce: boolean;
  timeoutMs?: number;
}

/** What the shim wrote when the container's process exited. */
export interface ShimExit {
  exit_code: number;
  signal: number;
  oom_killed: boolean;
  /** ns since the epoch, decimal */
  finished_at: string;
}

/**
 * Starts the shim, which creates the container and answers with the init's pid on stdout. The
 * shim runs in a session of its own and outlives the daemon.
 */
export function spawnShim(o: ShimOptions): Promise<{ pid: number; shimPid: number }> {
  const args = ['shim', '--id', o.id, '--bundle', o.bundle, '--oci-root', o.ociRoot, '--socket', o.socket, '--exit-file', o.exitFile];
  if (o.log) args.push('--log', o.log);
  if (o.tty) args.push('--tty');
  if (o.stdin) args.push('--stdin');
  if (o.stdinOnce) args.push('--stdin-once');
  return new Promise((resolve, reject) => {
    const child = spawn(o.launcher, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let done = false;
    const finish = (e: Error | null, v?: { pid: number; shimPid: number }) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      child.unref();
      if (e) reject(e);
      else resolve(v!);
    };
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      finish(new Error(`the container's shim did not answer within ${o.timeoutMs ?? 60_000} ms`));
    }, o.timeoutMs ?? 60_000);
    child.stdout!.on('data', (d) => {
      out += d;
      if (out.length > READY_LIMIT) {
        child.kill('SIGKILL');
        finish(new Error('the shim wrote too much'));
        return;
      }
      const nl = out.indexOf('\n');
      if (nl < 0) return;
      let msg: any;
      try {
        msg = JSON.parse(out.slice(0, nl));
      } catch {
        finish(new Error(`the shim answered ${JSON.stringify(out.slice(0, 200))}`));
        return;
      }
      if (Number.isInteger(msg?.pid) && msg.pid > 0) finish(null, { pid: msg.pid, shimPid: child.pid! });
      else finish(new Error(String(msg?.error ?? 'the shim failed')));
    });
    child.stderr!.on('data', (d) => {
      if (err.length < READY_LIMIT) err += d;
    });
    child.on('error', (e) => finish(e));
    child.on('exit', (code, sig) => {
      // stdout may still hold the answer: let it be read first
      setImmediate(() => finish(new Error(`the shim exited (${sig ?? code}) before the container existed${err.trim() ? `: ${err.trim().slice(0, 2000)}` : ''}`)));
    });
    child.stdout!.on('end', () => setImmediate(() => finish(new Error(`the shim closed its output${err.trim() ? `: ${err.trim().slice(0, 2000)}` : ''}`))));
  });
}

/** A connection to a shim. */
export class ShimConnection extends EventEmitter {
  private buf: Buffer = Buffer.alloc(0);
  private readonly pending: Array<{ resolve: (v: any) => void; reject: (e: Error) => void }> = [];
  /** output of an attached or exec'd process */
  readonly stdout = new PassThrough();
  readonly stderr = new PassThrough();
  readonly closed: Promise<void>;
  private ended = false;

  private constructor(private readonly sock: net.Socket) {
    super();
    this.closed = new Promise((resolve) => sock.once('close', () => resolve()));
    sock.on('data', (d: Buffer) => this.onData(d));
    sock.on('error', () => undefined); // 'close' follows
    sock.once('close', () => {
      this.ended = true;
      const err = new Error('the shim closed the connection');
      for (const p of this.pending.splice(0)) p.reject(err);
      this.stdout.end();
      this.stderr.end();
      this.emit('close');
    });
    for (const s of [this.stdout, this.stderr]) s.on('drain', () => sock.resume());
  }

  static connect(socket: string, timeoutMs = 5000): Promise<ShimConnection> {
    return new Promise((resolve, reject) => {
      const sock = net.connect(socket);
      const t = setTimeout(() => {
        sock.destroy();
        reject(new Error(`connecting to the shim at ${socket}: timed out`));
      }, timeoutMs);
      sock.once('connect', () => {
        clearTimeout(t);
        resolve(new ShimConnection(sock));
      });
      sock.once('error', (e) => {
        clearTimeout(t);
        reject(e);
      });
    });
  }

  get isClosed(): boolean {
    return this.ended;
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    while (this.buf.length >= 5) {
      const kind = this.buf[0];
      const len = this.buf.readUInt32BE(1);
      if (len + 5 > MAX_FRAME) {
        this.sock.destroy(new Error(`the shim sent a frame of ${len} bytes`));
        return;
      }
      if (this.buf.length < 5 + len) return;
      const payload = this.buf.subarray(5, 5 + len);
      this.buf = this.buf.subarray(5 + len);
      this.frame(kind, payload);
    }
  }

  private frame(kind: number, payload: Buffer): void {
    switch (kind) {
      case REPLY: {
        const p = this.pending.shift();
        let v: any;
        try {
          v = JSON.parse(payload.toString());
        } catch {
          v = { ok: false, error: 'the shim sent an unreadable reply' };
        }
        if (!p) return;
        if (v?.ok) p.resolve(v);
        else p.reject(new Error(String(v?.error ?? 'the shim refused the request')));
        return;
      }
      case STDOUT:
      case STDERR: {
        const s = kind === STDOUT ? this.stdout : this.stderr;
        if (!s.write(Buffer.from(payload))) this.sock.pause();
        return;
      }
      case EXIT: {
        let v: any = {};
        try {
          v = JSON.parse(payload.toString());
        } catch {
          /* an exit without details */
        }
        this.emit('exit', v);
        return;
      }
      default:
        this.sock.destroy(new Error(`the shim sent a frame of unknown kind ${kind}`));
    }
  }

  private send(kind: number, payload: Buffer): boolean {
    const head = Buffer.alloc(5);
    head[0] = kind;
    head.writeUInt32BE(payload.length, 1);
    return this.sock.write(Buffer.concat([head, payload]));
  }

  /** One request; resolves with the reply (without `ok`), rejects with the shim's error. */
  request(op: string, params: Record<string, unknown> = {}, timeoutMs = 30_000): Promise<any> {
    if (this.ended) return Promise.reject(new Error('the shim connection is closed'));
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        reject(new Error(`the shim did not answer ${op} within ${timeoutMs} ms`));
        this.sock.destroy(); // replies come in order: a lost one breaks the connection
      }, timeoutMs);
      this.pending.push({
        resolve: (v) => { clearTimeout(t); resolve(v); },
        reject: (e) => { clearTimeout(t); reject(e); },
      });
      this.send(REQUEST, Buffer.from(JSON.stringify({ op, ...params })));
    });
  }

  /** Writes stdin bytes (at most 1 MiB per frame); resolves when the socket took them. */
  async writeStdin(data: Buffer): Promise<void> {
    for (let off = 0; off < data.length; off += 1 << 20) {
      if (this.ended) return;
      if (!this.send(STDIN, data.subarray(off, off + (1 << 20)))) await new Promise((r) => this.sock.once('drain', r));
    }
  }

  endStdin(): void {
    if (!this.ended) this.send(STDIN_END, Buffer.alloc(0));
  }

  close(): void {
    this.sock.destroy();
  }
}
