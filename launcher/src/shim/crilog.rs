//! A container's output as kubelet reads it: one record per line,
//! `<RFC3339Nano UTC> <stdout|stderr> <P|F> <content>\n`. A line longer than MAX_LINE is cut
//! into partial (`P`) records; an unterminated tail is kept until its newline arrives, and at the
//! end of the stream it is written as a partial record too: kubelet's reader adds a newline after
//! `F` records only, so `printf DONE` reads back as "DONE", as with containerd and CRI-O (and as
//! src/runtime/container-log.ts writes for VM pods: both backends write the same files).
//!
//! Records of one batch go out in one write(2) on an O_APPEND descriptor, so a reader never
//! sees half a record. `reopen` opens the path again after kubelet rotated the file (CRI
//! ReopenContainerLog). Write errors (a full disk) drop that batch: the container must never
//! block on its log.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

pub const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// RFC 3339 with nanoseconds, UTC, from seconds and nanoseconds since the epoch.
pub fn rfc3339_nano(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil from days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

pub fn now() -> (i64, u32) {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    (ts.tv_sec, ts.tv_nsec as u32)
}

/// Turns `pending` (what arrived and is not logged yet) into records, leaving an unterminated
/// tail of at most MAX_LINE bytes in it unless `flush` (the stream ended: the tail becomes a
/// partial record).
pub fn format_records(stream: Stream, pending: &mut Vec<u8>, flush: bool, stamp: &str, out: &mut Vec<u8>) {
    let mut start = 0;
    let record = |tag: &str, content: &[u8], out: &mut Vec<u8>| {
        out.extend_from_slice(stamp.as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.name().as_bytes());
        out.push(b' ');
        out.extend_from_slice(tag.as_bytes());
        out.push(b' ');
        out.extend_from_slice(content);
        out.push(b'\n');
    };
    loop {
        let nl = pending[start..].iter().position(|b| *b == b'\n').map(|i| start + i);
        let end = nl.unwrap_or(pending.len());
        if end - start > MAX_LINE {
            record("P", &pending[start..start + MAX_LINE], out);
            start += MAX_LINE;
            continue;
        }
        match nl {
            Some(nl) => {
                record("F", &pending[start..nl], out);
                start = nl + 1;
            }
            None => break,
        }
    }
    if flush && start < pending.len() {
        record("P", &pending[start..], out);
        start = pending.len();
    }
    pending.drain(..start);
}

pub struct CriLog {
    path: Option<PathBuf>,
    file: Option<File>,
    pending: [Vec<u8>; 2],
}

fn open(path: &PathBuf) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().append(true).create(true).mode(0o640).custom_flags(libc::O_CLOEXEC).open(path)
}

impl CriLog {
    /// No path: output is read and dropped (kubelet asked for no log).
    pub fn open(path: Option<PathBuf>) -> std::io::Result<Self> {
        let file = match &path {
            Some(p) => Some(open(p)?),
            None => None,
        };
        Ok(CriLog { path, file, pending: [Vec::new(), Vec::new()] })
    }

    pub fn write(&mut self, stream: Stream, data: &[u8]) {
        let pending = &mut self.pending[stream as usize];
        pending.extend_from_slice(data);
        self.emit(stream, false);
    }

    /// The stream ended: its unterminated tail is written (a partial record).
    pub fn end(&mut self, stream: Stream) {
        self.emit(stream, true);
    }

    fn emit(&mut self, stream: Stream, flush: bool) {
        let pending = &mut self.pending[stream as usize];
        if pending.is_empty() || (!flush && !pending.contains(&b'\n') && pending.len() <= MAX_LINE) {
            return;
        }
        let (s, ns) = now();
        let mut out = Vec::with_capacity(pending.len() + 64);
        format_records(stream, pending, flush, &rfc3339_nano(s, ns), &mut out);
        if let Some(f) = &mut self.file {
            let _ = f.write_all(&out);
        }
    }

    /// Opens the path again (kubelet moved the old file away).
    pub fn reopen(&mut self) -> std::io::Result<()> {
        if let Some(p) = &self.path {
            self.file = Some(open(p)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_nano() {
        assert_eq!(rfc3339_nano(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339_nano(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339_nano(1_798_761_599, 999_999_999), "2026-12-31T23:59:59.999999999Z");
        assert_eq!(rfc3339_nano(4_107_542_400, 0), "2100-03-01T00:00:00.000000000Z");
    }

    #[test]
    fn splits_lines_and_keeps_the_tail() {
        let mut p = b"one\ntwo\nthr".to_vec();
        let mut out = Vec::new();
        format_records(Stream::Stdout, &mut p, false, "T", &mut out);
        assert_eq!(out, b"T stdout F one\nT stdout F two\n");
        assert_eq!(p, b"thr");
        p.extend_from_slice(b"ee\n\n");
        out.clear();
        format_records(Stream::Stderr, &mut p, false, "T", &mut out);
        assert_eq!(out, b"T stderr F three\nT stderr F \n");
        assert!(p.is_empty());
    }

    #[test]
    fn long_lines_become_partial_records() {
        let mut p = vec![b'x'; MAX_LINE * 2 + 3];
        let mut out = Vec::new();
        format_records(Stream::Stdout, &mut p, false, "T", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().filter(|l| l.starts_with("T stdout P ")).count(), 2);
        assert_eq!(p.len(), 3);
        let mut out = Vec::new();
        format_records(Stream::Stdout, &mut p, true, "T", &mut out);
        assert_eq!(out, b"T stdout P xxx\n");
        assert!(p.is_empty());
    }

    #[test]
    fn writes_and_reopens_a_file() {
        let dir = std::env::temp_dir().join(format!("crilog-test-{}", std::process::id()));
        let path = dir.join("sub/c.log");
        let mut log = CriLog::open(Some(path.clone())).unwrap();
        log.write(Stream::Stdout, b"hello\nwor");
        log.end(Stream::Stdout);
        let rotated = dir.join("c.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen().unwrap();
        log.write(Stream::Stderr, b"after\n");
        let old = std::fs::read_to_string(&rotated).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let fields: Vec<Vec<&str>> = old.lines().map(|l| l.splitn(4, ' ').collect()).collect();
        assert_eq!(fields.len(), 2);
        assert_eq!(&fields[0][1..], ["stdout", "F", "hello"]);
        assert_eq!(&fields[1][1..], ["stdout", "P", "wor"]);
        assert!(fields[0][0].ends_with('Z') && fields[0][0].len() == 30, "{}", fields[0][0]);
        assert!(new.ends_with(" stderr F after\n"), "{new}");
    }
}
