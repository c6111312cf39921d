// The seam between the streaming server (URLs, SPDY/WebSocket protocols) and the runtime
// (processes and ports inside pod VMs). The runtime implements it; the server only moves bytes.
import type { Duplex, Readable, Writable } from 'node:stream';

export interface TerminalSize {
  width: number;
  height: number;
}

export interface ProcessIO {
  /** client → process; its end closes the process's stdin */
  stdin?: Readable;
  /** process → client; with a tty this carries the terminal */
  stdout?: Writable;
  /** process → client; never set with a tty */
  stderr?: Writable;
  tty: boolean;
  /** terminal resizes from the client (the first one may arrive before the process starts) */
  resize?: AsyncIterable<TerminalSize>;
}

export interface StreamingBackend {
  /** Throws a PodvisorError (not_found, failed_precondition …) when the request cannot be served. */
  checkExec(containerId: string, cmd: string[], tty: boolean, stdin: boolean): void;
  checkAttach(containerId: string, stdin: boolean): void;
  checkPortForward(sandboxId: string): void;
  /** Runs cmd in the container; resolves with its exit code once it exited and output drained. */
  exec(containerId: string, cmd: string[], io: ProcessIO): Promise<{ exitCode: number }>;
  /** Connects to the container's live stdio; resolves when the client leaves or the container ends. */
  attach(containerId: string, io: ProcessIO): Promise<void>;
  /** Connects `conn` to `port` inside the pod's network namespace; resolves when both sides closed. */
  portForward(sandboxId: string, port: number, conn: Duplex): Promise<void>;
}
