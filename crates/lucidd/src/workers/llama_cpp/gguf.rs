//! Reading the metadata of a GGUF model file: what `/api/show` and `/api/tags` report.
//!
//! Layout (little-endian): `"GGUF"`, `u32` version (2 or 3), `u64` tensor count, `u64` key/value
//! count, then each key (`u64` length + UTF-8) with a `u32` value type and the value. Strings are
//! `u64` length + bytes; arrays are `u32` element type + `u64` count + elements. Every length is
//! checked against hard limits before anything is allocated, so a hostile file cannot make us
//! allocate gigabytes; big arrays (the tokenizer's vocabulary) are skipped, keeping their length.

use serde_json::{Map, Value, json};
use std::io::{self, BufReader, Read};
use std::path::Path;

const MAGIC: &[u8; 4] = b"GGUF";
/// Longest string value kept (chat templates are a few KiB; this is generous).
const MAX_STRING_BYTES: u64 = 1 << 20;
/// Most key/value pairs read.
const MAX_KEYS: u64 = 100_000;
/// Arrays longer than this are skipped and summarised by their length.
const MAX_KEPT_ARRAY: u64 = 64;
/// Longest skipped array (a vocabulary has a few hundred thousand tokens).
const MAX_ARRAY: u64 = 16 << 20;

/// Why a file's metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file does not start with the GGUF magic.
    #[error("not a GGUF file (it does not start with \"GGUF\")")]
    NotGguf,
    /// A GGUF version this reader does not know.
    #[error("unsupported GGUF version {0}")]
    Version(u32),
    /// A length or type is out of bounds: the file is damaged or hostile.
    #[error("malformed GGUF metadata: {0}")]
    Malformed(String),
    /// Reading failed (including a file that ends early).
    #[error("reading GGUF metadata: {0}")]
    Io(#[from] io::Error),
}

/// The metadata of a GGUF file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufMetadata {
    /// GGUF version.
    pub version: u32,
    /// Number of tensors.
    pub tensor_count: u64,
    /// Every key with its value; skipped arrays appear as `{"array_len": n}`.
    pub entries: Map<String, Value>,
}

impl GgufMetadata {
    /// Reads the metadata at the start of `path`.
    pub fn read(path: &Path) -> Result<Self, GgufError> {
        Self::from_reader(BufReader::new(std::fs::File::open(path)?))
    }

    /// Reads the metadata from a reader positioned at the start of the file.
    pub fn from_reader(mut r: impl Read) -> Result<Self, GgufError> {
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(GgufError::NotGguf);
        }
        let version = read_u32(&mut r)?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let tensor_count = read_u64(&mut r)?;
        let kv_count = read_u64(&mut r)?;
        if kv_count > MAX_KEYS {
            return Err(GgufError::Malformed(format!("{kv_count} metadata keys")));
        }
        let mut entries = Map::new();
        for _ in 0..kv_count {
            let key = read_string(&mut r)?;
            let kind = read_u32(&mut r)?;
            let value = read_value(&mut r, kind)?;
            entries.insert(key, value);
        }
        Ok(Self { version, tensor_count, entries })
    }

    /// A string value.
    pub fn string(&self, key: &str) -> Option<&str> {
        self.entries.get(key).and_then(Value::as_str)
    }

    /// An integer value.
    pub fn uint(&self, key: &str) -> Option<u64> {
        self.entries.get(key).and_then(Value::as_u64)
    }

    /// `general.architecture` (`gemma3`, `llama`, ...).
    pub fn architecture(&self) -> Option<&str> {
        self.string("general.architecture")
    }

    /// The architecture-specific key `<arch>.<suffix>`.
    pub fn arch_uint(&self, suffix: &str) -> Option<u64> {
        self.uint(&format!("{}.{suffix}", self.architecture()?))
    }

    /// How many tokens the vocabulary has (`tokenizer.ggml.tokens`, kept only as its length).
    pub fn vocab_size(&self) -> Option<u64> {
        let tokens = self.entries.get("tokenizer.ggml.tokens")?;
        tokens
            .get("array_len")
            .and_then(Value::as_u64)
            .or_else(|| Some(tokens.as_array()?.len() as u64))
    }

    /// The chat template, if the file carries one.
    pub fn chat_template(&self) -> Option<&str> {
        self.string("tokenizer.chat_template")
    }

    /// Whether the vocabulary names fill-in-the-middle tokens (prefix, suffix, middle), which
    /// llama-server's `/infill` needs: Ollama's `insert` capability.
    pub fn has_fill_in_the_middle(&self) -> bool {
        let all = |names: [&str; 3]| {
            names.iter().all(|n| self.uint(&format!("tokenizer.ggml.{n}_token_id")).is_some())
        };
        all(["fim_pre", "fim_suf", "fim_mid"]) || all(["prefix", "suffix", "middle"])
    }

    /// The quantization of the file, from `general.file_type`.
    pub fn quantization(&self) -> String {
        self.uint("general.file_type").map(file_type_name).unwrap_or("unknown").to_string()
    }

    /// A parameter count for people: `general.size_label`, or derived from
    /// `general.parameter_count`.
    pub fn parameter_size(&self) -> String {
        if let Some(label) = self.string("general.size_label") {
            return label.to_string();
        }
        match self.uint("general.parameter_count") {
            Some(n) if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
            Some(n) if n >= 1_000_000 => format!("{}M", n / 1_000_000),
            Some(n) => n.to_string(),
            None => "unknown".into(),
        }
    }
}

/// llama.cpp's `llama_ftype` names.
fn file_type_name(kind: u64) -> &'static str {
    match kind {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4",
        _ => "unknown",
    }
}

fn read_array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    Ok(u32::from_le_bytes(read_array(r)?))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    Ok(u64::from_le_bytes(read_array(r)?))
}

fn read_string(r: &mut impl Read) -> Result<String, GgufError> {
    let len = read_u64(r)?;
    if len > MAX_STRING_BYTES {
        return Err(GgufError::Malformed(format!("string of {len} bytes")));
    }
    let mut bytes = vec![0u8; len as usize];
    r.read_exact(&mut bytes)?;
    String::from_utf8(bytes).map_err(|_| GgufError::Malformed("string is not UTF-8".into()))
}

fn skip_string(r: &mut impl Read) -> Result<(), GgufError> {
    let len = read_u64(r)?;
    if len > MAX_STRING_BYTES {
        return Err(GgufError::Malformed(format!("string of {len} bytes")));
    }
    let skipped = io::copy(&mut r.take(len), &mut io::sink())?;
    if skipped != len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(())
}

/// Size of a fixed-size scalar type, `None` for strings and arrays.
fn scalar_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

fn read_value(r: &mut impl Read, kind: u32) -> Result<Value, GgufError> {
    Ok(match kind {
        0 => json!(read_array::<1>(r)?[0]),
        1 => json!(read_array::<1>(r)?[0] as i8),
        2 => json!(u16::from_le_bytes(read_array(r)?)),
        3 => json!(i16::from_le_bytes(read_array(r)?)),
        4 => json!(read_u32(r)?),
        5 => json!(i32::from_le_bytes(read_array(r)?)),
        6 => json!(f32::from_le_bytes(read_array(r)?)),
        7 => json!(read_array::<1>(r)?[0] != 0),
        8 => json!(read_string(r)?),
        9 => {
            let elem = read_u32(r)?;
            let count = read_u64(r)?;
            if count > MAX_ARRAY || elem == 9 {
                return Err(GgufError::Malformed(format!(
                    "array of {count} elements of type {elem}"
                )));
            }
            if count > MAX_KEPT_ARRAY {
                match scalar_size(elem) {
                    Some(size) => {
                        let bytes = count * size;
                        if io::copy(&mut r.take(bytes), &mut io::sink())? != bytes {
                            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                        }
                    }
                    None if elem == 8 => (0..count).try_for_each(|_| skip_string(r))?,
                    None => {
                        return Err(GgufError::Malformed(format!(
                            "unknown array element type {elem}"
                        )));
                    }
                }
                json!({ "array_len": count })
            } else {
                Value::Array((0..count).map(|_| read_value(r, elem)).collect::<Result<_, _>>()?)
            }
        }
        10 => json!(read_u64(r)?),
        11 => json!(i64::from_le_bytes(read_array(r)?)),
        12 => json!(f64::from_le_bytes(read_array(r)?)),
        other => return Err(GgufError::Malformed(format!("unknown value type {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> Vec<u8> {
        [&(s.len() as u64).to_le_bytes()[..], s.as_bytes()].concat()
    }

    fn file(kvs: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(7u64.to_le_bytes());
        out.extend((kvs.len() as u64).to_le_bytes());
        for (key, kind, value) in kvs {
            out.extend(string(key));
            out.extend(kind.to_le_bytes());
            out.extend(value);
        }
        out
    }

    #[test]
    fn reads_strings_numbers_and_arrays() {
        let mut big = 8u32.to_le_bytes().to_vec();
        big.extend(100u64.to_le_bytes());
        for i in 0..100 {
            big.extend(string(&format!("tok{i}")));
        }
        let mut small = 4u32.to_le_bytes().to_vec();
        small.extend(2u64.to_le_bytes());
        small.extend(1u32.to_le_bytes());
        small.extend(2u32.to_le_bytes());
        let bytes = file(&[
            ("general.architecture", 8, string("gemma3")),
            ("general.file_type", 4, 15u32.to_le_bytes().to_vec()),
            ("gemma3.context_length", 4, 32768u32.to_le_bytes().to_vec()),
            ("general.size_label", 8, string("270M")),
            ("tokenizer.ggml.tokens", 9, big),
            ("some.pair", 9, small),
            ("some.float", 6, 0.5f32.to_le_bytes().to_vec()),
        ]);
        let meta = GgufMetadata::from_reader(&bytes[..]).expect("parse");
        assert_eq!(meta.tensor_count, 7);
        assert_eq!(meta.architecture(), Some("gemma3"));
        assert_eq!(meta.quantization(), "Q4_K_M");
        assert_eq!(meta.arch_uint("context_length"), Some(32768));
        assert_eq!(meta.parameter_size(), "270M");
        assert_eq!(meta.entries["tokenizer.ggml.tokens"], json!({"array_len": 100}));
        assert_eq!(meta.entries["some.pair"], json!([1, 2]));
        assert_eq!(meta.entries["some.float"], json!(0.5));
    }

    #[test]
    fn refuses_non_gguf_truncated_and_hostile_files() {
        assert!(matches!(GgufMetadata::from_reader(&b"NOTGGUF..."[..]), Err(GgufError::NotGguf)));
        let bytes = file(&[("general.architecture", 8, string("gemma3"))]);
        assert!(matches!(
            GgufMetadata::from_reader(&bytes[..bytes.len() - 2]),
            Err(GgufError::Io(_))
        ));
        let huge = file(&[("k", 8, u64::MAX.to_le_bytes().to_vec())]);
        assert!(matches!(GgufMetadata::from_reader(&huge[..]), Err(GgufError::Malformed(_))));
        let mut bad_version = bytes.clone();
        bad_version[4] = 9;
        assert!(matches!(GgufMetadata::from_reader(&bad_version[..]), Err(GgufError::Version(9))));
        let bad_type = file(&[("k", 77, vec![])]);
        assert!(matches!(GgufMetadata::from_reader(&bad_type[..]), Err(GgufError::Malformed(_))));
    }
}
