//! `lucidd policy check` and `lucidd policy show`.

use anyhow::Context;

use super::Policy;
use super::gates::{self, Sensors};
use crate::config::{PolicyCommand, default_data_dir};

/// Runs a `lucidd policy` subcommand.
pub fn run(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Check { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            Policy::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!("ok: {} is a valid policy", file.display());
            Ok(())
        }
        PolicyCommand::Show { policy, data_dir, sysfs_root } => {
            let path = policy
                .unwrap_or_else(|| data_dir.unwrap_or_else(default_data_dir).join("policy.toml"));
            let policy = if path.exists() {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                println!("# policy in force: {}", path.display());
                Policy::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            } else {
                println!(
                    "# {} does not exist yet: the defaults apply (lucidd writes it on start)",
                    path.display()
                );
                Policy::default()
            };
            println!("{}", policy.to_toml());
            print!("{}", report(&policy, &Sensors::new(sysfs_root), gates::local_minute_of_day()));
            Ok(())
        }
    }
}

/// Which gates are open now and why, one per line, and the verdict.
pub fn report(policy: &Policy, sensors: &Sensors, minute_of_day: u16) -> String {
    let gates = gates::evaluate(policy, sensors, minute_of_day, 0);
    let mut out = String::from("# gates now\n");
    for gate in &gates {
        out.push_str(&format!(
            "{:<12} {:<6} {}\n",
            gate.kind.as_str(),
            if gate.open { "open" } else { "CLOSED" },
            gate.reason
        ));
    }
    let signers = if policy.allows_any_signer() {
        "any signer".to_string()
    } else if policy.allowed_signers.is_empty() {
        "nobody (allowed_signers is empty; --allow-signer adds signers)".to_string()
    } else {
        format!("{} allowed signer(s)", policy.allowed_signers.len())
    };
    let verdict = if gates.iter().all(|g| g.open) {
        "serving other nodes' jobs"
    } else {
        "not serving other nodes' jobs"
    };
    out.push_str(&format!("# {verdict}, from {signers}\n"));
    out
}
