//! Ollama model names: `[host/][namespace/]model[:tag]`.
//!
//! `llama3.2`, `llama3.2:latest`, `library/llama3.2` and
//! `registry.ollama.ai/library/llama3.2:latest` all name the same model; matching ignores case.
//! The display form drops the default host and namespace but keeps the tag.

use std::fmt;

/// The host of names that give none: Ollama's registry.
pub const DEFAULT_HOST: &str = "registry.ollama.ai";
const DEFAULT_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";
/// Longest name part Ollama accepts; also keeps hostile input out of maps and logs.
const MAX_PART_LEN: usize = 128;

/// A parsed, normalised (lower-case) model name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName {
    host: String,
    namespace: String,
    model: String,
    tag: String,
}

/// Why a string is not a model name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid model name {0:?}: expected [host/][namespace/]model[:tag] using letters, digits, '.', '-' and '_'"
)]
pub struct InvalidModelName(pub String);

fn valid_part(part: &str, allow_colon: bool) -> bool {
    !part.is_empty()
        && part.len() <= MAX_PART_LEN
        && part.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && part.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') || (allow_colon && c == ':')
        })
}

impl ModelName {
    /// Parses and normalises a name.
    pub fn parse(name: &str) -> Result<Self, InvalidModelName> {
        let invalid = || InvalidModelName(name.chars().take(2 * MAX_PART_LEN).collect());
        let lower = name.trim().to_ascii_lowercase();
        let (path, tag) = match lower.rsplit_once(':') {
            Some((path, tag)) if !tag.contains('/') => (path, tag),
            _ => (lower.as_str(), DEFAULT_TAG),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (host, namespace, model) = match parts.as_slice() {
            [model] => (DEFAULT_HOST, DEFAULT_NAMESPACE, *model),
            [namespace, model] => (DEFAULT_HOST, *namespace, *model),
            [host, namespace, model] => (*host, *namespace, *model),
            _ => return Err(invalid()),
        };
        if !valid_part(host, true)
            || !valid_part(namespace, false)
            || !valid_part(model, false)
            || !valid_part(tag, false)
        {
            return Err(invalid());
        }
        Ok(Self {
            host: host.into(),
            namespace: namespace.into(),
            model: model.into(),
            tag: tag.into(),
        })
    }

    /// The model part (`llama3.2`).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The namespace (`library` for official models); OpenAI's `owned_by`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The registry host (`registry.ollama.ai` unless the name gives one).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The tag (`latest` unless the name gives one).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Where an Ollama store keeps this name's manifest, under its `manifests/` directory:
    /// `HOST/NAMESPACE/MODEL/TAG`.
    pub fn manifest_path(&self) -> std::path::PathBuf {
        [&self.host, &self.namespace, &self.model, &self.tag].iter().collect()
    }
}

impl fmt::Display for ModelName {
    /// The shortest form that names the same model: `llama3.2:latest`, `user/mario:7b`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host != DEFAULT_HOST {
            write!(f, "{}/{}/", self.host, self.namespace)?;
        } else if self.namespace != DEFAULT_NAMESPACE {
            write!(f, "{}/", self.namespace)?;
        }
        write!(f, "{}:{}", self.model, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(name: &str) -> String {
        ModelName::parse(name).expect("valid").to_string()
    }

    #[test]
    fn default_parts_are_filled_in_and_dropped_for_display() {
        for same in [
            "llama3.2",
            "llama3.2:latest",
            "library/llama3.2",
            "registry.ollama.ai/library/llama3.2:latest",
            "Llama3.2",
        ] {
            assert_eq!(shown(same), "llama3.2:latest", "{same}");
        }
        assert_eq!(shown("myuser/mario:7b"), "myuser/mario:7b");
        assert_eq!(shown("example.com:5000/team/m:v1"), "example.com:5000/team/m:v1");
    }

    #[test]
    fn invalid_names_are_refused() {
        for bad in ["", ":", "a/b/c/d", "bad name", "-x", "x:", "x:y/z", "../etc", &"x".repeat(200)]
        {
            assert!(ModelName::parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
