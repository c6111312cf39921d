// Writes a container's stdout/stderr to its CRI log file in the format kubelet parses:
//   <RFC3339Nano time> <stream> <P|F> <content>\n
// Lines longer than MAX_LINE are split into partial ('P') records, and so is an unterminated
// last line: kubelet's reader adds a newline after every 'F' record only, so `printf DONE` must
// read back as "DONE" (the termination message of FallbackToLogsOnError, `kubectl logs`), as
// with containerd and CRI-O. The unterminated tail stays in memory (not in the file handle)
// until its newline or the stream's end, so ReopenContainerLog between its pieces loses nothing.
// Reads from the agent streams only as fast as the file takes the data, so back-pressure
// reaches the guest process.
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';

const MAX_LINE = 16 * 1024;

/** RFC3339 with nanoseconds, UTC. */
export function rfc3339Nano(ns: bigint): string {
  const ms = Number(ns / 1_000_000n);
  const frac = (ns % 1_000_000_000n).toString().padStart(9, '0');
  return new Date(ms).toISOString().slice(0, 19) + '.' + frac + 'Z';
}

const hrBase = process.hrtime.bigint();
const wallBase = BigInt(Date.now()) * 1_000_000n;
/** Wall-clock time in ns with sub-millisecond resolution (monotonic within the process). */
export function nowNs(): bigint {
  return wallBase + (process.hrtime.bigint() - hrBase);
}

export class ContainerLog {
  private fh: Promise<fsp.FileHandle | null>;
  private readonly pumps: Promise<void>[] = [];
  /** attach listeners: called with each chunk as it arrives */
  /** attach listeners: each chunk goes to them too; a slow one holds the stream back, as in containerd */
  readonly taps = new Set<(stream: 'stdout' | 'stderr', data: Buffer) => Promise<void> | void>();

  constructor(private readonly file: string | null) {
    this.fh = this.open();
  }

  private async open(): Promise<fsp.FileHandle | null> {
    if (!this.file) return null;
    await fsp.mkdir(path.dirname(this.file), { recursive: true });
    return fsp.open(this.file, 'a', 0o640);
  }

  /** Consumes `stream` until it ends, logging it as `name`. */
  pump(name: 'stdout' | 'stderr', stream: Readable): void {
    this.pumps.push(this.run(name, stream));
  }

  private async run(name: 'stdout' | 'stderr', stream: Readable): Promise<void> {
    let pending: Buffer = Buffer.alloc(0);
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        if (this.taps.size) await Promise.all([...this.taps].map(async (tap) => tap(name, chunk)).map((p) => p.catch(() => undefined)));
        pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
        const { records, rest } = formatLines(name, pending, false);
        pending = rest;
        if (records.length) await this.write(records);
      }
    } catch {
      // stream reset: keep what we have
    }
    if (pending.length) await this.write(formatLines(name, pending, true).records);
  }

  private async write(data: Buffer): Promise<void> {
    const fh = await this.fh.catch(() => null);
    if (fh) await fh.write(data).catch(() => undefined);
  }

  /** Resolves once every stream has ended and been written. */
  async drained(): Promise<void> {
    await Promise.all(this.pumps);
  }

  /** Closes and reopens the file (after kubelet rotated it). */
  async reopen(): Promise<void> {
    const old = this.fh;
    this.fh = this.open();
    await this.fh;
    await (await old.catch(() => null))?.close().catch(() => undefined);
  }

  async close(): Promise<void> {
    await (await this.fh.catch(() => null))?.close().catch(() => undefined);
  }
}

/** Splits buffered output into log records; keeps an unterminated tail unless `flush` (the stream
 *  ended), which writes it as a partial ('P') record: no newline follows it in the output. */
export function formatLines(stream: string, buf: Buffer, flush: boolean): { records: Buffer; rest: Buffer } {
  const out: Buffer[] = [];
  let start = 0;
  for (;;) {
    const nl = buf.indexOf(0x0a, start);
    const end = nl < 0 ? buf.length : nl;
    if (end - start > MAX_LINE) {
      out.push(record(stream, 'P', buf.subarray(start, start + MAX_LINE)));
      start += MAX_LINE;
      continue;
    }
    if (nl < 0) break;
    out.push(record(stream, 'F', buf.subarray(start, nl)));
    start = nl + 1;
  }
  let rest = buf.subarray(start);
  if (flush && rest.length) {
    out.push(record(stream, 'P', rest));
    rest = Buffer.alloc(0);
  }
  return { records: Buffer.concat(out), rest: Buffer.from(rest) };
}

function record(stream: string, tag: 'P' | 'F', content: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`${rfc3339Nano(nowNs())} ${stream} ${tag} `), content, Buffer.from('\n')]);
}
