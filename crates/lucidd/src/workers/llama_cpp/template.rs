//! Chat templates: the GGUF's own, or a `NAME.jinja` file beside `NAME.gguf` that replaces it
//! (what a Modelfile's TEMPLATE does for Ollama; useful when a GGUF carries no template or a
//! poor one), and what a template lets the model do.
//!
//! llama-server renders the template with Jinja and works out from it how the model writes
//! tool calls and reasoning. Capabilities must be known before any server is started
//! (`/api/show`, and refusing `tools` or `think` up front), so they are read off the template's
//! code the way Ollama reads its own templates: a template that handles `tools` can call tools,
//! one that handles reasoning can think.

use std::path::{Path, PathBuf};

/// Largest template file read: real templates are a few KiB, the biggest about 100 KiB.
const MAX_TEMPLATE_BYTES: u64 = 1024 * 1024;

/// A chat template that replaces the GGUF's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateOverride {
    /// The `.jinja` file, passed to llama-server as `--chat-template-file`.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

/// The override beside `model` (`NAME.gguf` → `NAME.jinja`), if there is one. A file that is
/// there but unreadable, too big or not UTF-8 is an error, so a typo does not silently fall
/// back to the GGUF's template.
pub fn override_for(model: &Path) -> Result<Option<TemplateOverride>, String> {
    let path = model.with_extension("jinja");
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read the chat template {}: {e}", path.display())),
    };
    if meta.len() > MAX_TEMPLATE_BYTES {
        return Err(format!(
            "the chat template {} is {} bytes; templates over {MAX_TEMPLATE_BYTES} bytes are refused",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the chat template {}: {e}", path.display()))?;
    Ok(Some(TemplateOverride { path, text }))
}

/// Identifiers used in the template's code (inside `{% %}` and `{{ }}`), leaving out its
/// literal text and quoted strings.
fn code_identifiers(template: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start..];
        let close = if after.starts_with("{%") {
            "%}"
        } else if after.starts_with("{{") {
            "}}"
        } else {
            rest = &after[1..];
            continue;
        };
        let body = &after[2..];
        let end = body.find(close).unwrap_or(body.len());
        let mut code = String::with_capacity(end);
        let mut quote = None;
        for c in body[..end].chars() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '\'' || c == '"' => quote = Some(c),
                None => code.push(c),
            }
        }
        words.extend(
            code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .map(str::to_string),
        );
        rest = &body[(end + 2).min(body.len())..];
    }
    words
}

/// The template renders tool definitions, so llama-server can offer tools and parse calls.
pub fn supports_tools(template: &str) -> bool {
    code_identifiers(template).iter().any(|w| w == "tools")
}

/// The template handles reasoning: a thinking switch, earlier reasoning, or think tags.
pub fn supports_thinking(template: &str) -> bool {
    template.contains("<think>")
        || code_identifiers(template)
            .iter()
            .any(|w| matches!(w.as_str(), "enable_thinking" | "reasoning_content" | "thinking"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_read_from_the_code_not_the_text() {
        assert!(supports_tools("{%- if tools %}{{ tools | tojson }}{% endif %}"));
        assert!(supports_tools("{% for t in tools -%}x{% endfor %}"));
        assert!(!supports_tools("You have no tools.{{ messages[0].content }}"));
        assert!(!supports_tools("{{ 'tools' }}"));
        assert!(!supports_tools("{{ toolset }}"));
    }

    #[test]
    fn thinking_is_a_switch_earlier_reasoning_or_think_tags() {
        assert!(supports_thinking("{% if enable_thinking %}x{% endif %}"));
        assert!(supports_thinking("{{ message.reasoning_content }}"));
        assert!(supports_thinking("{{ '<start_of_turn>model\\n<think>\\n' }}"));
        assert!(!supports_thinking("{{ 'I am thinking' }}{{ message.content }}"));
        assert!(!supports_thinking(
            "{%- for message in messages -%}{{ message.content }}{%- endfor -%}"
        ));
    }

    #[test]
    fn a_template_beside_the_model_replaces_its_own() {
        let dir = tempfile::tempdir().expect("tmp");
        let model = dir.path().join("m.gguf");
        assert_eq!(override_for(&model), Ok(None));
        std::fs::write(dir.path().join("m.jinja"), "{{ tools }}").expect("write");
        let found = override_for(&model).expect("ok").expect("some");
        assert_eq!(found.text, "{{ tools }}");
        assert_eq!(found.path, dir.path().join("m.jinja"));
        std::fs::write(dir.path().join("m.jinja"), [0xff, 0xfe]).expect("write");
        assert!(override_for(&model).expect_err("not utf-8").contains("m.jinja"));
    }
}
