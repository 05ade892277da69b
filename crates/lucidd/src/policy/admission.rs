//! The gate every job from another node passes: signer, model, donation gates, size, rate and
//! concurrency, in that order, each with its own reason. Jobs from this machine's own clients
//! never come here.

use parking_lot::Mutex;
use phase_manifest::Sha256Hash;
use phase_net::{
    Admission, AdmissionRequest, AdmissionTicket, Refusal, RefusalCode, SignerAllowlist,
};
use phase_node::rate::{Rate, RateLimiter};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::gates::{self, Sensors};
use super::watch::PolicyHandle;
use crate::names::ModelName;

/// Signers tracked by the rate limiter at most; beyond this the quietest are forgotten.
const MAX_TRACKED_SIGNERS: usize = 10_000;

/// The policy gate for remote jobs.
pub struct PolicyAdmission {
    policy: PolicyHandle,
    /// Signers allowed on the command line (`--allow-signer`, `--allow-any-signer`), and this
    /// node itself.
    command_line: SignerAllowlist,
    sensors: Sensors,
    running: Arc<AtomicU32>,
    recent: RateLimiter<phase_identity::PeerId>,
    grants: Arc<Grants>,
}

/// Jobs let in by an operator grant (`[[grant]]`), for the receipt log to mark.
#[derive(Default)]
pub struct Grants {
    used: Mutex<HashMap<phase_identity::PeerId, u32>>,
    granted: Mutex<HashSet<Sha256Hash>>,
}

impl Grants {
    /// Whether the job with this manifest hash ran on a grant (asked once, when it ends).
    pub fn take(&self, manifest: &Sha256Hash) -> bool {
        self.granted.lock().remove(manifest)
    }
}

/// Frees a concurrency slot when the job ends.
struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PolicyAdmission {
    /// A gate following `policy`, plus the command line's signers.
    pub fn new(policy: PolicyHandle, command_line: SignerAllowlist, sensors: Sensors) -> Self {
        Self {
            policy,
            command_line,
            sensors,
            running: Arc::new(AtomicU32::new(0)),
            recent: RateLimiter::new(MAX_TRACKED_SIGNERS),
            grants: Arc::new(Grants::default()),
        }
    }

    /// The grants record, shared with whoever logs receipts.
    pub fn grants(&self) -> Arc<Grants> {
        Arc::clone(&self.grants)
    }

    /// Remote jobs running now.
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Acquire)
    }

    fn within_rate(&self, signer: &phase_identity::PeerId, per_minute: u32) -> bool {
        self.recent.take(signer, Rate::per_minute(per_minute)).is_ok()
    }
}

impl Admission for PolicyAdmission {
    fn admit(&self, request: &AdmissionRequest<'_>) -> Result<AdmissionTicket, Refusal> {
        let policy = self.policy.current();
        let signer = request.signer;
        let allowed = self.command_line.allows(signer) || policy.allows_signer(signer);
        let grant = policy
            .grants
            .iter()
            .find(|g| super::parse_signer(g.signer.get_ref()).is_ok_and(|p| &p == signer));
        if !allowed && grant.is_none() {
            return Err(SignerAllowlist::refusal(signer));
        }
        let model = request.manifest.payload.model().unwrap_or_default();
        let model =
            ModelName::parse(model).map(|m| m.to_string()).unwrap_or_else(|_| model.to_string());
        if !model.is_empty() && !policy.serves_model(&model) {
            return Err(Refusal::new(
                RefusalCode::ModelNotFound,
                format!("this node does not offer model {model:?} to other nodes (serve_models)"),
            ));
        }
        let running = self.running();
        let gates = gates::evaluate(&policy, &self.sensors, gates::local_minute_of_day(), running);
        if let Some(closed) = gates.iter().find(|g| !g.open) {
            let code = if closed.kind == gates::GateKind::Concurrency {
                RefusalCode::Busy
            } else {
                RefusalCode::Unavailable
            };
            return Err(Refusal::new(code, format!("not serving others now: {}", closed.reason)));
        }
        let limit = policy.limits.max_request_bytes;
        if request.wire_bytes as u64 > limit {
            return Err(Refusal::new(
                RefusalCode::InvalidJob,
                format!(
                    "the request is {} bytes; this node takes at most {limit} (limits.max_request_bytes)",
                    request.wire_bytes
                ),
            ));
        }
        if !self.within_rate(signer, policy.per_peer_rate) {
            return Err(Refusal::new(
                RefusalCode::Busy,
                format!(
                    "signer {signer} sent more than {} jobs in a minute (per_peer_rate)",
                    policy.per_peer_rate
                ),
            ));
        }
        // Claim a slot; the gate above read the count without holding it.
        if self.running.fetch_add(1, Ordering::AcqRel) >= policy.max_concurrent_remote_jobs {
            self.running.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::new(
                RefusalCode::Busy,
                "not serving others now: all remote job slots are busy",
            ));
        }
        let slot = Slot(Arc::clone(&self.running));
        if !allowed && let Some(grant) = grant {
            let mut used = self.grants.used.lock();
            let count = used.entry(signer.clone()).or_default();
            if *count >= grant.jobs {
                return Err(Refusal::new(
                    RefusalCode::NotAuthorized,
                    format!("the operator's grant for {signer} ({} jobs) is used up", grant.jobs),
                ));
            }
            *count += 1;
            if let Ok(hash) = request.manifest.hash() {
                self.grants.granted.lock().insert(hash);
            }
            tracing::warn!(%signer, "running a job on an operator grant (signer not on the allowlist)");
        }
        Ok(Box::new(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use phase_identity::NodeIdentity;
    use phase_manifest::{SignedManifest, unix_time_ms};
    use phase_protocol::{EmbeddingJob, JobSpec};

    fn manifest(signer: &NodeIdentity, model: &str) -> SignedManifest<JobSpec> {
        let spec = JobSpec::Embedding(EmbeddingJob {
            model: model.into(),
            inputs: vec!["x".into()],
            truncate: true,
            dimensions: None,
            options: Default::default(),
        });
        SignedManifest::sign(signer, spec, std::time::Duration::from_secs(60), unix_time_ms())
            .expect("sign")
    }

    fn gate(policy: &str) -> PolicyAdmission {
        let policy = Policy::parse(policy).expect("policy");
        let handle = PolicyHandle::fixed_at(policy, std::path::Path::new("policy.toml"));
        PolicyAdmission::new(handle, SignerAllowlist::deny_all(), Sensors::new("/nonexistent"))
    }

    fn admit(
        gate: &PolicyAdmission,
        signer: &NodeIdentity,
        model: &str,
        bytes: usize,
    ) -> Result<AdmissionTicket, Refusal> {
        let manifest = manifest(signer, model);
        let from = phase_net::PeerId::random();
        gate.admit(&AdmissionRequest {
            signer: &signer.peer_id(),
            from: &from,
            manifest: &manifest,
            wire_bytes: bytes,
        })
    }

    fn refusal(result: Result<AdmissionTicket, Refusal>) -> Refusal {
        result.err().expect("refused")
    }

    #[test]
    fn default_deny_and_the_allowlist() {
        let (alice, bob) = (NodeIdentity::generate(), NodeIdentity::generate());
        let refused = refusal(admit(&gate(""), &alice, "echo", 100));
        assert_eq!(refused.code, RefusalCode::NotAuthorized);
        let gate = gate(&format!("allowed_signers = [\"{}\"]", alice.peer_id()));
        assert!(admit(&gate, &alice, "echo", 100).is_ok());
        assert_eq!(refusal(admit(&gate, &bob, "echo", 100)).code, RefusalCode::NotAuthorized);
    }

    #[test]
    fn models_size_and_rate() {
        let alice = NodeIdentity::generate();
        let gate = gate(
            "allowed_signers = [\"*\"]\nserve_models = [\"gemma3:*\"]\nper_peer_rate = 2\n[limits]\nmax_request_bytes = 1000\n",
        );
        let refused = refusal(admit(&gate, &alice, "echo", 100));
        assert_eq!(refused.code, RefusalCode::ModelNotFound);
        assert!(refused.message.contains("serve_models"), "{refused}");
        let refused = refusal(admit(&gate, &alice, "gemma3", 5000));
        assert!(refused.message.contains("limits.max_request_bytes"), "{refused}");
        assert!(admit(&gate, &alice, "gemma3", 100).is_ok());
        assert!(admit(&gate, &alice, "gemma3:latest", 100).is_ok());
        let refused = refusal(admit(&gate, &alice, "gemma3", 100));
        assert_eq!(refused.code, RefusalCode::Busy);
        assert!(refused.message.contains("per_peer_rate"), "{refused}");
        assert!(
            admit(&gate, &NodeIdentity::generate(), "gemma3", 100).is_ok(),
            "the limit is per signer"
        );
    }

    #[test]
    fn concurrency_slots_are_held_by_tickets() {
        let alice = NodeIdentity::generate();
        let gate = gate("allowed_signers = [\"*\"]\nmax_concurrent_remote_jobs = 2\n");
        let first = admit(&gate, &alice, "echo", 10).expect("first");
        let _second = admit(&gate, &alice, "echo", 10).expect("second");
        let refused = refusal(admit(&gate, &alice, "echo", 10));
        assert_eq!(refused.code, RefusalCode::Busy);
        assert!(refused.message.contains("2 of 2 remote jobs running"), "{refused}");
        drop(first);
        assert_eq!(gate.running(), 1);
        assert!(admit(&gate, &alice, "echo", 10).is_ok(), "a finished job frees its slot");
    }

    #[test]
    fn a_grant_lets_one_job_through_and_is_recorded() {
        let (alice, bob) = (NodeIdentity::generate(), NodeIdentity::generate());
        let gate = gate(&format!("[[grant]]\nsigner = \"{}\"\njobs = 1\n", alice.peer_id()));
        let manifest = manifest(&alice, "echo");
        let from = phase_net::PeerId::random();
        let request = AdmissionRequest {
            signer: &alice.peer_id(),
            from: &from,
            manifest: &manifest,
            wire_bytes: 10,
        };
        assert!(gate.admit(&request).is_ok());
        assert!(gate.grants().take(&manifest.hash().expect("hash")), "marked for the log");
        let refused = refusal(admit(&gate, &alice, "echo", 10));
        assert!(refused.message.contains("used up"), "{refused}");
        assert_eq!(refusal(admit(&gate, &bob, "echo", 10)).code, RefusalCode::NotAuthorized);
    }

    #[test]
    fn closed_gates_refuse_with_their_reason() {
        let alice = NodeIdentity::generate();
        let refused = refusal(admit(
            &gate("allowed_signers = [\"*\"]\nmanual_pause = true\n"),
            &alice,
            "echo",
            10,
        ));
        assert_eq!(refused.code, RefusalCode::Unavailable);
        assert!(refused.message.contains("manual_pause"), "{refused}");
    }
}
