// The layer rule (README "Layout", .dependency-cruiser.cjs) checked from the imports: no import
// circle, no import from a lower layer to a higher one. The second test shows the rules bite on
// a small tree that breaks them, so a green first test means something.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const root = path.resolve(__dirname, '..');
const depcruise = path.join(root, 'node_modules', '.bin', 'depcruise');
const config = path.join(root, '.dependency-cruiser.cjs');

function cruise(cwd: string, dirs: string[]): { ok: boolean; out: string } {
  try {
    const out = execFileSync(depcruise, ['--config', config, '--output-type', 'err', ...dirs], { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return { ok: true, out };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return { ok: false, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

test('podvisor keeps its layers: no circles, no upward imports', () => {
  const r = cruise(root, ['src', 'network', 'storage', 'cri-api']);
  expect(r.out).toMatch(/no dependency violations found \((\d{2,}) modules/);
  expect(r.ok).toBe(true);
}, 120_000);

test('the rules catch an upward import, a circle and network/ reaching into src/', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pv-layers-'));
  try {
    const put = (f: string, text: string) => {
      fs.mkdirSync(path.dirname(path.join(tmp, f)), { recursive: true });
      fs.writeFileSync(path.join(tmp, f), text);
    };
    put('tsconfig.json', '{"compilerOptions":{"strict":true}}');
    put('src/util/x.ts', "import { y } from '../runtime/y';\nexport const x = y;\n");
    put('src/runtime/y.ts', "import { x } from '../util/x';\nexport const y = 1;\nexport const z = x;\n");
    put('network/n.ts', "import { y } from '../src/runtime/y';\nexport const n = y;\n");
    const r = cruise(tmp, ['src', 'network']);
    expect(r.ok).toBe(false);
    expect(r.out).toMatch(/no-circular: src\/runtime\/y\.ts/);
    expect(r.out).toMatch(/ground-floor: src\/util\/x\.ts → src\/runtime\/y\.ts/);
    expect(r.out).toMatch(/network-storage: network\/n\.ts → src\/runtime\/y\.ts/);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}, 120_000);

test('no QMP command name outside src/vm/, no QEMU type outside src/vm/ and the daemon and CLI that pick the driver', () => {
  const qmp = /['"`](blockdev-add|blockdev-del|device_add|device_del|object-add|object-del|migrate(?:-[a-z-]+)?|query-[a-z-]+|qom-list|qmp_capabilities|human-monitor-command|cont|quit)['"`]/;
  const qemuType = /\b(QemuVm|QemuHypervisor|QmpClient|ScsiBus|PodVm)\b/;
  const offenders: string[] = [];
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(path.join(root, dir), { withFileTypes: true })) {
      const rel = path.join(dir, e.name);
      if (e.isDirectory()) walk(rel);
      else if (rel.endsWith('.ts') && !rel.startsWith('src/vm/')) {
        const text = fs.readFileSync(path.join(root, rel), 'utf8');
        const m = qmp.exec(text) ?? (rel === 'src/daemon.ts' || rel.startsWith('src/cli/') ? null : qemuType.exec(text));
        if (m) offenders.push(`${rel}: ${m[0]}`);
      }
    }
  };
  for (const d of ['src', 'network', 'storage', 'cri-api']) walk(d);
  expect(offenders).toEqual([]);
});
