//! Command line, environment and defaults.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// Ollama's port, so every existing client finds us.
pub const DEFAULT_PORT: u16 = 11434;
/// Default cap on a JSON request body. Big enough for a long chat with a few images.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// lucidd — an inference daemon that speaks the Ollama API and signs every answer.
///
/// Run without a subcommand to serve. Every response carries a receipt signed by this node's
/// identity (kept in the data directory) that `lucidd receipt verify` checks offline.
#[derive(Debug, Parser)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options for serving when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
// Parsed once at start-up; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Ollama HTTP API (the default).
    Serve(ServeArgs),
    /// Print this node's PeerId, creating its identity if there is none.
    Id {
        /// Data directory holding identity.key.
        #[arg(long, env = "LUCIDD_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Work with saved receipts.
    #[command(subcommand)]
    Receipt(ReceiptCommand),
    /// Check or show the operator policy (policy.toml).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Re-check a fraud proof on a running node that holds the model.
    ///
    /// FILE is a proof a node saved in `<data dir>/proofs/` when a peer's answer failed a spot
    /// check. The node verifies the signed request and the accused worker's own receipt over
    /// the answer, then re-scores the named positions on its copy of the model file the receipt
    /// names, and judges them itself: the proof holds only if its model agrees.
    ///
    /// Exit status: 0 the proof holds; 1 it does not, or the node cannot re-check it.
    VerifyProof {
        /// The proof file.
        file: PathBuf,
        /// The node to re-check on.
        #[command(flatten)]
        node: NodeArg,
    },
    /// Pull a model into a running node's store from its registry (`--registry`), as
    /// `ollama pull` does: progress per blob, resumable (pull again after an interruption and
    /// nothing already downloaded is fetched again), the digest checked before the model is
    /// served.
    Pull {
        /// The model: `[host/][namespace/]model[:tag]`, e.g. `gemma3:270m`.
        name: String,
        /// Allow plain HTTP to a registry named in the model name.
        #[arg(long)]
        insecure: bool,
        /// The node that pulls.
        #[command(flatten)]
        node: NodeArg,
    },
    /// Publish a model name: the running node signs a record that NAME means its model file
    /// (content id, size, and the hashes of its 4 MiB pieces) and stores it in the DHT, so
    /// peers that trust this node's key can pull the file from anyone and check every piece.
    Publish {
        /// A model this node serves from a file.
        name: String,
        /// The node that publishes.
        #[command(flatten)]
        node: NodeArg,
    },
    /// Show a running node's peers: latency, standing (from checks of their answers) and
    /// whether it still sends them jobs, and their models.
    Peers {
        /// The node to ask.
        #[command(flatten)]
        node: NodeArg,
    },
}

/// Which running node a command asks.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArg {
    /// The node's address, as OLLAMA_HOST names it.
    #[arg(long, env = "OLLAMA_HOST", default_value = "127.0.0.1:11434", hide_env_values = true)]
    pub host: String,
}

/// `lucidd policy …`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file: prints `ok`, or the line and key at fault.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print the policy in force and whether each donation gate is open now, and why.
    Show {
        /// Policy file (default: policy.toml in the data directory).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Data directory.
        #[arg(long, env = "LUCIDD_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Where sysfs is mounted (for power and temperature).
        #[arg(long, default_value = "/sys", hide = true)]
        sysfs_root: PathBuf,
    },
}

/// `lucidd receipt …`
#[derive(Debug, Subcommand)]
pub enum ReceiptCommand {
    /// Check a saved answer offline, strictly.
    ///
    /// FILE (or - for standard input) is what lucidd answered, as a client saved it: an NDJSON
    /// stream (as `curl` prints it), an SSE stream from /v1, a single JSON response, or a bare
    /// receipt. The commitment is replayed over every chunk, and every other field a client
    /// could show must be one the receipt or the signed request covers, so any edit or addition
    /// is refused. It prints who signed, and which node asked which model what.
    ///
    /// Exit status: 0 the answer is complete and verified; 1 refused; 2 verified but cut short
    /// (the job was cancelled or failed, or the answer ended with an error).
    Verify {
        /// The saved response, or - for standard input.
        file: String,
        /// Refuse the answer unless its receipt was signed by this PeerId (`lucidd id` on the
        /// node you trust prints it).
        #[arg(long, value_name = "PEER_ID")]
        expect_signer: Option<String>,
    },
}

/// Which built-in workers serve models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkerKind {
    /// Deterministic echo model for development, CI and demos: answers with the last user
    /// message, one chunk per word; embeddings derived from the text's hash.
    Echo,
    /// Every GGUF file in --model-dir, served through supervised llama-server processes.
    LlamaCpp,
}

/// Options of `lucidd serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on, in any form OLLAMA_HOST accepts (`127.0.0.1:11434`, `0.0.0.0`,
    /// `http://[::1]:8080`). Port 0 picks a free port.
    #[arg(long, env = "OLLAMA_HOST", default_value = "127.0.0.1:11434", hide_env_values = true)]
    pub listen: String,
    /// Workers to run; repeat for several.
    #[arg(long = "worker", value_enum, default_values_t = [WorkerKind::Echo])]
    pub workers: Vec<WorkerKind>,
    /// Run no worker at all: a gateway that sends every request to the network.
    #[arg(long, conflicts_with = "workers")]
    pub no_workers: bool,
    /// Data directory: identity.key, receipts/, models/ (default: $XDG_DATA_HOME/phase/lucidd).
    #[arg(long, env = "LUCIDD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Operator policy for jobs from other nodes (default: policy.toml in the data directory,
    /// written with commented defaults on first start; reloaded when it changes).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Where sysfs is mounted, for the power and temperature gates (tests point it elsewhere).
    #[arg(long, default_value = "/sys", hide = true)]
    pub sysfs_root: PathBuf,
    /// Never send a prompt to another node.
    #[arg(long)]
    pub local_only: bool,
    /// Largest accepted JSON request body, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// HTTP connections served at once; more are closed as they arrive.
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// Seconds a client may take to send a request's headers (slow clients are disconnected).
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Seconds a client may take to send a request body.
    #[arg(long, default_value_t = 60.0)]
    pub body_timeout: f64,
    /// Requests per second from one client address (bursts of twice that); 0 = no limit.
    #[arg(long, default_value_t = 0.0)]
    pub client_rate: f64,
    /// Extra origins allowed to call the API from a browser, comma-separated, `*` wildcards
    /// (local origins are always allowed).
    #[arg(long, env = "OLLAMA_ORIGINS")]
    pub origins: Option<String>,
    /// Directory of GGUF models for the llama-cpp worker; each `NAME.gguf` is model `NAME`
    /// (default: gguf/ in the data directory). Beside a model, `NAME.jinja` replaces its chat
    /// template (tools and thinking follow from the template) and `NAME.mmproj.gguf` is its
    /// image projector (vision).
    #[arg(long, env = "LUCIDD_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// An Ollama model store to serve read-only, in place (manifests/ and blobs/; default:
    /// ~/.ollama/models when it exists): an Ollama user keeps the models they have.
    #[arg(long, env = "OLLAMA_MODELS")]
    pub ollama_models: Option<PathBuf>,
    /// Serve no Ollama store, not even ~/.ollama/models.
    #[arg(long, conflicts_with = "ollama_models")]
    pub no_ollama_models: bool,
    /// The Ollama-compatible registry `/api/pull` and `lucidd pull` fetch models from, for
    /// names without a host of their own.
    #[arg(long, env = "LUCIDD_REGISTRY", default_value = crate::store::pull::DEFAULT_REGISTRY)]
    pub registry: String,
    /// Most bytes per second a pull downloads (e.g. 10M, 500K; default: no limit).
    #[arg(long, value_parser = parse_rate)]
    pub pull_rate: Option<u64>,
    /// The llama-server binary (default: the one scripts/setup installed, then PATH).
    #[arg(long, env = "LLAMA_SERVER_BINARY")]
    pub llama_server_binary: Option<PathBuf>,
    /// Load every model at start instead of on first use.
    #[arg(long)]
    pub preload: bool,
    /// Concurrent requests per loaded model.
    #[arg(long, default_value_t = 1)]
    pub parallel: u32,
    /// Most models loaded at once; the least recently used idle one is unloaded first.
    #[arg(long, default_value_t = 2)]
    pub max_loaded_models: usize,
    /// CPU threads per llama-server (0: llama-server decides).
    #[arg(long, default_value_t = 0)]
    pub threads: u32,
    /// Seconds a llama-server may stay silent in the middle of an answer before it is taken
    /// for hung: the answer ends with an error and the server is restarted.
    #[arg(long, default_value_t = 120.0)]
    pub llama_server_timeout: f64,
    /// Write the address actually bound (useful with port 0) to this file once listening.
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
    /// On SIGTERM or Ctrl-C, seconds to let in-flight answers finish before their jobs are
    /// cancelled (each then ends with an error line and a signed `cancelled` receipt).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub shutdown_grace: f64,
    /// Peer-to-peer networking (finding models on other nodes, serving yours to them).
    #[command(flatten)]
    pub p2p: P2pArgs,
}

/// Options of the peer-to-peer node.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Peer-to-peer")]
pub struct P2pArgs {
    /// Run without the peer-to-peer node: serve local models only, to this machine's clients.
    #[arg(long)]
    pub no_p2p: bool,
    /// libp2p multiaddr to listen on; repeat for several (default: TCP and QUIC on port 11435,
    /// IPv4 and IPv6; if that port is taken, a free one).
    #[arg(long = "p2p-listen", value_name = "MULTIADDR")]
    pub p2p_listen: Vec<String>,
    /// Address others should dial to reach this node, e.g. behind port forwarding
    /// (`/ip4/203.0.113.7/tcp/11435`); repeatable.
    #[arg(long = "external-addr", value_name = "MULTIADDR")]
    pub external_addrs: Vec<String>,
    /// A relay to be reachable through when nobody can dial this node (behind a NAT), with
    /// its PeerId (`/ip4/198.51.100.2/tcp/11435/p2p/12D3KooW…`): the node holds a reservation
    /// there and is reached at `<relay>/p2p-circuit/p2p/<this node>`; repeatable.
    #[arg(long = "relay", value_name = "MULTIADDR")]
    pub relays: Vec<String>,
    /// Serve circuit relay v2 for peers that cannot be reached (run this on a node others can
    /// dial), with limits sized for answers and model pieces: 1 h and 4 GiB a circuit.
    #[arg(long)]
    pub relay_server: bool,
    /// A node to join the network through, with its PeerId, which is pinned
    /// (`/ip4/198.51.100.2/tcp/11435/p2p/12D3KooW…`); repeatable.
    #[arg(long = "bootstrap-peer", value_name = "MULTIADDR")]
    pub bootstrap_peers: Vec<String>,
    /// A DNS name whose TXT records list bootstrap multiaddrs (`dnsaddr=/ip4/…/p2p/…`);
    /// repeatable.
    #[arg(long = "bootstrap-dns", value_name = "NAME")]
    pub bootstrap_dns: Vec<String>,
    /// DNS server (IP:PORT) for --bootstrap-dns, instead of the system's resolver.
    #[arg(long, value_name = "ADDR")]
    pub dns_server: Option<std::net::SocketAddr>,
    /// Do not look for peers on the local network with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Do not let peers fetch the files of the models this node offers them (`/phase/blob/1`,
    /// what peers pull models with); jobs are still served.
    #[arg(long)]
    pub no_share_models: bool,
    /// Most bytes per second sent to peers fetching this node's model files (e.g. 10M, 500K;
    /// default: no limit), over all of them.
    #[arg(long, value_parser = parse_rate)]
    pub share_rate: Option<u64>,
    /// Run jobs for this signer (a PeerId, or a hex Ed25519 public key); repeatable. Nobody
    /// else's jobs run here unless --allow-any-signer is given.
    #[arg(long = "allow-signer", value_name = "PEER_OR_KEY")]
    pub allow_signers: Vec<String>,
    /// Run jobs for any signer that reaches this node.
    #[arg(long)]
    pub allow_any_signer: bool,
    /// Test only: misbehave on purpose (`tamper-output`: change relayed output after signing
    /// for it; `corrupt-blobs`: seed model files with a bad byte in every range; or a
    /// worker's lie). Refused by builds without test faults.
    #[arg(long, hide = true, value_name = "FAULT")]
    pub test_fault: Option<String>,
}

impl ServeArgs {
    /// Options as `lucidd serve ARGS...` would parse them, with every default applied.
    pub fn parse_from<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Self, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("lucidd").chain(args))?;
        Ok(cli.serve)
    }
}

/// Where lucidd keeps its state when `--data-dir` is not given.
pub fn default_data_dir() -> PathBuf {
    phase_node::home::default_data_dir("lucidd")
}

/// The llama-server to run: `explicit`, else the one scripts/setup installed in the cache,
/// else `llama-server` on PATH.
pub fn default_llama_server(explicit: Option<&PathBuf>) -> PathBuf {
    if let Some(path) = explicit {
        return path.clone();
    }
    let mut candidates = vec![PathBuf::from("/var/cache/phase/bin/llama-server")];
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
    {
        candidates.push(cache.join("phase/bin/llama-server"));
    }
    if let Some(dir) = std::env::var_os("PHASE_CACHE_DIR") {
        candidates.insert(0, PathBuf::from(dir).join("bin/llama-server"));
    }
    candidates.into_iter().find(|p| p.exists()).unwrap_or_else(|| PathBuf::from("llama-server"))
}

/// Turns an `OLLAMA_HOST`-style value into a socket address to bind.
///
/// `[scheme://]host[:port][/path]`: no scheme and no port → 11434; `http://host` → 80;
/// `https://host` → 443; empty → 127.0.0.1:11434; IPv6 in brackets.
pub fn parse_listen_addr(value: &str) -> Result<SocketAddr, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)));
    }
    let (default_port, rest) = if let Some(rest) = value.strip_prefix("http://") {
        (80, rest)
    } else if let Some(rest) = value.strip_prefix("https://") {
        (443, rest)
    } else {
        (DEFAULT_PORT, value)
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) =
            bracketed.split_once(']').ok_or_else(|| format!("unclosed '[' in {value:?}"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| format!("invalid port {p:?} in {value:?}"))?,
        None => default_port,
    };
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host:?} resolves to no address"))
}

/// A byte rate: a number with an optional K, M or G suffix (powers of 1024).
fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, 'B'),
    };
    let factor: u64 = match unit {
        'B' => 1,
        'K' => 1 << 10,
        'M' => 1 << 20,
        'G' => 1 << 30,
        _ => return Err(format!("{text:?}: expected bytes per second, like 500K or 10M")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected bytes per second, like 500K or 10M"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("{text:?}: the rate must be above zero"));
    }
    Ok((value * factor as f64) as u64)
}

/// The Ollama store to serve: `--ollama-models` / `OLLAMA_MODELS`, else `~/.ollama/models`
/// when it exists; none with `--no-ollama-models` (or an empty `OLLAMA_MODELS`).
pub fn ollama_store(asked: Option<&PathBuf>, none: bool) -> Option<PathBuf> {
    match asked {
        _ if none => None,
        Some(path) if path.as_os_str().is_empty() => None,
        Some(path) => Some(path.clone()),
        None => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".ollama").join("models"))
            .filter(|path| path.join("manifests").is_dir()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> String {
        parse_listen_addr(s).expect("valid").to_string()
    }

    #[test]
    fn ollama_host_forms() {
        assert_eq!(addr(""), "127.0.0.1:11434");
        assert_eq!(addr("127.0.0.1"), "127.0.0.1:11434");
        assert_eq!(addr("0.0.0.0"), "0.0.0.0:11434");
        assert_eq!(addr("127.0.0.1:0"), "127.0.0.1:0");
        assert_eq!(addr(":56789"), "127.0.0.1:56789");
        assert_eq!(addr("http://127.0.0.1"), "127.0.0.1:80");
        assert_eq!(addr("https://127.0.0.1"), "127.0.0.1:443");
        assert_eq!(addr("http://127.0.0.1:8080/ollama"), "127.0.0.1:8080");
        assert_eq!(addr("[::1]:9000"), "[::1]:9000");
        assert_eq!(addr("[::1]"), "[::1]:11434");
    }

    #[test]
    fn bad_ollama_host_is_refused() {
        assert!(parse_listen_addr("127.0.0.1:port").is_err());
        assert!(parse_listen_addr("[::1").is_err());
        assert!(parse_listen_addr("127.0.0.1:99999").is_err());
    }
}
