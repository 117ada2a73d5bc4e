//! `Encoded<T>`: the postcard bytes of a record as a redb value.
//!
//! redb's `Value::from_bytes` cannot fail, so decoding happens *outside* redb, in
//! [`Encoded::decode`], which returns an error for bad bytes instead of panicking. Each record
//! type has a stable, hand-written [`Record::TYPE_NAME`] that redb checks when a table is opened.

use std::fmt::Debug;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A type stored in a redb table as postcard bytes.
pub trait Record: Serialize + DeserializeOwned + Debug {
    /// Stable name checked by redb when the table is opened; never change it.
    const TYPE_NAME: &'static str;
}

/// Why a record could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// postcard refused the bytes or the value.
    #[error("{type_name}: {source}")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    Postcard {
        type_name: &'static str,
        source: postcard::Error,
    },
    /// The bytes decoded but left bytes over: a truncated or misread record.
    #[error("{type_name}: {extra} trailing bytes after the record")]
    // Fields are named for what they hold; the #[error] text shows each in use.
    #[allow(missing_docs)]
    Trailing {
        type_name: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
}

/// The encoded bytes of a `T`, typed for redb.
pub struct Encoded<T> {
    bytes: Vec<u8>,
    _t: PhantomData<T>,
}

impl<T> Debug for Encoded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encoded({} bytes)", self.bytes.len())
    }
}

impl<T: Record> Encoded<T> {
    /// Encode a record.
    ///
    /// # Errors
    /// If postcard cannot serialise the value.
    pub fn encode(value: &T) -> Result<Self, CodecError> {
        let bytes = postcard::to_stdvec(value).map_err(|source| CodecError::Postcard {
            type_name: T::TYPE_NAME,
            source,
        })?;
        Ok(Encoded {
            bytes,
            _t: PhantomData,
        })
    }

    /// Decode strictly: every byte must be used.
    ///
    /// # Errors
    /// If the bytes are not a valid `T`.
    pub fn decode(&self) -> Result<T, CodecError> {
        decode_bytes(&self.bytes)
    }

    /// The raw bytes (for fixtures and backups).
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Wrap raw bytes without checking them (tests writing old layouts, restores).
    #[must_use]
    pub fn from_raw(bytes: Vec<u8>) -> Self {
        Encoded {
            bytes,
            _t: PhantomData,
        }
    }
}

/// Strictly decode postcard bytes as a `T`.
///
/// # Errors
/// If the bytes are not exactly one valid `T`.
pub fn decode_bytes<T: Record>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|source| CodecError::Postcard {
            type_name: T::TYPE_NAME,
            source,
        })?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(CodecError::Trailing {
            type_name: T::TYPE_NAME,
            extra: rest.len(),
        })
    }
}

impl<T: Record> redb::Value for Encoded<T> {
    type SelfType<'a>
        = Encoded<T>
    where
        Self: 'a;
    type AsBytes<'a>
        = &'a [u8]
    where
        Self: 'a;

    fn fixed_width() -> Option<usize> {
        None
    }

    fn from_bytes<'a>(data: &'a [u8]) -> Encoded<T>
    where
        Self: 'a,
    {
        Encoded {
            bytes: data.to_vec(),
            _t: PhantomData,
        }
    }

    fn as_bytes<'a, 'b: 'a>(value: &'a Encoded<T>) -> &'a [u8]
    where
        Self: 'b,
    {
        &value.bytes
    }

    fn type_name() -> redb::TypeName {
        redb::TypeName::new(T::TYPE_NAME)
    }
}
