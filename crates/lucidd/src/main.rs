//! The `lucidd` command.

use clap::Parser;
use lucidd::config::{Cli, Command, ReceiptCommand, default_data_dir};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Id { data_dir }) => {
            lucidd::server::load_identity(&data_dir.unwrap_or_else(default_data_dir)).map(|id| {
                println!("{}", id.peer_id());
            })
        }
        Some(Command::Receipt(ReceiptCommand::Verify { file, expect_signer })) => {
            match lucidd::receipt_check::run(&file, expect_signer.as_deref()) {
                Ok(true) => Ok(()),
                // Verified, but cut short: what was shown is what was signed, and it is not whole.
                Ok(false) => return ExitCode::from(2),
                Err(e) => Err(e),
            }
        }
        Some(Command::Policy(command)) => lucidd::policy::cli::run(command),
        Some(Command::VerifyProof { file, node }) => {
            lucidd::node_cli::verify_proof(&file, &node.host)
        }
        Some(Command::Peers { node }) => lucidd::node_cli::peers(&node.host),
        Some(Command::Publish { name, node }) => lucidd::node_cli::publish(&name, &node.host),
        Some(Command::Pull { name, insecure, node }) => {
            lucidd::node_cli::pull(&name, insecure, &node.host)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lucidd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: lucidd::config::ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let running = lucidd::server::start(args).await?;
        let stop = running.stop_handle();
        tokio::spawn(async move {
            running_stop_signal().await;
            tracing::info!("shutting down: finishing in-flight answers");
            stop.cancel();
        });
        running.wait().await
    })
}

async fn running_stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
