//! `plasmd`: run signed WebAssembly jobs in a sandbox and verify their receipts.

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use phase_artifact::{BlobStore, ContentId};
use phase_identity::NodeIdentity;
use phase_protocol::{ChunkKind, JobEvent, WasmJob, WasmLimits, Worker};
use plasm::record::RunRecord;
use plasm::sandbox::{NodeLimits, Sandbox};
use plasm::worker::WasmWorker;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// plasmd — the reference Phase WebAssembly node.
///
/// Runs WASI (preview 1) modules as signed jobs in a wasmtime sandbox with fuel, memory,
/// wall-clock and output limits, and prints their output with a receipt signed by this node's
/// identity that anyone can check with `plasmd verify`.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a module here and print its output and signed receipt as JSON.
    Run {
        /// A .wasm or .wat file, or the CID of a module in the data directory's store.
        module: String,
        /// Text for standard input.
        #[arg(long, conflicts_with = "stdin_file")]
        stdin: Option<String>,
        /// A file for standard input.
        #[arg(long)]
        stdin_file: Option<PathBuf>,
        /// An argument for the module (repeat for several).
        #[arg(long = "arg")]
        args: Vec<String>,
        /// An environment variable for the module, KEY=VALUE (repeat for several); the module
        /// sees no other.
        #[arg(long = "env", value_parser = parse_env)]
        env: Vec<(String, String)>,
        #[command(flatten)]
        limits: LimitArgs,
        /// The exported function to call.
        #[arg(long, default_value = "_start")]
        entry: String,
        /// Data directory: identity.key and artifacts/ (default: $XDG_DATA_HOME/phase/plasmd).
        #[arg(long, env = "PLASMD_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Check a record printed by `plasmd run`: the receipt's signature, and that it commits to
    /// exactly the output in the record. Exits non-zero if anything was edited.
    Verify {
        /// The record, or - for standard input.
        file: String,
    },
    /// Serve WebAssembly jobs to other nodes: an artifact server for modules (announced by
    /// mDNS) and the job relay on libp2p, for the signers you allow.
    Start(StartArgs),
    /// Send a module to a node, stream its output back, verify and bind the node's receipt,
    /// and print the record.
    Submit {
        /// A .wasm or .wat file.
        module: PathBuf,
        /// A node, `/ip4/…/tcp/…/p2p/<PeerId>` (repeatable, tried in order; default: found
        /// in the DHT through --bootstrap-peer).
        #[arg(long, required_unless_present = "bootstrap")]
        peer: Vec<String>,
        /// Run the job on this many nodes and accept the output only when they all signed the
        /// same one (jobs are deterministic); on a disagreement more nodes decide, and the odd
        /// one out loses standing.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// A node to join the network through, to find a node that runs WebAssembly jobs.
        #[arg(long = "bootstrap-peer")]
        bootstrap: Vec<String>,
        /// The node's artifact server (default: found by mDNS).
        #[arg(long)]
        artifacts: Option<String>,
        /// Look for the artifact server by mDNS on loopback only.
        #[arg(long)]
        mdns_loopback: bool,
        /// Text for standard input.
        #[arg(long)]
        stdin: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Data directory of the requester (its identity signs the job).
        #[arg(long, env = "PLASMD_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Print this node's PeerId, creating its identity if there is none.
    Id {
        /// Data directory.
        #[arg(long, env = "PLASMD_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Write an example module's bytes (`hello` reverses its input; `sieve` counts primes).
    Example {
        /// `hello` or `sieve`.
        name: String,
        /// Where to write it (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// Options of `plasmd start`.
#[derive(Debug, clap::Args)]
struct StartArgs {
    /// Data directory: identity.key and artifacts/.
    #[arg(long, env = "PLASMD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the artifact server.
    #[arg(long, default_value = "0.0.0.0:11436")]
    http_listen: std::net::SocketAddr,
    /// libp2p listen multiaddr (repeatable; default TCP on port 11437).
    #[arg(long = "p2p-listen")]
    p2p_listen: Vec<String>,
    /// A node to join through, `…/p2p/<PeerId>` (repeatable).
    #[arg(long = "bootstrap-peer")]
    bootstrap: Vec<String>,
    /// No mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// mDNS on loopback only (several nodes on one machine).
    #[arg(long)]
    mdns_loopback: bool,
    /// Run jobs for this signer (PeerId or hex key); repeatable.
    #[arg(long = "allow-signer")]
    allow_signers: Vec<String>,
    /// Run jobs for any signer.
    #[arg(long)]
    allow_any_signer: bool,
    /// Write the node's addresses (JSON) here once it listens.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Test only: misbehave on purpose (`wrong-output`: sign for output the module did not
    /// produce). Refused by builds without test faults.
    #[arg(long, hide = true, value_name = "FAULT")]
    test_fault: Option<String>,
}

/// The limits a job asks for (the node may lower them).
#[derive(Debug, clap::Args)]
struct LimitArgs {
    /// Fuel (roughly, WebAssembly instructions).
    #[arg(long, default_value_t = 1_000_000_000)]
    fuel: u64,
    /// Linear memory limit, MiB.
    #[arg(long, default_value_t = 64)]
    memory: u64,
    /// Wall-clock limit, seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Limit on standard output plus standard error, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_output: u64,
}

impl LimitArgs {
    fn to_limits(&self) -> WasmLimits {
        WasmLimits {
            fuel: self.fuel,
            memory_bytes: self.memory.saturating_mul(1 << 20),
            timeout_ms: (self.timeout.clamp(0.001, 86_400.0) * 1000.0) as u64,
            max_output_bytes: self.max_output,
        }
    }
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

fn default_data_dir() -> PathBuf {
    phase_node::home::default_data_dir("plasmd")
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Run { module, stdin, stdin_file, args, env, limits, entry, data_dir } => {
            let stdin = match (stdin, stdin_file) {
                (Some(text), _) => Ok(text.into_bytes()),
                (None, Some(path)) => {
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
                }
                (None, None) => Ok(Vec::new()),
            };
            let limits = limits.to_limits();
            stdin.and_then(|stdin| {
                run(
                    &module,
                    stdin,
                    args,
                    env.into_iter().collect(),
                    entry,
                    limits,
                    data_dir.unwrap_or_else(default_data_dir),
                )
            })
        }
        Command::Verify { file } => verify(&file),
        Command::Start(args) => start(args),
        Command::Submit {
            module,
            peer,
            replicas,
            bootstrap,
            artifacts,
            mdns_loopback,
            stdin,
            limits,
            data_dir,
        } => {
            let limits = limits.to_limits();
            submit(
                data_dir.unwrap_or_else(default_data_dir),
                &module,
                &peer,
                replicas,
                &bootstrap,
                artifacts,
                mdns_loopback,
                stdin.unwrap_or_default(),
                limits,
            )
        }
        Command::Id { data_dir } => {
            plasm::node::load_identity(&data_dir.unwrap_or_else(default_data_dir)).map(|id| {
                println!("{}", id.peer_id());
                ExitCode::SUCCESS
            })
        }
        Command::Example { name, output } => example(&name, output),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("plasmd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    module: &str,
    stdin: Vec<u8>,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    entry: String,
    limits: WasmLimits,
    data_dir: PathBuf,
) -> anyhow::Result<ExitCode> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let identity = NodeIdentity::load_or_create(&data_dir.join("identity.key"))
            .with_context(|| format!("loading the node identity in {}", data_dir.display()))?;
        let store = BlobStore::open(data_dir.join("artifacts"), 1 << 30)?;
        let cid = if let Ok(cid) = module.parse::<ContentId>()
            && !std::path::Path::new(module).exists()
        {
            anyhow::ensure!(
                store.contains(&cid),
                "module {cid} is not in {}",
                store.path(&cid).display()
            );
            cid
        } else {
            let bytes = std::fs::read(module).with_context(|| format!("reading {module}"))?;
            let bytes = if module.ends_with(".wat") {
                wat::parse_bytes(&bytes).map_err(|e| anyhow::anyhow!("{module}: {e}"))?.into_owned()
            } else {
                bytes
            };
            store.put(&bytes).await?
        };
        let job = WasmJob { module: cid, entry, args, env, stdin: stdin.into(), limits };
        let manifest = plasm::worker::sign_job(&identity, job)?;
        let worker =
            WasmWorker::new(identity, Arc::new(Sandbox::new()?), store, NodeLimits::default());
        let mut job = worker.execute(manifest).await?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let receipt = loop {
            match job.events.next().await {
                Some(JobEvent::Output(chunk)) if chunk.kind == ChunkKind::Stdout => {
                    stdout.extend_from_slice(&chunk.data)
                }
                Some(JobEvent::Output(chunk)) => stderr.extend_from_slice(&chunk.data),
                Some(JobEvent::Final(receipt)) => break *receipt,
                Some(_) => {}
                None => anyhow::bail!("the job ended without a receipt"),
            }
        };
        let record = RunRecord::new(&stdout, &stderr, receipt);
        let failed = !record.finished();
        println!("{}", serde_json::to_string_pretty(&record)?);
        Ok(if failed { ExitCode::from(3) } else { ExitCode::SUCCESS })
    })
}

fn verify(file: &str) -> anyhow::Result<ExitCode> {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    };
    let record: RunRecord = serde_json::from_str(&text).context("not a plasmd run record")?;
    match record.verify() {
        Ok(worker) => {
            println!(
                "ok: signed by {worker}, commits to this output ({} chunks), outcome (signed): {}",
                record.receipt.body.chunk_count,
                plasm::record::outcome_of(&record.receipt.body.completion)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("plasmd: the record does not verify: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn example(name: &str, output: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let bytes = match name {
        "hello" => plasm::examples::HELLO,
        "sieve" => plasm::examples::SIEVE,
        other => anyhow::bail!("no example {other:?}; try hello or sieve"),
    };
    match output {
        Some(path) => {
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::Write::write_all(&mut std::io::stdout(), bytes)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn read_module(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "wat") {
        return Ok(wat::parse_bytes(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .into_owned());
    }
    Ok(bytes)
}

fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    let StartArgs {
        data_dir,
        http_listen,
        p2p_listen,
        bootstrap,
        no_mdns,
        mdns_loopback,
        allow_signers,
        allow_any_signer,
        addr_file,
        test_fault,
    } = args;
    let wrong_output = match test_fault.as_deref() {
        None => false,
        Some("wrong-output") if cfg!(feature = "test-faults") => true,
        Some("wrong-output") => anyhow::bail!("this build has no test faults"),
        Some(other) => anyhow::bail!("unknown test fault {other:?}"),
    };
    let data_dir = data_dir.unwrap_or_else(default_data_dir);
    let mut admission = if allow_any_signer {
        phase_net::SignerAllowlist::allow_any()
    } else {
        phase_net::SignerAllowlist::deny_all()
    };
    for signer in &allow_signers {
        admission.allow(signer).map_err(|e| anyhow::anyhow!("--allow-signer: {e}"))?;
    }
    let p2p_listen =
        if p2p_listen.is_empty() { vec!["/ip4/0.0.0.0/tcp/11437".to_string()] } else { p2p_listen };
    let parse = |list: &[String]| -> anyhow::Result<Vec<phase_net::Multiaddr>> {
        list.iter()
            .map(|a| a.parse().with_context(|| format!("{a:?} is not a multiaddr")))
            .collect()
    };
    let options = plasm::node::StartOptions {
        data_dir,
        http_listen,
        p2p_listen: parse(&p2p_listen)?,
        bootstrap: parse(&bootstrap)?,
        mdns: if no_mdns {
            None
        } else if mdns_loopback {
            Some(phase_artifact::discovery::Interfaces::Loopback)
        } else {
            Some(phase_artifact::discovery::Interfaces::All)
        },
        admission,
        addr_file,
        wrong_output,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(plasm::node::start(options))?;
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
fn submit(
    data_dir: PathBuf,
    module: &std::path::Path,
    peers: &[String],
    replicas: usize,
    bootstrap: &[String],
    artifacts: Option<String>,
    mdns_loopback: bool,
    stdin: String,
    limits: WasmLimits,
) -> anyhow::Result<ExitCode> {
    let bytes = read_module(module)?;
    let job = WasmJob {
        module: ContentId::for_bytes(&bytes),
        entry: "_start".into(),
        args: Vec::new(),
        env: BTreeMap::new(),
        stdin: stdin.into_bytes().into(),
        limits,
    };
    let options = plasm::node::SubmitOptions {
        data_dir,
        peers: peers
            .iter()
            .map(|p| p.parse().with_context(|| format!("{p:?} is not a multiaddr")))
            .collect::<anyhow::Result<_>>()?,
        replicas,
        bootstrap: bootstrap
            .iter()
            .map(|b| b.parse().with_context(|| format!("{b:?} is not a multiaddr")))
            .collect::<anyhow::Result<_>>()?,
        artifacts,
        mdns: if mdns_loopback {
            phase_artifact::discovery::Interfaces::Loopback
        } else {
            phase_artifact::discovery::Interfaces::All
        },
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let submitted = runtime.block_on(plasm::node::submit(options, bytes, job))?;
    let replicated = &submitted.replicated;
    if replicas > 1 {
        let list = |peers: &[phase_net::PeerId]| {
            peers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        };
        eprintln!(
            "{} nodes signed the same output: {}",
            replicated.agreed.len(),
            list(&replicated.agreed)
        );
        if !replicated.odd.is_empty() {
            eprintln!("DIFFERENT output (they lose standing): {}", list(&replicated.odd));
        }
        for (peer, reason) in &replicated.failed {
            eprintln!("no verified answer from {peer}: {reason}");
        }
    }
    let record = submitted.record;
    let failed = !record.finished();
    println!("{}", serde_json::to_string_pretty(&record)?);
    Ok(if failed { ExitCode::from(3) } else { ExitCode::SUCCESS })
}
