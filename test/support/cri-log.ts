// Reads a CRI log file back the way kubelet does (k8s.io/cri-client pkg/logs parseCRILog, which
// `kubectl logs`, `crictl logs` and the FallbackToLogsOnError termination message go through):
// each record is `<time> <stream> <tag> <content>\n`; the newline belongs to the content unless
// the tag is P (partial), whose trailing newline is trimmed. Tests use it to check what a user
// would read, byte for byte.

/** The concatenated content of the records of `stream` (both streams when absent). */
export function readCriLog(file: Buffer, stream?: 'stdout' | 'stderr'): string {
  const out: Buffer[] = [];
  let start = 0;
  while (start < file.length) {
    const nl = file.indexOf(0x0a, start);
    let line = file.subarray(start, nl < 0 ? file.length : nl + 1);
    start = nl < 0 ? file.length : nl + 1;
    const fields: Buffer[] = [];
    for (let i = 0; i < 3; i++) {
      const sp = line.indexOf(0x20);
      if (sp < 0) throw new Error(`CRI log record without ${['a timestamp', 'a stream', 'a tag'][i]}: ${JSON.stringify(line.toString())}`);
      fields.push(line.subarray(0, sp));
      line = line.subarray(sp + 1);
    }
    const [time, name, tags] = fields.map((f) => f.toString());
    if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$/.test(time)) throw new Error(`bad CRI log timestamp ${time}`);
    if (name !== 'stdout' && name !== 'stderr') throw new Error(`bad CRI log stream ${name}`);
    const partial = tags.split(':')[0] === 'P';
    if (partial && line.length && line[line.length - 1] === 0x0a) line = line.subarray(0, line.length - 1);
    if (!stream || stream === name) out.push(line);
  }
  return Buffer.concat(out).toString();
}
