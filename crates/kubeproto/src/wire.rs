//! Protobuf wire format: varints, tags and length-delimited slices. Never panics on any input.

/// A wire value, borrowed from the buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Val<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(#[allow(dead_code)] u32),
    Bytes(&'a [u8]),
}

impl Val<'_> {
    /// The protobuf wire type number.
    pub(crate) fn wire_type(&self) -> u8 {
        match self {
            Val::Varint(_) => 0,
            Val::Fixed64(_) => 1,
            Val::Bytes(_) => 2,
            Val::Fixed32(_) => 5,
        }
    }
}

/// A wire-level failure: what went wrong and at which byte.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WireErr {
    pub(crate) offset: usize,
    pub(crate) what: &'static str,
}

/// Reads `(field number, value)` pairs from one message's bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn err(&self, what: &'static str) -> WireErr {
        WireErr {
            offset: self.pos,
            what,
        }
    }

    pub(crate) fn varint(&mut self) -> Result<u64, WireErr> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err("truncated varint"));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(self.err("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireErr> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err("length runs past the end of the message")),
        }
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], WireErr> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// The next field, or `None` at the end of the message. Offsets in errors are this message's.
    pub(crate) fn next_field(&mut self) -> Result<Option<(u32, Val<'a>)>, WireErr> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = key >> 3;
        if tag == 0 || tag > (1 << 29) - 1 {
            return Err(self.err("invalid field number"));
        }
        let val = match key & 7 {
            0 => Val::Varint(self.varint()?),
            1 => Val::Fixed64(u64::from_le_bytes(self.fixed::<8>()?)),
            2 => {
                let n = self.varint()?;
                let n = usize::try_from(n).map_err(|_| self.err("length too large"))?;
                Val::Bytes(self.take(n)?)
            }
            5 => Val::Fixed32(u32::from_le_bytes(self.fixed::<4>()?)),
            3 | 4 => return Err(self.err("groups (wire types 3, 4) are not used by Kubernetes")),
            _ => return Err(self.err("invalid wire type")),
        };
        // tag fits in u32: checked above.
        Ok(Some((tag as u32, val)))
    }

    /// A little-endian 64-bit value (packed doubles).
    pub(crate) fn fixed64(&mut self) -> Result<u64, WireErr> {
        Ok(u64::from_le_bytes(self.fixed::<8>()?))
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }
}
