//! Deterministic CBOR (RFC 8949 §4.2.1, "core deterministic encoding").
//!
//! Signatures are over bytes, so every signer and verifier must turn the same object into the
//! same bytes. The rules, which any language can follow:
//! * integers, lengths and tags in their shortest form; definite lengths only;
//! * floats in the shortest of half, single or double precision that keeps the value exactly;
//!   NaN and infinities are refused (JSON cannot carry them, so neither do we);
//! * map entries sorted by the bytewise order of their *encoded* keys (so shorter text keys
//!   come first, then equal-length keys in byte order); duplicate keys are refused.
//!
//! The encoder goes through [`ciborium::Value`], sorts maps, and writes the result; ciborium
//! already writes shortest integers and floats.

use ciborium::Value;
use serde::{Serialize, de::DeserializeOwned};

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// The value cannot be represented (e.g. a map with non-serializable keys).
    #[error("cannot encode value as CBOR: {0}")]
    Encode(String),
    /// A float was NaN or infinite.
    #[error("non-finite float cannot be encoded canonically")]
    NonFiniteFloat,
    /// A map had the same key twice.
    #[error("map has a duplicate key")]
    DuplicateKey,
    /// The bytes are not valid CBOR for the expected type.
    #[error("malformed CBOR: {0}")]
    Decode(String),
    /// The bytes hold one CBOR item followed by more bytes.
    #[error("{0} trailing bytes after the CBOR item")]
    TrailingBytes(usize),
    /// The input exceeds the caller's size limit.
    #[error("CBOR input is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Input size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
}

/// Encodes `value` canonically.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let mut tree = Value::serialized(value).map_err(|e| CanonicalError::Encode(e.to_string()))?;
    canonicalize(&mut tree)?;
    let mut out = Vec::with_capacity(256);
    ciborium::into_writer(&tree, &mut out).map_err(|e| CanonicalError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes exactly one CBOR item of at most `limit` bytes into `T`.
///
/// Decoding does not require the input to be canonical: signed objects are verified by
/// re-encoding what was decoded, so a non-canonical encoding of a signed object simply fails
/// verification.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CanonicalError> {
    if bytes.len() > limit {
        return Err(CanonicalError::TooLarge { size: bytes.len(), limit });
    }
    let mut rest = bytes;
    let value =
        ciborium::from_reader(&mut rest).map_err(|e| CanonicalError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CanonicalError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Decodes a CBOR value tree (for inspecting a version field before choosing a type).
pub fn value_from_slice(bytes: &[u8], limit: usize) -> Result<Value, CanonicalError> {
    from_slice(bytes, limit)
}

/// The unsigned integer under the text key `version` of a top-level map, if there is one.
/// Lets a decoder report "unknown version" even when the rest of the layout is unknown too.
pub fn version_of(value: &Value) -> Option<u64> {
    value
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some("version"))
        .and_then(|(_, v)| v.as_integer())
        .and_then(|i| u64::try_from(i).ok())
}

fn encoded_key(key: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(16);
    ciborium::into_writer(key, &mut out).map_err(|e| CanonicalError::Encode(e.to_string()))?;
    Ok(out)
}

fn canonicalize(value: &mut Value) -> Result<(), CanonicalError> {
    match value {
        Value::Float(f) if !f.is_finite() => Err(CanonicalError::NonFiniteFloat),
        Value::Array(items) => items.iter_mut().try_for_each(canonicalize),
        Value::Tag(_, inner) => canonicalize(inner),
        Value::Map(entries) => {
            let mut keyed = Vec::with_capacity(entries.len());
            for (mut key, mut val) in entries.drain(..) {
                canonicalize(&mut key)?;
                canonicalize(&mut val)?;
                keyed.push((encoded_key(&key)?, key, val));
            }
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            if keyed.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(CanonicalError::DuplicateKey);
            }
            entries.extend(keyed.into_iter().map(|(_, k, v)| (k, v)));
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn map_keys_sort_shortest_first_then_bytewise() {
        #[derive(Serialize)]
        struct Unordered {
            zz: u8,
            a: u8,
            bb: u8,
            b: u8,
        }
        let bytes = to_vec(&Unordered { zz: 1, a: 2, bb: 3, b: 4 }).expect("encode");
        // {"a":2,"b":4,"bb":3,"zz":1}
        assert_eq!(hex::encode(bytes), "a461610261620462626203627a7a01");
    }

    #[test]
    fn integers_and_floats_use_the_shortest_form() {
        assert_eq!(hex::encode(to_vec(&23u64).expect("e")), "17");
        assert_eq!(hex::encode(to_vec(&24u64).expect("e")), "1818");
        assert_eq!(hex::encode(to_vec(&65536u64).expect("e")), "1a00010000");
        assert_eq!(hex::encode(to_vec(&-1i64).expect("e")), "20");
        assert_eq!(hex::encode(to_vec(&1.5f64).expect("e")), "f93e00");
        assert_eq!(hex::encode(to_vec(&0.7f32).expect("e")), "fa3f333333");
        assert_eq!(hex::encode(to_vec(&0.7f64).expect("e")), "fb3fe6666666666666");
    }

    #[test]
    fn non_finite_floats_are_refused() {
        assert_eq!(to_vec(&f64::NAN), Err(CanonicalError::NonFiniteFloat));
        assert_eq!(to_vec(&vec![f64::INFINITY]), Err(CanonicalError::NonFiniteFloat));
    }

    #[test]
    fn nested_maps_are_sorted_too() {
        let mut inner = BTreeMap::new();
        inner.insert("long".to_string(), 1u8);
        inner.insert("s".to_string(), 2u8);
        let outer = vec![inner];
        assert_eq!(hex::encode(to_vec(&outer).expect("e")), "81a2617302646c6f6e6701");
    }

    #[test]
    fn trailing_bytes_and_oversized_input_are_refused() {
        assert_eq!(from_slice::<u8>(&[0x01, 0x02], 16), Err(CanonicalError::TrailingBytes(1)));
        assert!(matches!(from_slice::<u8>(&[0x01; 20], 16), Err(CanonicalError::TooLarge { .. })));
        assert!(matches!(from_slice::<String>(&[0x01], 16), Err(CanonicalError::Decode(_))));
    }
}
