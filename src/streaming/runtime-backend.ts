// The runtime side of exec, attach and port-forward: processes and ports inside pods, reached
// through the pod's streams (runtime/pod-backend.ts; a VM pod's are agent streams). Node stream
// piping carries back-pressure from the client to the pod's process in both directions.
import crypto from 'node:crypto';
import { Duplex, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { PodStream } from '../runtime/pod-backend';
import { failedPrecondition, inContext, invalidArgument } from '../util/errors';
import type { ProcessIO, StreamingBackend } from './backend';
import type { Logger } from '../util/log';
import { ContainerManager, Live } from '../runtime/containers';
import type { SandboxManager } from '../runtime/sandboxes';

/** Writes `src` into `dst` without ending `dst` (another writer may share it). */
async function copyInto(src: AsyncIterable<Buffer>, dst: Writable): Promise<void> {
  for await (const chunk of src) {
    if (!dst.write(chunk)) await new Promise((r) => dst.once('drain', r));
  }
}

function nullWriter(): Writable {
  return new Writable({ write: (_c, _e, cb) => cb() });
}

/**
 * How long a streaming exec's process may take to start in the pod. The user waits for it (no
 * CRI deadline here, and containerd's exec has no fixed one); a guest starved of CPU (TCG on a
 * loaded machine) took over the agent's default 30 s, so this is the bound for a hung guest only.
 */
export const EXEC_START_TIMEOUT_MS = 120_000;

export class RuntimeStreamingBackend implements StreamingBackend {
  constructor(
    private readonly containers: ContainerManager,
    private readonly sandboxes: SandboxManager,
    private readonly logger: Logger,
  ) {}

  private running(containerId: string): Live {
    const c = this.containers.get(containerId);
    if (c.rec.state !== 'CONTAINER_RUNNING') throw failedPrecondition(`container ${c.rec.id} is not running`);
    return c;
  }

  checkExec(containerId: string, cmd: string[]): void {
    if (!Array.isArray(cmd) || cmd.length === 0) throw invalidArgument('cmd is required');
    this.running(containerId);
  }

  checkAttach(containerId: string, stdin: boolean): void {
    const c = this.running(containerId);
    if (stdin && !c.rec.config.stdin) throw invalidArgument(`container ${c.rec.id} was not created with stdin`);
  }

  checkPortForward(sandboxId: string): void {
    const sb = this.sandboxes.get(sandboxId);
    if (sb.rec.state !== 'SANDBOX_READY' || !sb.pod) throw failedPrecondition(`pod sandbox ${sb.rec.id} is not ready`);
  }

  async exec(containerId: string, cmd: string[], io: ProcessIO): Promise<{ exitCode: number }> {
    const c = this.running(containerId);
    const pod = this.containers.podOf(c);
    const execId = crypto.randomBytes(8).toString('hex');
    const stdout = pod.openStream();
    const stderr = io.tty ? undefined : pod.openStream();
    const stdin = io.stdin ? pod.openStream() : undefined;
    const exit = this.containers.expectExecExit(execId);
    // output nobody asked for is still read, so the process never blocks on it
    const sink = (src: PodStream, dst: Writable | undefined) => (dst ? copyInto(src, dst) : copyInto(src, nullWriter()));
    // caught from the start: if exec.start fails, `finally` destroys the streams and these reject
    // (ERR_STREAM_PREMATURE_CLOSE) with nobody awaiting them, an unhandled rejection that kills the daemon
    const outputs = [sink(stdout, io.stdout), stderr ? sink(stderr, io.stderr) : Promise.resolve()].map((p) => p.catch(() => undefined));
    try {
      await pod.exec({
        container_id: c.rec.id, exec_id: execId, args: cmd, env: null, cwd: null, tty: io.tty,
        stdin: stdin?.id ?? 0, stdout: stdout.id, stderr: stderr?.id ?? 0,
      }, EXEC_START_TIMEOUT_MS);
      if (stdin && io.stdin) pipeline(io.stdin, stdin).catch(() => stdin.destroy());
      if (io.resize) this.forwardResize(io.resize, c.rec.id, execId);
      const ev = await exit;
      await Promise.all(outputs);
      return { exitCode: Number.isInteger(ev.exit_code) ? (ev.exit_code as number) : 255 };
    } catch (err) {
      throw inContext(err, 'exec');
    } finally {
      this.containers.forgetExec(execId);
      stdin?.destroy();
      stdout.destroy();
      stderr?.destroy();
    }
  }

  private async forwardResize(sizes: AsyncIterable<{ width: number; height: number }>, containerId: string, execId: string | null): Promise<void> {
    try {
      const c = this.containers.get(containerId);
      for await (const s of sizes) {
        if (c.rec.state !== 'CONTAINER_RUNNING') return;
        await this.containers.podOf(c).resizeProcess(containerId, execId, s.height, s.width);
      }
    } catch (err) {
      this.logger.debug({ container: containerId, err }, 'resize not delivered');
    }
  }

  async attach(containerId: string, io: ProcessIO): Promise<void> {
    const c = this.running(containerId);
    const own = this.containers.podOf(c).containerIo;
    if (own) return own.attach(c.rec.id, io); // the pod holds the container's stdio
    const log = c.log;
    if (!log) throw failedPrecondition(`container ${c.rec.id} has no live output`);
    let detach!: () => void;
    const detached = new Promise<void>((r) => (detach = r));
    const tap = async (stream: 'stdout' | 'stderr', data: Buffer) => {
      const dst = stream === 'stdout' || io.tty ? io.stdout : io.stderr;
      if (!dst || dst.destroyed) return;
      if (!dst.write(data)) await new Promise((r) => dst.once('drain', r));
    };
    log.taps.add(tap);
    io.stdout?.once('close', detach);
    const exited = new Promise<void>((r) => c.exitWaiters.push(r));
    if (io.stdin && c.stdin) {
      const containerStdin = c.stdin as PodStream;
      copyInto(io.stdin, containerStdin)
        .then(() => {
          if (c.rec.config.stdin_once) containerStdin.end();
        })
        .catch(() => undefined)
        .finally(detach);
    }
    if (io.resize) this.forwardResize(io.resize, c.rec.id, null);
    try {
      await Promise.race([detached, exited, log.drained()]);
    } finally {
      log.taps.delete(tap);
    }
  }

  async portForward(sandboxId: string, port: number, conn: Duplex): Promise<void> {
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw invalidArgument(`bad port ${port}`);
    const sb = this.sandboxes.get(sandboxId);
    if (!sb.pod || sb.rec.state !== 'SANDBOX_READY') throw failedPrecondition(`pod sandbox ${sb.rec.id} is not ready`);
    const stream = sb.pod.openStream();
    try {
      await sb.pod.portForward(port, stream);
    } catch (err) {
      stream.destroy();
      throw inContext(err, `port-forward to ${port}`);
    }
    let clientDone = false;
    const toPod = pipeline(conn, stream).catch(() => stream.destroy()).finally(() => (clientDone = true));
    await pipeline(stream, conn).catch(() => conn.destroy());
    // The pod closed its side: as containerd, give the client 1 s to finish its own, then stop
    // (the SPDY error stream then closes). Waiting for the client's half-close instead deadlocks
    // older client-go (kubectl): it waits for the error stream to close before it closes the
    // local connection, and so before it half-closes the data stream.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([toPod, new Promise((r) => (timer = setTimeout(r, 1000)))]);
    clearTimeout(timer);
    if (!clientDone) stream.destroy();
  }
}
