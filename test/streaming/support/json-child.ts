// The streaming clients under test (client-node's script, client-go's binary) run in processes
// of their own and print one JSON line with what they saw; this runs one and parses that line,
// so both runners differ only in the program and how they feed its stdin.
import { spawn } from 'node:child_process';

/** Runs `cmd args`, hands its stdin to `feed` (which must end it), resolves with the last line of stdout as JSON. */
export function runJsonChild(label: string, cmd: string, args: string[], feed: (stdin: NodeJS.WritableStream) => void): Promise<any> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => {
      const line = out.trim().split('\n').pop();
      if (code !== 0 || !line) return reject(new Error(`${label} exited ${code}: ${err}${out}`));
      resolve(JSON.parse(line));
    });
    child.stdin.on('error', () => undefined);
    feed(child.stdin);
  });
}
