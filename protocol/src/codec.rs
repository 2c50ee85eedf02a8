//! Wire encoding: JSON at the edges, bincode with a version tag between our own processes.
//!
//! An internal message is `b"MO"`, the format version (u16, little endian), the message
//! kind (u8), then the bincode body. A reader refuses a newer version or another kind
//! with a clear error instead of misreading the bytes.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The format version this build writes. Changing any bincode-encoded type (field order, a
/// new field, a new enum variant) bumps it, and sets that type's [`WireMessage::SINCE`].
///
/// Version 2: `JobRecord.remixed_from`, `deleted_at_ms`, `files_removed_at_ms` and `webhook`.
pub const WIRE_VERSION: u16 = 2;

const MAGIC: [u8; 2] = *b"MO";
const HEADER_LEN: usize = 5;

/// A message type that travels bincode-encoded between our processes.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// A tag that tells message types apart on the wire.
    const KIND: u8;
    /// The type's name, for errors.
    const NAME: &'static str;
    /// The format version in which this type last changed: bodies of this version or newer
    /// (up to [`WIRE_VERSION`]) decode as the current type.
    const SINCE: u16 = 1;

    /// Reads a body written in `version`, older than [`WireMessage::SINCE`] (stored records
    /// outlive an upgrade). Types that keep no older layout refuse it.
    fn upgrade(version: u16, body: &[u8]) -> Result<Self, CodecError> {
        let _ = body;
        Err(CodecError::RetiredVersion {
            found: version,
            supported: Self::SINCE,
        })
    }
}

/// Why bytes could not be turned into a message (or a message into bytes).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes do not start with our header.
    #[error("not a mochi-serve message ({len} bytes, no MO header)")]
    NotOurs {
        /// Length of the bytes.
        len: usize,
    },
    /// The message was written by a newer version of mochi-serve.
    #[error(
        "message format version {found} is newer than the supported {supported}: upgrade this process"
    )]
    UnsupportedVersion {
        /// The version in the message.
        found: u16,
        /// The newest version this build reads.
        supported: u16,
    },
    /// The message was written in a format version this build no longer reads.
    #[error(
        "message format version {found} is older than the supported {supported}: drain the old processes first"
    )]
    RetiredVersion {
        /// The version in the message.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// The bytes hold another message type.
    #[error("expected a {expected} message, got kind {found}")]
    WrongKind {
        /// The expected type.
        expected: &'static str,
        /// The kind tag found.
        found: u8,
    },
    /// The body did not decode.
    #[error("corrupt {message} message")]
    Decode {
        /// The expected type.
        message: &'static str,
        /// The cause.
        #[source]
        source: bincode::error::DecodeError,
    },
    /// The message did not encode.
    #[error("failed to encode a {message} message")]
    Encode {
        /// The type.
        message: &'static str,
        /// The cause.
        #[source]
        source: bincode::error::EncodeError,
    },
    /// A JSON document did not parse.
    #[error("invalid JSON")]
    Json(#[from] serde_json::Error),
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<{ 64 * 1024 * 1024 }>()
}

/// Encodes an internal message: header, then bincode.
pub fn encode<M: WireMessage>(message: &M) -> Result<Vec<u8>, CodecError> {
    let mut bytes = Vec::with_capacity(128);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    bytes.push(M::KIND);
    bincode::serde::encode_into_std_write(message, &mut bytes, bincode_config()).map_err(
        |source| CodecError::Encode {
            message: M::NAME,
            source,
        },
    )?;
    Ok(bytes)
}

/// Decodes an internal message, refusing newer versions and other message kinds.
pub fn decode<M: WireMessage>(bytes: &[u8]) -> Result<M, CodecError> {
    if bytes.len() < HEADER_LEN || bytes[..2] != MAGIC {
        return Err(CodecError::NotOurs { len: bytes.len() });
    }
    let version = u16::from_le_bytes([bytes[2], bytes[3]]);
    if version > WIRE_VERSION {
        return Err(CodecError::UnsupportedVersion {
            found: version,
            supported: WIRE_VERSION,
        });
    }
    if bytes[4] != M::KIND {
        return Err(CodecError::WrongKind {
            expected: M::NAME,
            found: bytes[4],
        });
    }
    let body = &bytes[HEADER_LEN..];
    if version < M::SINCE {
        return M::upgrade(version, body);
    }
    decode_body(body, M::NAME)
}

/// Decodes a bincode body (no header) as `T`: the current type, or an older layout of one
/// in [`WireMessage::upgrade`].
pub fn decode_body<T: DeserializeOwned>(body: &[u8], name: &'static str) -> Result<T, CodecError> {
    let (message, _) =
        bincode::serde::decode_from_slice(body, bincode_config()).map_err(|source| {
            CodecError::Decode {
                message: name,
                source,
            }
        })?;
    Ok(message)
}

/// Encodes an edge message as JSON.
pub fn to_json<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    Ok(serde_json::to_vec(message)?)
}

/// Decodes an edge message from JSON.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(serde_json::from_slice(bytes)?)
}

/// Lower-case hex of `bytes` (digests in records, key hashes, signatures).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests;
