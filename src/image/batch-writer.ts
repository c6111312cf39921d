// Writes a stream of small chunks (network reads) to a file in ~1 MiB positioned writev calls,
// a bounded number in flight, so that writing overlaps receiving without unbounded queues.
// The file is fsynced once complete (a blob before it is renamed into the store): its
// writeback is started every WRITEBACK_BYTES meanwhile (writeback.ts), so that fsync, which
// the pull waits for, finds little left to write (~15 ms for a 42 MB layer otherwise).
import { writev } from 'node:fs';
import { startWriteback } from './writeback';

const WRITEBACK_BYTES = 8 << 20;

export class BatchWriter {
  private batch: Buffer[] = [];
  private batchBytes = 0;
  private written = 0;
  private readonly writes = new Set<Promise<void>>();
  private error: Error | undefined;
  private sinceWriteback = 0;

  constructor(private readonly fd: number, private readonly batchSize = 1 << 20, private readonly maxInFlight = 2) {}

  /** The first write that failed, if any. */
  get failure(): Error | undefined {
    return this.error;
  }

  /** Queues a chunk; waits while too many writes are in flight; throws a failed write's error. */
  async add(c: Buffer): Promise<void> {
    this.batch.push(c);
    this.batchBytes += c.length;
    if (this.batchBytes >= this.batchSize) await this.flush(this.maxInFlight);
  }

  /** Writes what is queued and waits for every write; throws a failed write's error. */
  async finish(): Promise<void> {
    await this.flush(0);
  }

  /** Waits for the writes in flight (after a failure elsewhere), never throws. */
  async settle(): Promise<void> {
    while (this.writes.size) await Promise.all(this.writes);
  }

  private async flush(max: number): Promise<void> {
    if (this.batchBytes) {
      const bufs = this.batch;
      const want = this.batchBytes;
      const p = new Promise<void>((resolve) =>
        writev(this.fd, bufs, this.written, (err, done) => {
          if (err) this.error ??= err;
          else if (done !== want) this.error ??= new Error(`short write (${done} of ${want} bytes)`);
          else if ((this.sinceWriteback += want) >= WRITEBACK_BYTES) {
            this.sinceWriteback = 0;
            // Tracked like a write: the descriptor must stay open until the call returned.
            const wb: Promise<void> = startWriteback(this.fd).finally(() => this.writes.delete(wb));
            this.writes.add(wb);
          }
          resolve();
        }),
      ).finally(() => this.writes.delete(p));
      this.writes.add(p);
      this.written += want;
      this.batch = [];
      this.batchBytes = 0;
    }
    while (this.writes.size > max) await Promise.race(this.writes);
    if (this.error) throw this.error;
  }
}
