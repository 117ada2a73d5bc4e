//! The adb transport's framing, written from AOSP `adb/protocol.txt` and `adb/adb.h`: a
//! 24-byte header of six little-endian `u32`s (command, arg0, arg1, data_length,
//! data_check, magic = command ^ 0xffffffff) followed by `data_length` payload bytes.
//!
//! `data_check` is the byte sum of the payload (not a CRC despite the old name) for
//! protocol version [`A_VERSION_MIN`]; from [`A_VERSION_SKIP_CHECKSUM`] on it is sent as 0
//! and not checked.

use tokio::io::{AsyncRead, AsyncReadExt};

/// `CNXN(version, maxdata, "system-identity-string")`.
pub const A_CNXN: u32 = 0x4e58_4e43;
/// `AUTH(type, 0, data)`.
pub const A_AUTH: u32 = 0x4854_5541;
/// `OPEN(local-id, 0, "destination")`.
pub const A_OPEN: u32 = 0x4e45_504f;
/// `OKAY(local-id, remote-id, "")` (READY in protocol.txt).
pub const A_OKAY: u32 = 0x5941_4b4f;
/// `CLSE(local-id, remote-id, "")`.
pub const A_CLSE: u32 = 0x4553_4c43;
/// `WRTE(local-id, remote-id, data)`.
pub const A_WRTE: u32 = 0x4554_5257;
/// `SYNC`: obsolete, never valid on the wire.
pub const A_SYNC: u32 = 0x434e_5953;
/// `STLS`: TLS upgrade (Android 11+); adbd of the era simulated here does not know it.
pub const A_STLS: u32 = 0x534c_5453;

/// The original protocol version: payload checksums, stop-and-wait.
pub const A_VERSION_MIN: u32 = 0x0100_0000;
/// The version (Android 9+) that sends `data_check` as 0 and does not check it.
pub const A_VERSION_SKIP_CHECKSUM: u32 = 0x0100_0001;

/// Largest payload before the peers have exchanged `CNXN` (and the maxdata of old adbd).
pub const MAX_PAYLOAD_V1: u32 = 4 * 1024;

/// `AUTH` type: a random token for the host to sign.
pub const ADB_AUTH_TOKEN: u32 = 1;
/// `AUTH` type: the host's signature of the token.
pub const ADB_AUTH_SIGNATURE: u32 = 2;
/// `AUTH` type: the host's RSA public key, offered when no key was accepted.
pub const ADB_AUTH_RSAPUBLICKEY: u32 = 3;
/// Size of the token adbd sends (adb.h `TOKEN_SIZE`); the host refuses to sign others.
pub const TOKEN_SIZE: usize = 20;

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Command constant (`A_CNXN`, ...).
    pub command: u32,
    /// First argument.
    pub arg0: u32,
    /// Second argument.
    pub arg1: u32,
    /// Payload (at most the negotiated maxdata).
    pub payload: Vec<u8>,
}

impl Packet {
    /// A message with this payload.
    #[must_use]
    pub fn new(command: u32, arg0: u32, arg1: u32, payload: impl Into<Vec<u8>>) -> Self {
        Packet {
            command,
            arg0,
            arg1,
            payload: payload.into(),
        }
    }

    /// Header and payload as sent. `checksum` fills `data_check` (old protocol version);
    /// otherwise it is 0.
    #[must_use]
    pub fn encode(&self, checksum: bool) -> Vec<u8> {
        let len = u32::try_from(self.payload.len()).unwrap_or(u32::MAX);
        let check = if checksum { sum(&self.payload) } else { 0 };
        let mut out = Vec::with_capacity(24 + self.payload.len());
        for w in [
            self.command,
            self.arg0,
            self.arg1,
            len,
            check,
            self.command ^ 0xffff_ffff,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.payload);
        out
    }
}

/// The `data_check` of a payload: the sum of its bytes.
#[must_use]
pub fn sum(payload: &[u8]) -> u32 {
    payload
        .iter()
        .fold(0u32, |acc, &b| acc.wrapping_add(u32::from(b)))
}

/// Why no message could be read. Every case ends the connection (protocol.txt: an invalid
/// header or corrupt payload "MUST result in the closing of the remote connection").
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed or closed (possibly mid-message).
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// `magic` was not `command ^ 0xffffffff`.
    #[error("bad magic {magic:#010x} for command {command:#010x}")]
    BadMagic {
        /// The command word read.
        command: u32,
        /// The magic word read.
        magic: u32,
    },
    /// `data_length` above what this side accepts.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    TooLong {
        /// The announced length.
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// `data_check` did not match the payload (old protocol version only).
    #[error("payload checksum {got:#x} does not match the header's {want:#x}")]
    BadChecksum {
        /// Sum of the payload received.
        got: u32,
        /// The header's `data_check`.
        want: u32,
    },
}

/// Read one message whose payload may be at most `max` bytes; verify `data_check` when
/// `verify_checksum`. Not cancel-safe: a message half read is lost, so callers drop the
/// connection when they cancel a read.
///
/// # Errors
/// See [`WireError`].
pub async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u32,
    verify_checksum: bool,
) -> Result<Packet, WireError> {
    let mut header = [0u8; 24];
    r.read_exact(&mut header).await?;
    let word = |i: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&header[i * 4..i * 4 + 4]);
        u32::from_le_bytes(w)
    };
    let (command, arg0, arg1, len, check, magic) =
        (word(0), word(1), word(2), word(3), word(4), word(5));
    if magic != command ^ 0xffff_ffff {
        return Err(WireError::BadMagic { command, magic });
    }
    if len > max {
        return Err(WireError::TooLong { len, max });
    }
    // `len <= max`, and `max` is one of this module's small limits.
    let mut payload = vec![0u8; usize::try_from(len).unwrap_or(0)];
    r.read_exact(&mut payload).await?;
    if verify_checksum && sum(&payload) != check {
        return Err(WireError::BadChecksum {
            got: sum(&payload),
            want: check,
        });
    }
    Ok(Packet {
        command,
        arg0,
        arg1,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_lays_out_six_little_endian_words() {
        let p = Packet::new(A_OPEN, 7, 0, b"shell:ls\0".to_vec());
        let b = p.encode(true);
        assert_eq!(&b[0..4], b"OPEN");
        assert_eq!(&b[4..8], &7u32.to_le_bytes());
        assert_eq!(&b[12..16], &9u32.to_le_bytes());
        assert_eq!(&b[16..20], &sum(b"shell:ls\0").to_le_bytes());
        assert_eq!(&b[20..24], &(A_OPEN ^ 0xffff_ffff).to_le_bytes());
        assert_eq!(&b[24..], b"shell:ls\0");
        assert_eq!(&p.encode(false)[16..20], &[0, 0, 0, 0]);
    }

    #[test]
    fn command_constants_spell_their_names() {
        for (c, name) in [
            (A_CNXN, b"CNXN"),
            (A_AUTH, b"AUTH"),
            (A_OPEN, b"OPEN"),
            (A_OKAY, b"OKAY"),
            (A_CLSE, b"CLSE"),
            (A_WRTE, b"WRTE"),
            (A_SYNC, b"SYNC"),
            (A_STLS, b"STLS"),
        ] {
            assert_eq!(&c.to_le_bytes(), name);
        }
    }

    #[tokio::test]
    async fn read_round_trips_and_rejects_bad_headers() {
        let p = Packet::new(A_WRTE, 1, 2, b"hello".to_vec());
        let bytes = p.encode(true);
        let got = read_packet(&mut &bytes[..], 4096, true)
            .await
            .expect("valid");
        assert_eq!(got, p);

        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert!(matches!(
            read_packet(&mut &bad[..], 4096, true).await,
            Err(WireError::BadMagic { .. })
        ));
        assert!(matches!(
            read_packet(&mut &bytes[..], 4, true).await,
            Err(WireError::TooLong { len: 5, max: 4 })
        ));
        let mut corrupt = bytes.clone();
        corrupt[24] = b'j';
        assert!(matches!(
            read_packet(&mut &corrupt[..], 4096, true).await,
            Err(WireError::BadChecksum { .. })
        ));
        // The newer protocol version does not check the sum.
        assert!(read_packet(&mut &corrupt[..], 4096, false).await.is_ok());
        // Truncated header or payload.
        assert!(matches!(
            read_packet(&mut &bytes[..10], 4096, true).await,
            Err(WireError::Io(_))
        ));
        assert!(matches!(
            read_packet(&mut &bytes[..26], 4096, true).await,
            Err(WireError::Io(_))
        ));
    }

    #[tokio::test]
    async fn a_huge_length_is_refused_before_any_allocation() {
        let mut b = Packet::new(A_WRTE, 1, 2, Vec::new()).encode(false);
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_packet(&mut &b[..], 256 * 1024, false).await,
            Err(WireError::TooLong { .. })
        ));
    }
}
