//! Who may run jobs on this node: the gate every verified manifest passes before a worker sees
//! it, and the simplest gate, a list of allowed signers. Daemons put their own policy here.

use libp2p::PeerId;
use phase_identity::PublicKey;
use phase_manifest::SignedManifest;
use phase_protocol::JobSpec;
use std::collections::HashSet;

use crate::wire::{Refusal, RefusalCode};

/// A job that passed the checks, as the admission gate sees it.
#[derive(Debug)]
pub struct AdmissionRequest<'a> {
    /// Who signed the manifest.
    pub signer: &'a phase_identity::PeerId,
    /// The peer that sent it.
    pub from: &'a PeerId,
    /// The verified manifest.
    pub manifest: &'a SignedManifest<JobSpec>,
    /// Size of the manifest's wire form, in bytes.
    pub wire_bytes: usize,
}

/// Held for as long as an admitted job runs; dropping it tells the gate the job is over (a
/// concurrency slot, for instance).
pub type AdmissionTicket = Box<dyn Send + Sync>;

/// Decides whether a verified manifest may run here.
pub trait Admission: Send + Sync + 'static {
    /// A ticket to run the job; otherwise the refusal sent back.
    fn admit(&self, request: &AdmissionRequest<'_>) -> Result<AdmissionTicket, Refusal>;
}

/// The simplest gate: a set of allowed signers, or anyone. Default deny.
#[derive(Debug, Clone, Default)]
pub struct SignerAllowlist {
    any: bool,
    allowed: HashSet<phase_identity::PeerId>,
}

impl SignerAllowlist {
    /// Nobody may use this node.
    pub fn deny_all() -> Self {
        Self::default()
    }

    /// Anyone may use this node (must be asked for explicitly).
    pub fn allow_any() -> Self {
        Self { any: true, allowed: HashSet::new() }
    }

    /// Allows one signer, given as a PeerId or a hex Ed25519 public key.
    pub fn allow(&mut self, signer: &str) -> Result<(), String> {
        let peer = if let Ok(peer) = signer.parse::<phase_identity::PeerId>() {
            peer
        } else if let Ok(key) = signer.parse::<PublicKey>() {
            phase_identity::PeerId::from_public_key(&key)
        } else {
            return Err(format!(
                "{signer:?} is neither a PeerId (12D3Koo…) nor a hex Ed25519 public key"
            ));
        };
        self.allowed.insert(peer);
        Ok(())
    }

    /// Whether anyone may use this node.
    pub fn allows_any(&self) -> bool {
        self.any
    }
}

impl SignerAllowlist {
    /// Whether `signer` may use this node.
    pub fn allows(&self, signer: &phase_identity::PeerId) -> bool {
        self.any || self.allowed.contains(signer)
    }

    /// The refusal for a signer that is not allowed.
    pub fn refusal(signer: &phase_identity::PeerId) -> Refusal {
        Refusal::new(
            RefusalCode::NotAuthorized,
            format!(
                "signer {signer} is not allowed to use this node; its operator can add it with --allow-signer {signer}"
            ),
        )
    }
}

impl Admission for SignerAllowlist {
    fn admit(&self, request: &AdmissionRequest<'_>) -> Result<AdmissionTicket, Refusal> {
        if self.allows(request.signer) {
            Ok(Box::new(()))
        } else {
            Err(Self::refusal(request.signer))
        }
    }
}
