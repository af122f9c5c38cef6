//! The `kube-nftpol` command. Thin: parsing flags and wiring library calls.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use kube_nftpol::compile::{compile_with, Options};
use kube_nftpol::daemon;
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
    /// Enforce NetworkPolicy on this node: keep table `inet kube-nftpol` in line with the
    /// manifests in DIR.
    ///
    /// Checks that bridge netfilter is on (turning it on, loading br_netfilter if needed, and
    /// refusing to run if it cannot), checks that the kernel accepts the ruleset, waits for
    /// the first complete read of DIR, then commits the node's ruleset in one transaction and
    /// every later change incrementally. Edits, new and deleted files are picked up within a
    /// second. SIGHUP forces a full resync; SIGTERM/SIGINT exit and leave the rules in force.
    Run {
        /// The node whose pods are the policy targets.
        #[arg(long, value_name = "NAME", env = "NODE_NAME")]
        node_name: String,
        /// Directory of Namespace, Pod and NetworkPolicy manifests (*.yaml, *.yml, *.json).
        #[arg(long, value_name = "DIR")]
        manifests: PathBuf,
        /// After every successful sync, write here the FNV-1a-64 (16 hex digits) of the
        /// committed ruleset's text, as `render` prints it: lets scripts and tests wait for a
        /// change to be enforced.
        #[arg(long, value_name = "PATH")]
        status_file: Option<PathBuf>,
        /// Quiet time that ends a burst of changes before they are synced (at most ten times
        /// this after the first change).
        #[arg(long, value_name = "DURATION", default_value = "20ms", value_parser = parse_duration)]
        debounce: Duration,
        /// How often the kernel's copy of the table is compared with what was committed, and
        /// replaced if someone changed it.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        drift_check_interval: Duration,
        /// Log format on stderr.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Delete table `inet kube-nftpol` (and nothing else). Run it after stopping the daemon
    /// to stop enforcing.
    Cleanup,
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
        /// Print the shape kernels with intervals in concatenations (Linux 5.6+) get: the
        /// protocols and ports of a rule in one `meta l4proto . th dport { ... }` lookup.
        /// `run` uses it when its start-up probe finds the feature, and logs which shape.
        #[arg(long)]
        concat_ports: bool,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Render {
            manifests,
            node_name,
            concat_ports,
        } => exit(
            render(
                &manifests,
                &node_name,
                Options {
                    concat_ports,
                    ..Default::default()
                },
            ),
            2,
        ),
        Command::Run {
            node_name,
            manifests,
            status_file,
            debounce,
            drift_check_interval,
            log_format,
        } => {
            init_logging(log_format);
            // An unreadable source is a usage error, reported before anything else happens.
            if let Err(e) = std::fs::read_dir(&manifests) {
                eprintln!(
                    "error: cannot read manifests directory {}: {e}",
                    manifests.display()
                );
                return ExitCode::from(2);
            }
            let config = daemon::Config {
                node_name,
                manifests,
                status_file,
                debounce,
                drift_check_interval,
                proc_sys: PathBuf::from("/proc/sys"),
            };
            match daemon::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(reason = e.metric_label(), "{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Cleanup => match kube_nftpol::dataplane::cleanup() {
            Ok(true) => {
                eprintln!("deleted table inet kube-nftpol");
                ExitCode::SUCCESS
            }
            Ok(false) => {
                eprintln!("table inet kube-nftpol does not exist; nothing to do");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
    }
}

fn exit(result: anyhow::Result<()>, code: u8) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// `250ms`, `20s`, `5m`, `1h`; a bare number is seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 250ms, 20s, 5m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (use ms, s, m or h)"
            ))
        }
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(format!("{text:?} must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn render(dir: &Path, node: &str, options: Options) -> anyhow::Result<()> {
    let loaded = manifests::load_dir(dir)?;
    for p in &loaded.problems {
        eprintln!("warning: {p}");
    }
    let (cluster, diagnostics) = Cluster::from_objects(loaded.objects);
    let compiled = compile_with(&cluster, node, &options);
    for d in diagnostics.iter().chain(&compiled.diagnostics) {
        eprintln!("warning: {d}");
    }
    std::io::stdout()
        .lock()
        .write_all(text::render(&compiled.ruleset).as_bytes())
        .context("writing the ruleset to stdout")
}
