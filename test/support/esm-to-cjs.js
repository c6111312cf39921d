// jest transform for the few dependencies published as ES modules only (commander 15): jest
// runs test files as CommonJS, and its require(esm) needs node --experimental-vm-modules, which
// would switch jest's whole module loader into its experimental ESM mode. esbuild (already the
// release bundler) rewrites such a file to CommonJS; the daemon itself (dist/, bundled release)
// loads them natively on Node 24.
const esbuild = require('esbuild');
const crypto = require('crypto');

module.exports = {
  process(source, filename) {
    const out = esbuild.transformSync(source, { format: 'cjs', loader: 'js', target: 'node24', sourcefile: filename, sourcemap: 'inline' });
    return { code: out.code };
  },
  getCacheKey(source, filename) {
    return crypto.createHash('sha256').update(esbuild.version).update('\0').update(filename).update('\0').update(source).digest('hex');
  },
};
