// A small QMP client: one JSON object per line, commands answered in order, asynchronous events
// interleaved. Written here because the job is tiny and specific (dependencies.md).
import { EventEmitter } from 'node:events';
import type net from 'node:net';
import { connectWhenReady } from '../util/unix-socket';

export class QmpError extends Error {
  constructor(readonly errorClass: string, message: string) {
    super(message);
    this.name = 'QmpError';
  }
}

interface Waiter {
  resolve: (v: any) => void;
  reject: (e: Error) => void;
  command: string;
}

const MAX_LINE = 4 * 1024 * 1024;

/**
 * How long one command may go unanswered. QEMU answers from its main loop, which some commands
 * hold for a while (blockdev-add of a remote image waits for its connection, tens of seconds),
 * but a monitor silent for this long is broken: without a bound every later command of the VM
 * (they are serialized) and every caller holding a pod's lock around one would wait forever.
 */
export const QMP_COMMAND_TIMEOUT_MS = 120_000;

export class QmpClient extends EventEmitter {
  private buf = '';
  private readonly waiters: Waiter[] = [];
  private closed = false;
  private chain: Promise<unknown> = Promise.resolve();

  private constructor(private readonly sock: net.Socket) {
    super();
    sock.setEncoding('utf8');
    sock.on('data', (s: string) => this.onData(s));
    sock.on('error', () => this.onClose());
    sock.on('close', () => this.onClose());
  }

  /**
   * Connects (retrying until QEMU has created the socket), reads the greeting, enters command
   * mode. Every wait ends: a socket that closes before the greeting, or a QEMU that never sends
   * it, fails the attempt (a pending await with nothing to wake it would let Node exit).
   */
  static async connect(path: string, timeoutMs = 10_000): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    try {
      return await connectWhenReady(path, timeoutMs, async (sock) => {
        const client = new QmpClient(sock);
        try {
          await client.handshake(Math.max(100, deadline - Date.now()));
        } catch (err) {
          client.close();
          throw err;
        }
        return client;
      });
    } catch (err) {
      throw new Error(`cannot connect to QMP socket ${path}: ${(err as Error).message}`);
    }
  }

  private greeting?: (v: any) => void;

  /** The greeting and qmp_capabilities, within timeoutMs; fails at once if the socket closes. */
  private async handshake(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    let onClose: (() => void) | undefined;
    const failed = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new QmpError('Timeout', `no QMP handshake within ${timeoutMs} ms`)), timeoutMs);
      onClose = () => reject(new QmpError('Closed', 'QMP closed during the handshake'));
      if (this.closed) onClose();
      else this.once('close', onClose);
    });
    try {
      await Promise.race([new Promise((resolve) => (this.greeting = resolve)), failed]);
      await Promise.race([this.execute('qmp_capabilities'), failed]);
    } finally {
      this.greeting = undefined;
      clearTimeout(timer);
      this.off('close', onClose!);
    }
  }

  /**
   * Runs one command; commands are serialized so answers match their requests. One unanswered
   * within `timeoutMs` (from when it is sent) fails with a Timeout and closes the connection: a
   * late answer would otherwise be taken for the next command's, so every later command fails
   * at once as Closed (stop() then kills the process).
   */
  execute<T = any>(command: string, args?: object, timeoutMs = QMP_COMMAND_TIMEOUT_MS): Promise<T> {
    const run = () =>
      new Promise<T>((resolve, reject) => {
        if (this.closed) return reject(new QmpError('Closed', `QMP closed (${command})`));
        const timer = setTimeout(() => {
          reject(new QmpError('Timeout', `${command}: QEMU did not answer within ${timeoutMs} ms (its monitor connection is closed)`));
          this.close();
        }, timeoutMs);
        const done = <A extends unknown[]>(f: (...a: A) => void) => (...a: A) => {
          clearTimeout(timer);
          f(...a);
        };
        this.waiters.push({ resolve: done(resolve), reject: done(reject), command });
        this.sock.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
      });
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** Waits for the named event (optionally matching a predicate), or times out. */
  waitEvent(name: string, timeoutMs: number, match: (data: any) => boolean = () => true): Promise<any> {
    return new Promise((resolve, reject) => {
      const onEvent = (ev: any) => {
        if (ev.event === name && match(ev.data ?? {})) {
          cleanup();
          resolve(ev.data ?? {});
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new QmpError('Timeout', `no ${name} event within ${timeoutMs} ms`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.off('event', onEvent);
      };
      this.on('event', onEvent);
    });
  }

  close(): void {
    this.sock.destroy();
    this.onClose();
  }

  private onData(s: string): void {
    this.buf += s;
    if (this.buf.length > MAX_LINE) {
      this.close();
      return;
    }
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: any;
      try {
        msg = JSON.parse(line);
      } catch {
        continue;
      }
      if (msg.QMP) this.greeting?.(msg);
      else if (msg.event) this.emit('event', msg);
      else if ('return' in msg || 'error' in msg) {
        const w = this.waiters.shift();
        if (!w) continue;
        if (msg.error) w.reject(new QmpError(msg.error.class ?? 'GenericError', `${w.command}: ${msg.error.desc ?? 'error'}`));
        else w.resolve(msg.return);
      }
    }
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.waiters.splice(0)) w.reject(new QmpError('Closed', `QMP closed (${w.command})`));
    this.emit('close');
  }
}
