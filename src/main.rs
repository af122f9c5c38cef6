//! The `kube-nftpol` command. Thin: parsing flags and wiring library calls.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use kube_nftpol::compile::compile;
use kube_nftpol::model::Cluster;
use kube_nftpol::render::text;
use kube_nftpol::sources::manifests;

/// Kubernetes NetworkPolicy enforcement for Flannel clusters, compiled into one nftables
/// table (`inet kube-nftpol`) per node.
#[derive(Parser, Debug)]
#[command(name = "kube-nftpol", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the nftables ruleset a node would get, in nft syntax, without touching the kernel.
    ///
    /// Reads Namespace, Pod and NetworkPolicy documents (and Lists of them) from the *.yaml,
    /// *.yml and *.json files of DIR. Bad documents and bad fields are reported on stderr as
    /// warnings and read fail-closed; the ruleset goes to stdout.
    Render {
        /// Directory of manifests to read.
        #[arg(long, value_name = "DIR")]
        manifests: PathBuf,
        /// The node to compile for: its pods are the policy targets.
        #[arg(long, value_name = "NAME", env = "NODE_NAME")]
        node_name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render {
            manifests,
            node_name,
        } => render(&manifests, &node_name),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn render(dir: &Path, node: &str) -> anyhow::Result<()> {
    let loaded = manifests::load_dir(dir)?;
    for p in &loaded.problems {
        eprintln!("warning: {p}");
    }
    let (cluster, diagnostics) = Cluster::from_objects(loaded.objects);
    let compiled = compile(&cluster, node);
    for d in diagnostics.iter().chain(&compiled.diagnostics) {
        eprintln!("warning: {d}");
    }
    std::io::stdout()
        .lock()
        .write_all(text::render(&compiled.ruleset).as_bytes())
        .context("writing the ruleset to stdout")
}
