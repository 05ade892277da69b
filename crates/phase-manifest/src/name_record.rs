//! `NameRecord`: a publisher's signed statement that a model name means one file. A node that
//! pulls a name from peers takes the file's content id, size and piece list from a record whose
//! publisher its policy trusts, then checks every piece against that list as it arrives, so a
//! peer that sends a bad piece is caught at that piece, and the whole file against its CID.
//!
//! The signature covers [`NAME_RECORD_DOMAIN`] followed by the canonical CBOR of every field
//! but `signature` (SPEC §12). Records of one publisher for one name are ordered by `sequence`:
//! a node keeps the highest.

use phase_identity::{NodeIdentity, PublicKey, Signature};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::canonical::{self, CanonicalError};
use crate::content_id::ContentId;

/// Signature domain of name records.
pub const NAME_RECORD_DOMAIN: &[u8] = b"phase-name:v1";
/// The record format version this crate writes and accepts.
pub const NAME_RECORD_VERSION: u32 = 1;
/// The piece size publishers use unless they choose another.
pub const DEFAULT_PIECE_SIZE: u64 = 4 << 20;
/// Smallest and largest piece size accepted (powers of two in between).
pub const MIN_PIECE_SIZE: u64 = 64 << 10;
/// Largest piece size accepted: a piece is fetched in one range (`/phase/blob/1` allows 16 MiB).
pub const MAX_PIECE_SIZE: u64 = 16 << 20;
/// Longest name a record may carry.
pub const MAX_NAME_LEN: usize = 256;
/// Longest text attribute (format, quantization, licence).
pub const MAX_TEXT_LEN: usize = 1024;
/// Largest record accepted on the wire.
pub const MAX_RECORD_BYTES: usize = 8 << 10;

/// What a name means: one file and how to check it piece by piece.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedFile {
    /// The file's content id (its SHA-256).
    pub cid: ContentId,
    /// Its length in bytes.
    pub size: u64,
    /// The length of every piece but the last.
    pub piece_size: u64,
    /// The content id of the piece list: the SHA-256 digests of the pieces, in order,
    /// concatenated (32 bytes each).
    pub pieces: ContentId,
    /// File format (`gguf`).
    pub format: String,
    /// Quantization (`Q4_K_M`), empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub quantization: String,
    /// Licence name or text, empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub license: String,
}

/// A signed name record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRecord {
    /// Format version, [`NAME_RECORD_VERSION`].
    pub version: u32,
    /// Who vouches for the name.
    pub publisher: PublicKey,
    /// The model name (`gemma3:270m`).
    pub name: String,
    /// Higher replaces lower, for the same publisher and name.
    pub sequence: u64,
    /// When it was signed, in milliseconds since the Unix epoch.
    pub issued_at: u64,
    /// What the name means.
    pub file: NamedFile,
    /// Ed25519 signature by `publisher`.
    pub signature: Signature,
}

#[derive(Serialize)]
struct Body<'a> {
    version: u32,
    publisher: &'a PublicKey,
    name: &'a str,
    sequence: u64,
    issued_at: u64,
    file: &'a NamedFile,
}

/// Why a record was refused. Checked in the order listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameRecordError {
    /// The bytes are not a record.
    #[error("malformed name record: {0}")]
    Malformed(#[from] CanonicalError),
    /// A version this node does not understand.
    #[error(
        "name record version {0} is not supported (this node speaks version {NAME_RECORD_VERSION})"
    )]
    UnknownVersion(u64),
    /// A field is out of bounds.
    #[error("name record refused: {0}")]
    Invalid(String),
    /// The signature does not verify for the publisher's key.
    #[error("name record signature does not verify")]
    BadSignature,
}

impl NameRecord {
    /// Signs a record that `name` means `file`.
    pub fn sign(
        publisher: &NodeIdentity,
        name: &str,
        sequence: u64,
        issued_at: u64,
        file: NamedFile,
    ) -> Result<Self, NameRecordError> {
        let mut record = Self {
            version: NAME_RECORD_VERSION,
            publisher: publisher.public_key(),
            name: name.to_string(),
            sequence,
            issued_at,
            file,
            signature: Signature([0; 64]),
        };
        record.check_fields()?;
        record.signature = publisher.sign(NAME_RECORD_DOMAIN, &record.signed_bytes()?);
        Ok(record)
    }

    /// The canonical CBOR the signature covers (without the domain prefix).
    pub fn signed_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        canonical::to_vec(&Body {
            version: self.version,
            publisher: &self.publisher,
            name: &self.name,
            sequence: self.sequence,
            issued_at: self.issued_at,
            file: &self.file,
        })
    }

    /// The whole record, signature included, as canonical CBOR (its wire form).
    pub fn to_cbor(&self) -> Result<Vec<u8>, CanonicalError> {
        canonical::to_vec(self)
    }

    /// Decodes a record of at most [`MAX_RECORD_BYTES`] and verifies it.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, NameRecordError> {
        let value = canonical::value_from_slice(bytes, MAX_RECORD_BYTES)?;
        match canonical::version_of(&value) {
            Some(v) if v == u64::from(NAME_RECORD_VERSION) => {}
            Some(found) => return Err(NameRecordError::UnknownVersion(found)),
            None => return Err(CanonicalError::Decode("no integer `version`".into()).into()),
        }
        let record: Self =
            value.deserialized().map_err(|e| CanonicalError::Decode(e.to_string()))?;
        record.verify()?;
        Ok(record)
    }

    /// Checks the version, the fields' bounds and the signature.
    pub fn verify(&self) -> Result<(), NameRecordError> {
        if self.version != NAME_RECORD_VERSION {
            return Err(NameRecordError::UnknownVersion(self.version.into()));
        }
        self.check_fields()?;
        self.publisher
            .verify(NAME_RECORD_DOMAIN, &self.signed_bytes()?, &self.signature)
            .map_err(|_| NameRecordError::BadSignature)
    }

    /// How many pieces the file has.
    pub fn piece_count(&self) -> u64 {
        self.file.size.div_ceil(self.file.piece_size)
    }

    fn check_fields(&self) -> Result<(), NameRecordError> {
        let invalid = |why: String| Err(NameRecordError::Invalid(why));
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return invalid(format!("the name must have 1 to {MAX_NAME_LEN} bytes"));
        }
        let piece = self.file.piece_size;
        if !(MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(&piece) || !piece.is_power_of_two() {
            return invalid(format!(
                "piece size {piece} is not a power of two from {MIN_PIECE_SIZE} to {MAX_PIECE_SIZE}"
            ));
        }
        for (what, text) in [
            ("format", &self.file.format),
            ("quantization", &self.file.quantization),
            ("license", &self.file.license),
        ] {
            if text.len() > MAX_TEXT_LEN {
                return invalid(format!("{what} is over {MAX_TEXT_LEN} bytes"));
            }
        }
        Ok(())
    }
}

/// The piece list of `bytes` read from `reader`: the SHA-256 of each `piece_size` piece, in
/// order, concatenated; and the whole file's content id and size, from the same single read.
pub fn piece_list(
    mut reader: impl std::io::Read,
    piece_size: u64,
) -> std::io::Result<(Vec<u8>, ContentId, u64)> {
    let mut whole = Sha256::new();
    let mut list = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut piece = Sha256::new();
    let mut in_piece = 0u64;
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            let take = chunk.len().min((piece_size - in_piece) as usize);
            piece.update(&chunk[..take]);
            whole.update(&chunk[..take]);
            in_piece += take as u64;
            size += take as u64;
            chunk = &chunk[take..];
            if in_piece == piece_size {
                list.extend_from_slice(&std::mem::take(&mut piece).finalize());
                in_piece = 0;
            }
        }
    }
    if in_piece > 0 {
        list.extend_from_slice(&piece.finalize());
    }
    Ok((list, ContentId::from_sha256(whole.finalize().into()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(bytes: &[u8]) -> NamedFile {
        let (list, cid, size) = piece_list(bytes, MIN_PIECE_SIZE).expect("read");
        NamedFile {
            cid,
            size,
            piece_size: MIN_PIECE_SIZE,
            pieces: ContentId::for_bytes(&list),
            format: "gguf".into(),
            quantization: "Q4_K_M".into(),
            license: String::new(),
        }
    }

    #[test]
    fn piece_lists_cover_the_file_and_its_last_partial_piece() {
        let bytes: Vec<u8> = (0..(2 * MIN_PIECE_SIZE + 10) as u32).map(|i| i as u8).collect();
        let (list, cid, size) = piece_list(&bytes[..], MIN_PIECE_SIZE).expect("read");
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(cid, ContentId::for_bytes(&bytes));
        assert_eq!(list.len(), 3 * 32);
        let last = &bytes[2 * MIN_PIECE_SIZE as usize..];
        assert_eq!(&list[64..], Sha256::digest(last).as_slice());
        assert_eq!(piece_list(&b""[..], MIN_PIECE_SIZE).expect("read").0, Vec::<u8>::new());
    }

    #[test]
    fn a_record_round_trips_and_any_change_breaks_its_signature() {
        let publisher = NodeIdentity::from_seed([7; 32]);
        let record = NameRecord::sign(&publisher, "gemma3:270m", 1, 1_000, file(b"model bytes"))
            .expect("sign");
        let wire = record.to_cbor().expect("cbor");
        assert_eq!(NameRecord::from_cbor(&wire).expect("verifies"), record);
        let mut other = record.clone();
        other.file.size += 1;
        assert_eq!(other.verify(), Err(NameRecordError::BadSignature));
        let mut renamed = record.clone();
        renamed.name = "llama3:8b".into();
        assert_eq!(renamed.verify(), Err(NameRecordError::BadSignature));
        let mut newer = record;
        newer.version = 2;
        assert_eq!(newer.verify(), Err(NameRecordError::UnknownVersion(2)));
    }

    #[test]
    fn bad_fields_are_refused_before_signing() {
        let publisher = NodeIdentity::from_seed([7; 32]);
        let mut odd = file(b"x");
        odd.piece_size = 3 << 20;
        assert!(matches!(
            NameRecord::sign(&publisher, "m", 1, 0, odd),
            Err(NameRecordError::Invalid(_))
        ));
        assert!(matches!(
            NameRecord::sign(&publisher, "", 1, 0, file(b"x")),
            Err(NameRecordError::Invalid(_))
        ));
        assert!(NameRecord::from_cbor(&[0xa0]).is_err(), "not a record");
    }
}
