//! The operator's policy: what this node donates, to whom, and when.
//!
//! `policy.toml` (in the data directory unless `--policy` names another file) is read at start
//! and again whenever it changes ([`watch`]); an edit that does not parse keeps the last good
//! policy. It governs only work *for other nodes*: requests from this machine's own clients never
//! pass through it, so the operator can always use their own hardware.

pub mod admission;
pub mod cli;
pub mod gates;
pub mod watch;

use serde::{Deserialize, Serialize};
use std::ops::Range;
use toml::Spanned;

/// The policy written on first start: every setting at its default, explained.
pub const DEFAULT_POLICY: &str = r#"# lucidd operator policy. Edits take effect within a second; an edit that does not parse
# is ignored (the last good policy stays in force) and the error is logged.
# Check a file with `lucidd policy check FILE`; see what is in force with `lucidd policy show`.
# This governs only jobs from other nodes. Requests from this machine are never restricted.

# Models other nodes may use, as globs over name:tag ("gemma3:*", "*").
serve_models = ["*"]

# Who may send jobs: PeerIds (12D3KooW...) or hex Ed25519 public keys. Empty means nobody;
# "*" (written explicitly) means anybody. --allow-signer adds to this list.
allowed_signers = []

# Publishers whose name records this node accepts when it resolves a model name through the
# DHT (PeerIds or hex Ed25519 public keys). This node's own key is always trusted.
trusted_publishers = []

# Stop serving others now (jobs already running finish).
manual_pause = false

# Never send this node's prompts to other nodes.
local_only = false

# Jobs from others running at once; more are refused as busy.
max_concurrent_remote_jobs = 2

# Jobs per minute from any one signer.
per_peer_rate = 30

[auto_pause]
# Pause while the machine runs on battery.
on_battery = true
# Pause while any thermal zone is hotter than this (degrees Celsius).
max_temp_celsius = 85.0
# Serve others only inside these local-time windows ("22:00-07:00" wraps midnight).
# Empty means at any time.
hours = []

[limits]
# Largest job request (the signed manifest's payload) accepted from another node, in bytes.
max_request_bytes = 1048576
# Longest a job for another node may run before it is cancelled, in seconds.
max_job_seconds = 300

[verify]
# Spot checks of answers other nodes serve this node's requests, when this node holds the same
# model: their token ids are re-scored on this node's copy before the answer ends, and an
# answer that could not have come from the asked model is refused.
# Share of answers checked (0 to 1); X-Lucid-Verify: spot|full|off decides per request.
share = 0.1
# Positions re-scored per checked answer (plus its end).
positions = 16
# Every answer from a peer is checked until it has served this many.
new_peer_answers = 10
# Peers whose standing (0 to 1: answers checked and passed, lies caught, proofs) is under this
# are not used. A new peer stands at 0.5; one caught lie puts it near 0.
reputation_floor = 0.25

# One-off exceptions: accept `jobs` jobs from a signer that is not allowed above. Each such
# job is recorded in receipts/operator-grants.log.
# [[grant]]
# signer = "12D3KooW..."
# jobs = 1
"#;

/// The policy in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Globs over `name:tag` of models others may use.
    pub serve_models: Vec<Spanned<String>>,
    /// Signers allowed to send jobs (PeerIds, hex keys, or `*`).
    pub allowed_signers: Vec<Spanned<String>>,
    /// Publishers whose name records are accepted (PeerIds or hex keys).
    pub trusted_publishers: Vec<Spanned<String>>,
    /// Serving others is paused by hand.
    pub manual_pause: bool,
    /// This node's prompts never leave it.
    pub local_only: bool,
    /// Remote jobs running at once.
    pub max_concurrent_remote_jobs: u32,
    /// Jobs per minute per signer.
    pub per_peer_rate: u32,
    /// Automatic pauses.
    pub auto_pause: AutoPause,
    /// Limits on each remote job.
    pub limits: Limits,
    /// Spot checks of peers' answers.
    pub verify: VerifyPolicy,
    /// One-off exceptions to `allowed_signers`.
    #[serde(rename = "grant")]
    pub grants: Vec<Grant>,
}

/// How often and how much answers from other nodes are spot-checked (`[verify]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyPolicy {
    /// Share of answers checked, 0 to 1.
    pub share: f64,
    /// Positions re-scored per checked answer.
    pub positions: u32,
    /// Every answer of a peer is checked until it served this many.
    pub new_peer_answers: u32,
    /// Peers standing under this are not used.
    pub reputation_floor: f64,
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        Self {
            share: 0.1,
            positions: 16,
            new_peer_answers: 10,
            reputation_floor: phase_node::reputation::FLOOR,
        }
    }
}

/// When serving others pauses by itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoPause {
    /// Pause on battery power.
    pub on_battery: bool,
    /// Pause above this temperature (°C).
    pub max_temp_celsius: Option<f64>,
    /// Serve only inside these local-time windows (`HH:MM-HH:MM`).
    pub hours: Vec<Spanned<String>>,
}

/// Limits on each job from another node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest manifest payload, bytes.
    pub max_request_bytes: u64,
    /// Longest run, seconds.
    pub max_job_seconds: u64,
}

/// Permission for a few jobs from one signer that is not on the allowlist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The signer (PeerId or hex key).
    pub signer: Spanned<String>,
    /// How many jobs.
    #[serde(default = "one")]
    pub jobs: u32,
}

fn one() -> u32 {
    1
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            serve_models: vec![Spanned::new(0..0, "*".to_string())],
            allowed_signers: Vec::new(),
            trusted_publishers: Vec::new(),
            manual_pause: false,
            local_only: false,
            max_concurrent_remote_jobs: 2,
            per_peer_rate: 30,
            auto_pause: AutoPause::default(),
            limits: Limits::default(),
            verify: VerifyPolicy::default(),
            grants: Vec::new(),
        }
    }
}

impl Default for AutoPause {
    fn default() -> Self {
        Self { on_battery: true, max_temp_celsius: Some(85.0), hours: Vec::new() }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_request_bytes: 1 << 20, max_job_seconds: 300 }
    }
}

/// Why a policy file was refused: where, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}line {line}: {message}", key.as_ref().map(|k| format!("`{k}`, ")).unwrap_or_default())]
pub struct PolicyError {
    /// 1-based line.
    pub line: usize,
    /// The key at fault, when known.
    pub key: Option<String>,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// A local-time window, minutes since midnight; `start > end` wraps midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First minute inside.
    pub start: u16,
    /// First minute after.
    pub end: u16,
}

impl Window {
    /// Whether `minute` (since local midnight) is inside.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start <= self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }

    /// Parses `HH:MM-HH:MM`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
        };
        let (a, b) = text.split_once('-').ok_or("expected HH:MM-HH:MM")?;
        match (minute(a), minute(b)) {
            (Some(start), Some(end)) if start != end => Ok(Self { start, end }),
            (Some(_), Some(_)) => Err("the window is empty (start equals end)".into()),
            _ => Err("expected HH:MM-HH:MM with hours 0-24 and minutes 0-59".into()),
        }
    }
}

impl Policy {
    /// Parses and checks a policy file's text.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let policy: Policy = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            // The toml message names an unknown key ("unknown field `x`, ..."); for a wrong
            // value the key is the one assigned on that line.
            let message = e.message().trim().to_string();
            let names_a_key = ["unknown field", "missing field", "duplicate key"]
                .iter()
                .any(|m| message.contains(m));
            let key = if names_a_key { key_in(&message) } else { key_on_line(text, line) };
            PolicyError { line, key, message }
        })?;
        policy.check(text)?;
        Ok(policy)
    }

    fn check(&self, text: &str) -> Result<(), PolicyError> {
        let at = |key: &str, span: Range<usize>, message: String| PolicyError {
            line: line_of(text, span.start),
            key: Some(key.to_string()),
            message,
        };
        for glob in &self.serve_models {
            glob::Pattern::new(glob.get_ref()).map_err(|e| {
                at("serve_models", glob.span(), format!("{:?} is not a glob: {e}", glob.get_ref()))
            })?;
        }
        for signer in &self.allowed_signers {
            if signer.get_ref() != "*" {
                parse_signer(signer.get_ref())
                    .map_err(|e| at("allowed_signers", signer.span(), e))?;
            }
        }
        for publisher in &self.trusted_publishers {
            match parse_signer(publisher.get_ref()) {
                Ok(peer) if peer.ed25519_public_key().is_some() => {}
                Ok(_) => {
                    return Err(at(
                        "trusted_publishers",
                        publisher.span(),
                        format!("{:?} does not carry an Ed25519 key", publisher.get_ref()),
                    ));
                }
                Err(e) => return Err(at("trusted_publishers", publisher.span(), e)),
            }
        }
        for grant in &self.grants {
            parse_signer(grant.signer.get_ref())
                .map_err(|e| at("grant.signer", grant.signer.span(), e))?;
        }
        for window in &self.auto_pause.hours {
            Window::parse(window.get_ref()).map_err(|e| {
                at("auto_pause.hours", window.span(), format!("{:?}: {e}", window.get_ref()))
            })?;
        }
        if let Some(t) = self.auto_pause.max_temp_celsius
            && !(0.0..=150.0).contains(&t)
        {
            return Err(PolicyError {
                line: key_line(text, "max_temp_celsius"),
                key: Some("auto_pause.max_temp_celsius".into()),
                message: format!("{t} °C is not a plausible limit (0 to 150)"),
            });
        }
        if !(0.0..=1.0).contains(&self.verify.share) {
            return Err(PolicyError {
                line: key_line(text, "share"),
                key: Some("verify.share".into()),
                message: format!("{} is not a share (0 to 1)", self.verify.share),
            });
        }
        if !(0.0..=1.0).contains(&self.verify.reputation_floor) {
            return Err(PolicyError {
                line: key_line(text, "reputation_floor"),
                key: Some("verify.reputation_floor".into()),
                message: format!("{} is not a standing (0 to 1)", self.verify.reputation_floor),
            });
        }
        if !(1..=4096).contains(&self.verify.positions) {
            return Err(PolicyError {
                line: key_line(text, "positions"),
                key: Some("verify.positions".into()),
                message: format!("{} positions: use 1 to 4096", self.verify.positions),
            });
        }
        Ok(())
    }

    /// Whether anyone may send jobs.
    pub fn allows_any_signer(&self) -> bool {
        self.allowed_signers.iter().any(|s| s.get_ref() == "*")
    }

    /// Whether `signer` is on the allowlist.
    pub fn allows_signer(&self, signer: &phase_identity::PeerId) -> bool {
        self.allows_any_signer()
            || self
                .allowed_signers
                .iter()
                .any(|s| parse_signer(s.get_ref()).is_ok_and(|p| &p == signer))
    }

    /// The keys of the publishers whose name records are accepted (without this node's own).
    pub fn trusted_publishers(&self) -> Vec<phase_identity::PublicKey> {
        self.trusted_publishers
            .iter()
            .filter_map(|p| parse_signer(p.get_ref()).ok()?.ed25519_public_key())
            .collect()
    }

    /// Whether others may use `model` (`name:tag`).
    pub fn serves_model(&self, model: &str) -> bool {
        self.serve_models
            .iter()
            .any(|g| glob::Pattern::new(g.get_ref()).is_ok_and(|p| p.matches(model)))
    }

    /// The serving windows.
    pub fn windows(&self) -> Vec<Window> {
        self.auto_pause.hours.iter().filter_map(|w| Window::parse(w.get_ref()).ok()).collect()
    }

    /// The policy as TOML, for `lucidd policy show`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// A signer given as a PeerId or a hex Ed25519 public key.
pub fn parse_signer(text: &str) -> Result<phase_identity::PeerId, String> {
    if let Ok(peer) = text.parse::<phase_identity::PeerId>() {
        return Ok(peer);
    }
    text.parse::<phase_identity::PublicKey>()
        .map(|key| phase_identity::PeerId::from_public_key(&key))
        .map_err(|_| {
            format!("{text:?} is neither a PeerId (12D3KooW…) nor a hex Ed25519 public key")
        })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn key_line(text: &str, key: &str) -> usize {
    text.find(key).map(|at| line_of(text, at)).unwrap_or(1)
}

/// The key assigned on a 1-based line (`key = value`).
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let (key, _) = text.lines().nth(line.checked_sub(1)?)?.split_once('=')?;
    Some(key.trim().trim_matches('"').to_string()).filter(|k| !k.is_empty())
}

/// The first `backquoted` word of a toml error message, which names the key.
fn key_in(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_parses_to_the_default_policy() {
        let parsed = Policy::parse(DEFAULT_POLICY).expect("default parses");
        let default = Policy::default();
        assert_eq!(parsed.manual_pause, default.manual_pause);
        assert_eq!(parsed.max_concurrent_remote_jobs, default.max_concurrent_remote_jobs);
        assert_eq!(parsed.per_peer_rate, default.per_peer_rate);
        assert_eq!(parsed.limits, default.limits);
        assert!(parsed.allowed_signers.is_empty(), "default deny");
        assert!(parsed.serves_model("gemma3:latest"));
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_line_and_key() {
        let err = Policy::parse("manual_pause = false\nmax_concurent_remote_jobs = 3\n")
            .expect_err("typo");
        assert_eq!(err.line, 2, "{err}");
        assert_eq!(err.key.as_deref(), Some("max_concurent_remote_jobs"), "{err}");
        let err = Policy::parse("\n\nper_peer_rate = \"fast\"\n").expect_err("type");
        assert_eq!((err.line, err.key.as_deref()), (3, Some("per_peer_rate")), "{err}");
        assert!(err.message.contains("expected"), "{err}");
        let err = Policy::parse("[auto_pause]\non_battery = true\nmax_temp = 80\n")
            .expect_err("nested key");
        assert_eq!((err.line, err.key.as_deref()), (3, Some("max_temp")), "{err}");
    }

    #[test]
    fn bad_values_name_line_and_key() {
        let err =
            Policy::parse("allowed_signers = [\n  \"*\",\n  \"bob\",\n]\n").expect_err("signer");
        assert_eq!((err.line, err.key.as_deref()), (3, Some("allowed_signers")), "{err}");
        let err = Policy::parse("[auto_pause]\nhours = [\"22:00-7\"]\n").expect_err("window");
        assert_eq!((err.line, err.key.as_deref()), (2, Some("auto_pause.hours")), "{err}");
        let err = Policy::parse("[auto_pause]\nmax_temp_celsius = 900.0\n").expect_err("temp");
        assert_eq!(err.key.as_deref(), Some("auto_pause.max_temp_celsius"), "{err}");
        let err = Policy::parse("[[grant]]\nsigner = \"nobody\"\n").expect_err("grant");
        assert_eq!((err.line, err.key.as_deref()), (2, Some("grant.signer")), "{err}");
        assert!(Policy::parse("serve_models = [\"[\"]\n").is_err(), "bad glob");
    }

    #[test]
    fn windows_may_wrap_midnight() {
        let day = Window::parse("09:00-17:30").expect("window");
        assert!(day.contains(9 * 60) && day.contains(17 * 60 + 29) && !day.contains(17 * 60 + 30));
        let night = Window::parse("22:00-07:00").expect("window");
        assert!(night.contains(23 * 60) && night.contains(0) && night.contains(6 * 60 + 59));
        assert!(!night.contains(7 * 60) && !night.contains(12 * 60));
        assert!(Window::parse("10:00-10:00").is_err());
        assert!(Window::parse("25:00-01:00").is_err());
        assert!(Window::parse("00:00-24:00").expect("all day").contains(23 * 60 + 59));
    }

    #[test]
    fn signers_globs_and_star() {
        let id = phase_identity::NodeIdentity::from_seed([3; 32]).peer_id();
        let key =
            hex::encode(phase_identity::NodeIdentity::from_seed([4; 32]).public_key().to_bytes());
        let text =
            format!("allowed_signers = [\"{id}\", \"{key}\"]\nserve_models = [\"gemma3:*\"]\n");
        let policy = Policy::parse(&text).expect("parses");
        assert!(policy.allows_signer(&id));
        assert!(policy.allows_signer(&phase_identity::NodeIdentity::from_seed([4; 32]).peer_id()));
        assert!(!policy.allows_signer(&phase_identity::NodeIdentity::from_seed([5; 32]).peer_id()));
        assert!(policy.serves_model("gemma3:latest") && !policy.serves_model("echo:latest"));
        let any = Policy::parse("allowed_signers = [\"*\"]\n").expect("star");
        assert!(any.allows_signer(&phase_identity::NodeIdentity::from_seed([5; 32]).peer_id()));
    }
}
