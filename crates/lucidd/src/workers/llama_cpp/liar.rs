//! Ways a test build's llama.cpp worker lies about its answers (`--test-fault`), so spot checks
//! are tested against real lies: the receipts of these answers verify and bind, and only a
//! check against the model tells them apart from honest ones.

use phase_protocol::{InferenceInput, InferenceJob};

use super::DEFAULT_NUM_CTX;
use super::catalog::ModelFile;
use super::supervisor::ServerMode;
use serde_json::{Value, json};

/// A lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// Answers from an unrelated prompt: fluent text from the right model that does not follow
    /// from what was asked.
    MadeUpText,
    /// Stops early and claims the answer ended by itself.
    Truncate,
    /// Samples hotter than asked.
    Hotter,
    /// Leaves the system prompt out.
    DropSystem,
    /// As a verifier, reports scores that make any answer look wrong (a slanderer).
    FalseScores,
    /// Serves another model of its directory under the asked name (and its file's CID), its
    /// text re-tokenized with the asked model's tokenizer so the ids look plausible. With a
    /// cruder quantization of the same model as the other file, this is the quantization liar.
    OtherModel,
}

/// Tokens a truncating liar sends before it claims to be done.
pub const TRUNCATE_AFTER: usize = 6;

impl Lie {
    /// The lie a `--test-fault` value names; `None` for other faults.
    pub fn parse(fault: &str) -> Option<Self> {
        Some(match fault {
            "made-up-text" => Self::MadeUpText,
            "truncate" => Self::Truncate,
            "hotter" => Self::Hotter,
            "drop-system" => Self::DropSystem,
            "false-scores" => Self::FalseScores,
            "other-model" => Self::OtherModel,
            _ => return None,
        })
    }

    /// The job this liar really runs instead of `job`.
    pub fn distort(self, job: &InferenceJob) -> InferenceJob {
        let mut job = job.clone();
        match self {
            Self::MadeUpText => {
                job.input = InferenceInput::Generate {
                    prompt: "Once upon a time, in a small village by the sea,".into(),
                    suffix: None,
                    system: None,
                    raw: true,
                    images: Vec::new(),
                    context: Vec::new(),
                    return_context: false,
                };
            }
            Self::Hotter => {
                let asked = job.options.get("temperature").and_then(Value::as_f64).unwrap_or(0.8);
                job.options.insert("temperature".into(), json!(asked.max(0.0) + 1.2));
            }
            Self::DropSystem => match &mut job.input {
                InferenceInput::Chat { messages } => messages.retain(|m| m.role != "system"),
                InferenceInput::Generate { system, .. } => *system = None,
            },
            Self::Truncate | Self::FalseScores | Self::OtherModel => {}
        }
        job
    }

    /// The scores this liar reports instead of `scored`: at every position, a token the
    /// answer does not have is made the certain one.
    pub fn falsify(self, scored: &mut [crate::spot_check::Scored]) {
        if self != Self::FalseScores {
            return;
        }
        for position in scored {
            let invented = position.top.iter().map(|(id, _)| *id).max().unwrap_or(0) + 1;
            position.top.insert(0, (invented, 0.0));
            position.end_ids.clear();
        }
    }
}

impl super::LlamaCppWorker {
    /// The file a job for `claimed` really runs on: `claimed` itself, except for the test
    /// build's other-model liar, which runs another model of its directory and re-tokenizes
    /// the text with `claimed`'s tokenizer (the server whose address comes back) so the ids
    /// look like `claimed`'s.
    pub(super) async fn substitute(&self, claimed: &ModelFile) -> (ModelFile, Option<String>) {
        if self.config.lie != Some(Lie::OtherModel) {
            return (claimed.clone(), None);
        }
        let files = self.files();
        let Some(other) = files.iter().find(|f| f.name != claimed.name && f.metadata.is_ok())
        else {
            return (claimed.clone(), None);
        };
        let loaded = self.loaded(&claimed.name, ServerMode::Generate);
        let spec = self.spec(claimed, DEFAULT_NUM_CTX, ServerMode::Generate);
        match loaded.supervisor.ensure(&spec).await {
            Ok(base) => (other.clone(), Some(base)),
            Err(_) => (claimed.clone(), None),
        }
    }
}
