//! Wire framing (PROTOCOL.md "Frames"): `length u32 BE | kind u8 | id u32 BE | payload`.
//! The decoder only enforces the length bound and the kind; per-kind rules are checked by the
//! connection, which knows what a violation means.

pub const MAX_PAYLOAD: usize = 1 << 20;
pub const MAX_DATA: usize = 65536;
pub const INITIAL_WINDOW: u32 = 262_144;

pub const REQ: u8 = 1;
pub const RESP: u8 = 2;
pub const EVENT: u8 = 3;
pub const DATA: u8 = 4;
pub const CREDIT: u8 = 5;
pub const EOF: u8 = 6;
pub const RESET: u8 = 7;

#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub id: u32,
    pub payload: Vec<u8>,
}

pub fn encode(kind: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    let mut v = Vec::with_capacity(9 + payload.len());
    v.extend_from_slice(&((5 + payload.len()) as u32).to_be_bytes());
    v.push(kind);
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Incremental decoder: push bytes as they arrive, pull whole frames.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    pos: usize,
}

impl Decoder {
    pub fn push(&mut self, data: &[u8]) {
        // Compact lazily so a stream of small frames does not shift the buffer every time.
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }

    /// Ok(None): need more bytes. Err: the peer broke a framing rule.
    pub fn next(&mut self) -> Result<Option<Frame>, String> {
        let avail = &self.buf[self.pos..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len < 5 {
            return Err(format!("frame length {len} < 5"));
        }
        if len - 5 > MAX_PAYLOAD {
            return Err(format!("frame payload {} exceeds {MAX_PAYLOAD}", len - 5));
        }
        // Validate the kind as soon as it is visible: no point buffering 1 MiB of garbage.
        if avail.len() >= 5 && !(REQ..=RESET).contains(&avail[4]) {
            return Err(format!("unknown frame kind {}", avail[4]));
        }
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let kind = avail[4];
        let id = u32::from_be_bytes([avail[5], avail[6], avail[7], avail[8]]);
        let payload = avail[9..4 + len].to_vec();
        self.pos += 4 + len;
        Ok(Some(Frame { kind, id, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_split() {
        let mut bytes = encode(REQ, 7, b"{}");
        bytes.extend(encode(DATA, 3, b"abc"));
        let mut d = Decoder::default();
        for b in &bytes {
            d.push(std::slice::from_ref(b));
        }
        let f = d.next().unwrap().unwrap();
        assert_eq!((f.kind, f.id, f.payload.as_slice()), (REQ, 7, &b"{}"[..]));
        let f = d.next().unwrap().unwrap();
        assert_eq!((f.kind, f.id, f.payload.as_slice()), (DATA, 3, &b"abc"[..]));
        assert!(d.next().unwrap().is_none());
    }

    #[test]
    fn rejects_oversize_and_bad_kind() {
        let mut d = Decoder::default();
        d.push(&((MAX_PAYLOAD as u32) + 6).to_be_bytes());
        assert!(d.next().is_err());
        let mut d = Decoder::default();
        d.push(&[0, 0, 0, 5, 9]);
        assert!(d.next().is_err());
        let mut d = Decoder::default();
        d.push(&[0, 0, 0, 4]);
        assert!(d.next().is_err());
    }
}
