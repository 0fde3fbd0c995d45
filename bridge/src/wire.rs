//! What travels over Zenoh: the hello exchange, data frames and acknowledgements, each a
//! little-endian byte layout with a leading kind byte (see `SCALE_OUT.md`, "Wire format").

use crate::WireType;

/// A data frame: `count` consecutive messages of one link starting at `seq`.
pub(crate) const DATA: u8 = 1;
/// The link's last word: every sequence number below `seq` was sent; nothing follows.
pub(crate) const FIN: u8 = 2;

/// An acknowledgement: where the receiver stands on a link.
pub(crate) const ACK: u8 = 1;
/// "I do not know this link (or not in this epoch)": say hello again.
pub(crate) const RESET: u8 = 2;

/// Hello reply: the link is registered.
pub(crate) const HELLO_OK: u8 = 1;
/// Hello reply: the two ends carry different message types.
pub(crate) const HELLO_MISMATCH: u8 = 2;

/// Bytes before a data frame's correlation ids.
pub(crate) const DATA_HEADER: usize = 1 + 8 + 8 + 8 + 4 + 4;

/// The header of a data or FIN frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub kind: u8,
    pub link: u64,
    pub epoch: u64,
    pub seq: u64,
    pub count: u32,
    pub size: u32,
}

/// Starts a data frame of `count` messages of `size` bytes in `buf` (cleared first); the
/// caller appends `count` correlation ids, then `count` payloads.
pub(crate) fn start_frame(buf: &mut Vec<u8>, h: &FrameHeader) {
    buf.clear();
    buf.push(h.kind);
    buf.extend_from_slice(&h.link.to_le_bytes());
    buf.extend_from_slice(&h.epoch.to_le_bytes());
    buf.extend_from_slice(&h.seq.to_le_bytes());
    buf.extend_from_slice(&h.count.to_le_bytes());
    buf.extend_from_slice(&h.size.to_le_bytes());
}

/// Splits a frame into its header, correlation ids and payload bytes; `None` when it is
/// malformed (short, or its lengths disagree).
pub(crate) fn parse_frame(bytes: &[u8]) -> Option<(FrameHeader, &[u8], &[u8])> {
    let mut r = Reader(bytes);
    let h = FrameHeader {
        kind: r.u8()?,
        link: r.u64()?,
        epoch: r.u64()?,
        seq: r.u64()?,
        count: r.u32()?,
        size: r.u32()?,
    };
    let corrs = r.take(h.count as usize * 8)?;
    let payloads = r.take(h.count as usize * h.size as usize)?;
    (r.0.is_empty()).then_some((h, corrs, payloads))
}

/// An acknowledgement (or a reset) of one link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ack {
    pub kind: u8,
    pub epoch: u64,
    /// Every sequence number below this was written into the ring.
    pub delivered: u64,
    /// Every sequence number below this was taken from the ring by the kernel.
    pub consumed: u64,
    /// The sender may send sequence numbers below this.
    pub credit: u64,
    /// A frame past `delivered` was dropped (a gap): resend from `delivered`.
    pub gap: bool,
    /// The receiver saw the link's FIN with everything before it delivered.
    pub finished: bool,
    /// Microseconds between the newest delivery this acknowledges and the
    /// acknowledgement (saturating): the link takes it off its round trip, since an
    /// acknowledgement that needs no haste waits for the export's thread.
    pub delay_us: u32,
}

impl Ack {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(39);
        b.push(self.kind);
        b.extend_from_slice(&self.epoch.to_le_bytes());
        b.extend_from_slice(&self.delivered.to_le_bytes());
        b.extend_from_slice(&self.consumed.to_le_bytes());
        b.extend_from_slice(&self.credit.to_le_bytes());
        b.push(u8::from(self.gap));
        b.push(u8::from(self.finished));
        b.extend_from_slice(&self.delay_us.to_le_bytes());
        b
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        let ack = Self {
            kind: r.u8()?,
            epoch: r.u64()?,
            delivered: r.u64()?,
            consumed: r.u64()?,
            credit: r.u64()?,
            gap: r.u8()? != 0,
            finished: r.u8()? != 0,
            delay_us: r.u32()?,
        };
        r.0.is_empty().then_some(ack)
    }
}

/// What a sender says when it (re)connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub link: u64,
    /// Its oldest unacknowledged sequence number (where a new link starts).
    pub first_unacked: u64,
    pub ty: WireType,
}

impl Hello {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&self.link.to_le_bytes());
        b.extend_from_slice(&self.first_unacked.to_le_bytes());
        put_type(&mut b, &self.ty);
        b
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        let hello = Self {
            link: r.u64()?,
            first_unacked: r.u64()?,
            ty: r.ty()?,
        };
        r.0.is_empty().then_some(hello)
    }
}

/// The export's answer to a hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Welcome {
    pub status: u8,
    pub epoch: u64,
    pub delivered: u64,
    pub consumed: u64,
    pub credit: u64,
    pub ty: WireType,
}

impl Welcome {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(80);
        b.push(self.status);
        b.extend_from_slice(&self.epoch.to_le_bytes());
        b.extend_from_slice(&self.delivered.to_le_bytes());
        b.extend_from_slice(&self.consumed.to_le_bytes());
        b.extend_from_slice(&self.credit.to_le_bytes());
        put_type(&mut b, &self.ty);
        b
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        let w = Self {
            status: r.u8()?,
            epoch: r.u64()?,
            delivered: r.u64()?,
            consumed: r.u64()?,
            credit: r.u64()?,
            ty: r.ty()?,
        };
        r.0.is_empty().then_some(w)
    }
}

fn put_type(b: &mut Vec<u8>, ty: &WireType) {
    b.extend_from_slice(&ty.size.to_le_bytes());
    b.extend_from_slice(&ty.align.to_le_bytes());
    b.extend_from_slice(&ty.fingerprint.to_le_bytes());
    let name = ty.name.as_bytes();
    let len = name.len().min(u16::MAX as usize);
    b.extend_from_slice(&(len as u16).to_le_bytes());
    b.extend_from_slice(&name[..len]);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
    fn ty(&mut self) -> Option<WireType> {
        let size = self.u32()?;
        let align = self.u32()?;
        let fingerprint = self.u64()?;
        let len = self.u16()? as usize;
        let name = String::from_utf8_lossy(self.take(len)?).into_owned();
        Some(WireType {
            name,
            size,
            align,
            fingerprint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty() -> WireType {
        WireType::of::<[u64; 8]>()
    }

    #[test]
    fn frames_round_trip_and_reject_bad_lengths() {
        let h = FrameHeader {
            kind: DATA,
            link: 7,
            epoch: 9,
            seq: 100,
            count: 2,
            size: 4,
        };
        let mut buf = Vec::new();
        start_frame(&mut buf, &h);
        assert_eq!(buf.len(), DATA_HEADER);
        buf.extend_from_slice(&1u64.to_le_bytes());
        buf.extend_from_slice(&2u64.to_le_bytes());
        buf.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let (got, corrs, payloads) = parse_frame(&buf).unwrap();
        assert_eq!(got, h);
        assert_eq!(corrs.len(), 16);
        assert_eq!(payloads, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(parse_frame(&buf[..buf.len() - 1]).is_none());
        buf.push(0);
        assert!(parse_frame(&buf).is_none());
    }

    #[test]
    fn acks_hellos_and_welcomes_round_trip() {
        let ack = Ack {
            kind: ACK,
            epoch: 1,
            delivered: 2,
            consumed: 3,
            credit: 4,
            gap: true,
            finished: false,
            delay_us: 7,
        };
        assert_eq!(Ack::decode(&ack.encode()), Some(ack));
        let hello = Hello {
            link: 5,
            first_unacked: 6,
            ty: ty(),
        };
        assert_eq!(Hello::decode(&hello.encode()), Some(hello));
        let w = Welcome {
            status: HELLO_MISMATCH,
            epoch: 1,
            delivered: 2,
            consumed: 3,
            credit: 4,
            ty: ty(),
        };
        assert_eq!(Welcome::decode(&w.encode()), Some(w));
        assert!(Ack::decode(&[1, 2, 3]).is_none());
    }
}
