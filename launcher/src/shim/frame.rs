//! The shim's socket protocol: frames of `kind (1 byte) | length (4 bytes, big endian) | payload`.
//!
//! client → shim: `C` a JSON request (one `R` reply each, in order), `I` stdin bytes, `E` end of
//! stdin. shim → client: `R` a JSON reply, `1`/`2` stdout/stderr bytes (attach and exec
//! connections), `X` a JSON exit (the container's, or on an exec connection the exec's).
//! src/runtime/backends/host/shim-client.ts is the other end. Requests: state, start, signal
//! (the container's init, every process of it with `all`, or on an exec connection the exec),
//! resize, reopen (the log), attach, exec, delete.

pub const REQUEST: u8 = b'C';
pub const STDIN: u8 = b'I';
pub const STDIN_END: u8 = b'E';
pub const REPLY: u8 = b'R';
pub const STDOUT: u8 = b'1';
pub const STDERR: u8 = b'2';
pub const EXIT: u8 = b'X';

/// Largest payload either side sends; a bigger frame is a protocol error.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Largest request: JSON only (an exec's args and env).
pub const MAX_REQUEST: usize = 256 * 1024;

pub fn encode(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received and not yet returned as frames.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn next(&mut self) -> Result<Option<(u8, Vec<u8>)>, String> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let kind = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        let max = if kind == REQUEST { MAX_REQUEST } else { MAX_PAYLOAD };
        if !matches!(kind, REQUEST | STDIN | STDIN_END) {
            return Err(format!("unknown frame kind {kind:#x}"));
        }
        if len > max {
            return Err(format!("frame of {len} bytes (at most {max})"));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Ok(Some((kind, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_split_frames() {
        let mut wire = Vec::new();
        encode(REQUEST, br#"{"op":"state"}"#, &mut wire);
        encode(STDIN, b"abc", &mut wire);
        encode(STDIN_END, b"", &mut wire);
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for b in wire {
            d.feed(&[b]);
            while let Some(f) = d.next().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![(REQUEST, br#"{"op":"state"}"#.to_vec()), (STDIN, b"abc".to_vec()), (STDIN_END, vec![])]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn refuses_oversized_and_unknown_frames() {
        let mut d = Decoder::default();
        d.feed(&[REQUEST, 0, 0x10, 0, 0]);
        assert!(d.next().is_err());
        let mut d = Decoder::default();
        d.feed(&[STDOUT, 0, 0, 0, 1, b'x']);
        assert!(d.next().is_err(), "a client does not send output frames");
    }
}
