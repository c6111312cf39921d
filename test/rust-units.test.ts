// The Rust crates' own unit tests (guest agent, host launcher), run by cargo and counted here so
// the suite's "N passed, N failed" includes them. Each crate is built the way guest/build.sh
// builds it (the agent through guest/agent/cargo.sh: static, libseccomp linked in).
import { spawnSync } from 'node:child_process';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '..');

function cargoTest(cmd: string, args: string[], cwd: string): { passed: string[]; failed: string[]; output: string } {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 64 << 20 });
  const output = `${r.stdout}\n${r.stderr}`;
  const passed = [...output.matchAll(/^test (\S+) \.\.\. ok$/gm)].map((m) => m[1]);
  const failed = [...output.matchAll(/^test (\S+) \.\.\. FAILED$/gm)].map((m) => m[1]);
  if (r.status !== 0 && failed.length === 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}:\n${output.slice(-4000)}`);
  return { passed, failed, output };
}

test.each([
  ['guest agent', 'bash', [path.join(ROOT, 'guest/agent/cargo.sh'), 'test', '--release'], path.join(ROOT, 'guest/agent')],
  ['launcher', 'cargo', ['test', '--release', '--locked'], path.join(ROOT, 'launcher')],
] as const)('%s: cargo test passes', (_name, cmd, args, cwd) => {
  const r = cargoTest(cmd, [...args], cwd);
  if (r.failed.length) throw new Error(`failed: ${r.failed.join(', ')}\n${r.output.slice(-4000)}`);
  expect(r.passed.length).toBeGreaterThan(0);
}, 900_000);
