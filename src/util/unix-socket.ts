// Connects to a unix socket that a child process (QEMU) creates shortly after it starts.
import net from 'node:net';

/** Retries every 20 ms until `path` accepts a connection and `ready` succeeds on it, or the deadline passes. */
export async function connectWhenReady<T>(path: string, timeoutMs: number, ready: (sock: net.Socket) => Promise<T>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const sock = await new Promise<net.Socket>((resolve, reject) => {
        const s = net.createConnection(path);
        s.once('connect', () => {
          s.removeAllListeners('error');
          resolve(s);
        });
        s.once('error', reject);
      });
      return await ready(sock);
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}
