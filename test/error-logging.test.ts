// Errors are logged as errors: every log call puts the Error itself under `err` (never its
// message or stack as a string), so pino keeps type, message, stack and code, and a reader of
// the journal sees where a failure came from and its code (PodvisorError's, errno's, the guest
// agent's). A source scan keeps it that way; the logger itself is run as the daemon runs it.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const ROOT = path.join(__dirname, '..');

function sources(dir: string): string[] {
  return fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts'))
    .map((e) => path.relative(ROOT, path.join(e.parentPath, e.name)));
}

test('no log call logs an error as its message or stack string', () => {
  const bad: string[] = [];
  for (const f of ['src', 'network', 'storage'].flatMap(sources)) {
    fs.readFileSync(path.join(ROOT, f), 'utf8').split('\n').forEach((line, i) => {
      if (!/\b(log|logger)\??\.(fatal|error|warn|info|debug|trace)\(/.test(line)) return;
      if (/\berr: [^,}]*\.(message|stack)\b|\berr: String\(/.test(line)) bad.push(`${f}:${i + 1}: ${line.trim()}`);
    });
  }
  expect(bad).toEqual([]);
});

test('a PodvisorError and an AgentError keep type, code, agent code and stack in both formats; fd 2 leaves stdout alone', () => {
  const script = (format: string) => `
    const { createLogger } = require(${JSON.stringify(path.join(ROOT, 'dist', 'src', 'util', 'log.js'))});
    const { PodvisorError } = require(${JSON.stringify(path.join(ROOT, 'dist', 'src', 'util', 'errors.js'))});
    const { AgentError } = require(${JSON.stringify(path.join(ROOT, 'dist', 'src', 'agent', 'errors.js'))});
    const l = createLogger('info', ${JSON.stringify(format)}, 2);
    l.error({ sandbox: 's1', err: new PodvisorError('failed_precondition', 'no template') }, 'clone failed');
    l.warn({ err: new AgentError('not_found', 'no such container') }, 'agent said no');`;
  const json = spawnSync(process.execPath, ['-e', script('json')], { encoding: 'utf8' });
  expect(json.stdout).toBe('');
  const [a, b] = json.stderr.trim().split('\n').map((l) => JSON.parse(l));
  expect(a.err).toMatchObject({ type: 'PodvisorError', message: 'no template', code: 'failed_precondition' });
  expect(a.err.stack).toMatch(/^PodvisorError: no template\n\s+at /);
  expect(b.err).toMatchObject({ type: 'AgentError', code: 'not_found', agentCode: 'not_found' });
  const text = spawnSync(process.execPath, ['-e', script('text')], { encoding: 'utf8' });
  expect(text.stdout).toBe('');
  expect(text.stderr).toMatch(/ERROR: clone failed/);
  expect(text.stderr).toMatch(/"code": "failed_precondition"/);
  expect(text.stderr).toMatch(/^\s+PodvisorError: no template\n\s+at /m);
});
