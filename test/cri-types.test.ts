// The committed CRI message types (cri-api/types/, cri-api/messages.ts) are what
// scripts/gen-cri-types.js makes from cri-api/api.proto today: this fails when the proto (or the
// generator) changed and `npm run gen:cri` was not run.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const root = path.resolve(__dirname, '..');

function files(dir: string, base = dir): Map<string, string> {
  const out = new Map<string, string>();
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) for (const [k, v] of files(p, base)) out.set(k, v);
    else out.set(path.relative(base, p), fs.readFileSync(p, 'utf8'));
  }
  return out;
}

test('the generated CRI types are up to date with cri-api/api.proto', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-cri-types-'));
  try {
    execFileSync(process.execPath, [path.join(root, 'scripts', 'gen-cri-types.js'), tmp], { cwd: root, stdio: 'pipe' });
    const fresh = files(path.join(tmp, 'types'));
    const committed = files(path.join(root, 'cri-api', 'types'));
    expect(fresh.size).toBeGreaterThan(100);
    expect([...committed.keys()].sort()).toEqual([...fresh.keys()].sort());
    for (const [f, text] of fresh) expect({ f, text: committed.get(f) }).toEqual({ f, text });
    expect(fs.readFileSync(path.join(root, 'cri-api', 'messages.ts'), 'utf8')).toBe(fs.readFileSync(path.join(tmp, 'messages.ts'), 'utf8'));
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}, 60_000);
