//! A model as other nodes see it: a generic catalog entry (kind `model`, name, CID, size)
//! whose attributes lucidd defines — family, format, parameter size, quantization, context
//! and embedding lengths, capabilities — written and read back here, in one place, so nothing
//! is lost between a node's `/api/show` and a peer's.

use phase_net::CatalogEntry;
use phase_protocol::ContentId;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use time::OffsetDateTime;

use crate::names::ModelName;
use crate::workers::{Capability, ModelInfo};

/// The catalog kind of a model.
pub const MODEL_KIND: &str = "model";
/// The catalog source of the models the workers serve.
pub const FROM_WORKERS: phase_node::catalog::Source = "workers";
/// The catalog source of models made with `/api/create` and `/api/copy`.
pub const MADE_HERE: phase_node::catalog::Source = "made here";
/// The catalog kind of an uploaded blob.
pub const BLOB_KIND: &str = "blob";

/// A blob of the store as the catalog lists it (unnamed, by CID).
pub fn blob_entry(cid: &ContentId, size: u64) -> CatalogEntry {
    CatalogEntry {
        kind: BLOB_KIND.into(),
        name: String::new(),
        cid: cid.to_string(),
        size,
        attributes: BTreeMap::new(),
    }
}

/// `info` as this node's catalog lists it.
pub fn to_entry(info: &ModelInfo) -> CatalogEntry {
    let cid = ContentId::from_sha256_hex(&info.digest).map(|c| c.to_string()).unwrap_or_default();
    let capabilities: Vec<&str> = info.capabilities.iter().map(|c| c.as_str()).collect();
    let attributes = BTreeMap::from([
        ("format".to_string(), json!(info.format)),
        ("family".to_string(), json!(info.family)),
        ("parameter_size".to_string(), json!(info.parameter_size)),
        ("quantization_level".to_string(), json!(info.quantization_level)),
        ("context_length".to_string(), json!(info.context_length)),
        ("embedding_length".to_string(), json!(info.embedding_length)),
        ("capabilities".to_string(), json!(capabilities)),
    ]);
    CatalogEntry {
        kind: MODEL_KIND.into(),
        name: info.name.to_string(),
        cid,
        size: info.size,
        attributes,
    }
}

/// A peer's model described for `/api/show` and validation; `None` for an entry that is not a
/// model or does not name one.
pub fn from_entry(entry: &CatalogEntry) -> Option<ModelInfo> {
    if entry.kind != MODEL_KIND {
        return None;
    }
    let name = ModelName::parse(&entry.name).ok()?;
    let text = |key: &str| entry.attributes.get(key).and_then(Value::as_str).unwrap_or_default();
    let number = |key: &str| entry.attributes.get(key).and_then(Value::as_u64).unwrap_or(0);
    let capabilities = entry
        .attributes
        .get("capabilities")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).filter_map(Capability::from_name))
        .into_iter()
        .flatten()
        .collect();
    Some(ModelInfo {
        name,
        digest: entry.cid.parse::<ContentId>().map(|c| c.sha256_hex()).unwrap_or_default(),
        size: entry.size,
        format: text("format").to_string(),
        family: text("family").to_string(),
        parameter_size: text("parameter_size").to_string(),
        quantization_level: text("quantization_level").to_string(),
        context_length: number("context_length"),
        embedding_length: number("embedding_length"),
        capabilities,
        template: String::new(),
        model_info: serde_json::Map::new(),
        modified_at: OffsetDateTime::UNIX_EPOCH,
        problem: None,
        notes: Vec::new(),
        defaults: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workers::ModelWorker;

    #[test]
    fn a_model_survives_the_catalog_both_ways() {
        let echo = crate::workers::echo::EchoWorker::new(phase_identity::NodeIdentity::generate());
        let mut info = echo.models().remove(0);
        info.capabilities.push(Capability::Tools);
        let entry = to_entry(&info);
        assert_eq!(entry.kind, "model");
        assert!(entry.cid.starts_with("bafkrei"), "{}", entry.cid);
        let back = from_entry(&entry).expect("a model");
        for (field, ours, theirs) in [
            ("name", info.name.to_string(), back.name.to_string()),
            ("digest", info.digest.clone(), back.digest.clone()),
            ("family", info.family.clone(), back.family.clone()),
            ("format", info.format.clone(), back.format.clone()),
            ("parameter_size", info.parameter_size.clone(), back.parameter_size.clone()),
            ("quantization", info.quantization_level.clone(), back.quantization_level.clone()),
        ] {
            assert_eq!(ours, theirs, "{field}");
        }
        assert_eq!(
            (back.size, back.context_length, back.embedding_length),
            (info.size, info.context_length, info.embedding_length)
        );
        assert_eq!(back.capabilities, info.capabilities);
        let mut other = entry.clone();
        other.kind = "wasm-module".into();
        assert!(from_entry(&other).is_none(), "not a model");
    }
}
