// Runs @kubernetes/client-node's own WebSocket exec/attach/port-forward code against a
// streaming URL (its classes build an apiserver path; the WebSocketInterface it accepts is
// pointed at the URL instead). ESM, so it runs in its own node process, outside jest.
//   node k8s-client.mjs exec <url> <json {tty,stdin,stderr,pauseMs,countOnly}>
//   node k8s-client.mjs attach <url> <json>
//   node k8s-client.mjs portforward <port> <url> [<url>...]   (one single-use URL per connection)
// Prints one JSON line with the result (portforward: {"localPort":N} then serves until killed).
import net from 'node:net';
import { Writable } from 'node:stream';
import { Exec } from '@kubernetes/client-node/dist/exec.js';
import { Attach } from '@kubernetes/client-node/dist/attach.js';
import { PortForward } from '@kubernetes/client-node/dist/portforward.js';
import { WebSocketHandler } from '@kubernetes/client-node/dist/web-socket-handler.js';

const [mode, ...args] = process.argv.slice(2);

/** What WebSocketHandler needs from a KubeConfig. */
function config(url) {
  const u = new URL(url);
  return {
    getCurrentCluster: () => ({ server: `${u.protocol}//${u.host}`, skipTLSVerify: true }),
    applyToHTTPSOptions: async (opts) => {
      opts.rejectUnauthorized = false;
    },
  };
}

/** A WebSocketInterface that connects to the next streaming URL, whatever path the class built. */
function handlerFor(urls, onSocket) {
  const handler = new WebSocketHandler(config(urls[0]));
  return {
    connect: async (_path, text, binary) => {
      const url = urls.shift();
      if (!url) throw new Error('no streaming URL left');
      const u = new URL(url);
      const ws = await handler.connect(u.pathname + u.search, text, binary);
      onSocket?.(ws);
      return ws;
    },
  };
}

class Sink extends Writable {
  constructor(keep) {
    super();
    this.keep = keep;
    this.chunks = [];
    this.bytes = 0;
  }
  _write(chunk, _enc, cb) {
    this.bytes += chunk.length;
    if (this.keep) this.chunks.push(chunk);
    cb();
  }
  text() {
    return Buffer.concat(this.chunks).toString();
  }
}

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

if (mode === 'exec' || mode === 'attach') {
  const [url, json] = args;
  const o = JSON.parse(json ?? '{}');
  const stdout = new Sink(!o.countOnly);
  const stderr = new Sink(true);
  if (o.tty) {
    // a resizable stdout makes client-node send the terminal size on channel 4
    stdout.rows = 33;
    stdout.columns = 101;
  }
  let socket;
  let opened;
  const open = new Promise((resolve) => (opened = resolve));
  const wsi = handlerFor([url], (ws) => {
    socket = ws;
    opened();
    if (o.pauseMs) {
      ws.pause();
      setTimeout(() => ws.resume(), o.pauseMs);
    }
  });
  const stdin = o.stdin ? process.stdin : null;
  if (mode === 'exec') {
    const status = await new Promise((resolve, reject) => {
      new Exec(null, wsi)
        .exec('ns', 'pod', 'c', o.cmd ?? [], stdout, o.tty ? null : stderr, stdin, !!o.tty, resolve)
        .catch(reject);
    });
    // a status sent at once (a command that does not exist) can arrive in the upgrade's own
    // chunk: client-node hands it over before connect()'s caller has resumed with the socket
    await open;
    out({ protocol: socket.protocol, stdout: stdout.text(), stdoutBytes: stdout.bytes, stderr: stderr.text(), status });
    process.exit(0);
  } else {
    await new Attach(null, wsi).attach('ns', 'pod', 'c', stdout, o.tty ? null : stderr, stdin, !!o.tty);
    socket.on('close', () => {
      out({ protocol: socket.protocol, stdout: stdout.text(), stderr: stderr.text() });
      process.exit(0);
    });
  }
} else if (mode === 'portforward') {
  const [port, ...urls] = args;
  const pf = new PortForward(null, true, handlerFor(urls));
  const server = net.createServer((conn) => {
    pf.portForward('ns', 'pod', [Number(port)], conn, null, conn).then(
      (ws) => {
        ws.on('close', () => conn.end());
        conn.on('close', () => ws.close());
      },
      (err) => {
        console.error(String(err));
        conn.destroy();
      },
    );
  });
  server.listen(0, '127.0.0.1', () => out({ localPort: server.address().port }));
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
