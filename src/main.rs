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
#[command(
    name = "kube-nftpol",
    version,
    about,
    long_about = None,
    after_help = "Each command's flags, environment variables and exit statuses: \
                  kube-nftpol <COMMAND> --help.\n\
                  Documentation: README.md (the Debian package installs it in \
                  /usr/share/doc/kube-nftpol/)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enforce NetworkPolicy on this node: keep table `inet kube-nftpol` in line with the
    /// cluster (the API server, or a directory of manifests).
    ///
    /// Checks that bridge netfilter is on (turning it on, loading br_netfilter if needed, and
    /// refusing to run if it cannot), checks that the kernel accepts the ruleset, waits until
    /// the whole state has been read once (every watch listed, or DIR read), then commits the
    /// node's ruleset in one transaction and every later change incrementally. Until then,
    /// and while the API server is unreachable, the rules already in the kernel stay in
    /// force. SIGHUP forces a full resync; SIGTERM/SIGINT exit and leave the rules in force.
    ///
    /// Source: --manifests DIR, else --kubeconfig PATH, else the in-cluster service account.
    /// Every flag can also be given by the environment variable named in brackets (the
    /// command line wins). DURATION is 250ms, 20s, 5m or 1h; a bare number is seconds.
    ///
    /// Environment besides the flags: RUST_LOG sets the log level (default info);
    /// NOTIFY_SOCKET, which systemd sets for Type=notify units, gets READY=1 after the first
    /// full sync.
    ///
    /// Exit status: 0 after SIGTERM or SIGINT (the rules stay in force); 1 when this node
    /// cannot be enforced at start (bridge netfilter cannot be turned on, the kernel refuses
    /// the ruleset, netlink cannot be opened); 2 for a bad flag or configuration (empty node name, no
    /// source, an unreadable --manifests directory or --kubeconfig file, a --metrics-addr
    /// that cannot be parsed or bound).
    Run {
        /// The node whose pods are the policy targets: the name of its Node object (the
        /// kubelet's node name), which pods carry in spec.nodeName.
        #[arg(long, value_name = "NAME", env = "NODE_NAME")]
        node_name: String,
        /// Read the cluster from the Kubernetes API with this kubeconfig file (without it and
        /// without --manifests: the in-cluster service account).
        #[arg(
            long,
            value_name = "PATH",
            env = "KUBE_NFTPOL_KUBECONFIG",
            conflicts_with = "manifests"
        )]
        kubeconfig: Option<PathBuf>,
        /// Read the cluster from a directory of Namespace, Node, Pod and NetworkPolicy
        /// manifests (*.yaml, *.yml, *.json) instead of the API; edits, new and deleted files
        /// are picked up within a second.
        #[arg(long, value_name = "DIR", env = "KUBE_NFTPOL_MANIFESTS")]
        manifests: Option<PathBuf>,
        /// Where to serve /metrics (Prometheus), /healthz and /readyz: HOST:PORT ([::]:PORT for
        /// IPv6); empty to serve nothing.
        #[arg(
            long,
            value_name = "ADDR",
            default_value = "0.0.0.0:9476",
            env = "KUBE_NFTPOL_METRICS_ADDR"
        )]
        metrics_addr: String,
        /// Drop traffic from or to addresses of this node's pod CIDRs that are not pods whose
        /// rules are programmed yet: a new pod is unreachable (and cannot send) until the
        /// transaction that programs its policies. Trade-off: while the daemon cannot sync
        /// (API server down), new pods on this node stay dark. The pod CIDRs come from the
        /// Node object's spec.podCIDRs and from --flannel-subnet-env. In the environment:
        /// true or false.
        #[arg(long, env = "KUBE_NFTPOL_FAIL_CLOSED")]
        fail_closed: bool,
        /// Flannel's subnet file: its FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET are pod CIDRs of
        /// this node for --fail-closed (checked every 5 s; a missing file is fine).
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/run/flannel/subnet.env",
            env = "KUBE_NFTPOL_FLANNEL_SUBNET_ENV"
        )]
        flannel_subnet_env: PathBuf,
        /// After every successful sync, write here the FNV-1a-64 (16 hex digits) of the
        /// committed ruleset's text, as `render` prints it: lets scripts and tests wait for a
        /// change to be enforced.
        #[arg(long, value_name = "PATH", env = "KUBE_NFTPOL_STATUS_FILE")]
        status_file: Option<PathBuf>,
        /// Quiet time that ends a burst of changes before they are synced (at most ten times
        /// this after the first change); a lone change after a quiet period is synced at once.
        #[arg(long, value_name = "DURATION", default_value = "20ms", value_parser = parse_duration, env = "KUBE_NFTPOL_DEBOUNCE")]
        debounce: Duration,
        /// How often the kernel's copy of the table is compared with what was committed, and
        /// replaced if someone changed it.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration, env = "KUBE_NFTPOL_DRIFT_CHECK_INTERVAL")]
        drift_check_interval: Duration,
        /// How often the whole table is replaced regardless (SIGHUP does it now).
        #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_duration, env = "KUBE_NFTPOL_RESYNC_INTERVAL")]
        resync_interval: Duration,
        /// Log format on stderr (the level comes from RUST_LOG, default info).
        #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "KUBE_NFTPOL_LOG_FORMAT")]
        log_format: LogFormat,
    },
    /// Delete table `inet kube-nftpol` (and nothing else). Run it after stopping the daemon
    /// to stop enforcing.
    ///
    /// Acts on the network namespace it runs in; no other table is touched. A running
    /// daemon puts the table back at its next sync or drift check, so stop it first. Needs
    /// CAP_NET_ADMIN (root).
    ///
    /// Exit status: 0 when the table was deleted or did not exist (stderr says which); 1 when
    /// netlink fails.
    Cleanup,
    /// Print the nftables ruleset a node would get, in nft syntax, without touching the kernel.
    ///
    /// Reads Namespace, Node, Pod and NetworkPolicy documents (and Lists of them) from the *.yaml,
    /// *.yml and *.json files of DIR. Bad documents and bad fields are reported on stderr as
    /// warnings and read fail-closed; the ruleset goes to stdout.
    ///
    /// Exit status: 0 when the ruleset was printed (warnings or not); 2 for a bad flag or an
    /// unreadable directory.
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
        /// Print the --fail-closed guard as `run --fail-closed` would commit it (pod CIDRs
        /// from Node documents in DIR and from --pod-cidr).
        #[arg(long)]
        fail_closed: bool,
        /// A pod CIDR of the node besides its Node document's (what `run` reads from
        /// Flannel's subnet.env); repeatable.
        #[arg(long, value_name = "CIDR")]
        pod_cidr: Vec<ipnet::IpNet>,
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
            fail_closed,
            pod_cidr,
        } => exit(
            render(
                &manifests,
                &node_name,
                Options {
                    concat_ports,
                    fail_closed,
                    pod_cidrs: pod_cidr,
                },
            ),
            2,
        ),
        Command::Run {
            node_name,
            kubeconfig,
            manifests,
            metrics_addr,
            fail_closed,
            flannel_subnet_env,
            status_file,
            debounce,
            drift_check_interval,
            resync_interval,
            log_format,
        } => {
            init_logging(log_format);
            if node_name.trim().is_empty() {
                eprintln!("error: --node-name (or NODE_NAME) is empty");
                return ExitCode::from(2);
            }
            // An unreadable source or a bad address is a usage error, reported before
            // anything else happens.
            let source = match manifests {
                Some(dir) => {
                    if let Err(e) = std::fs::read_dir(&dir) {
                        eprintln!(
                            "error: cannot read manifests directory {}: {e}",
                            dir.display()
                        );
                        return ExitCode::from(2);
                    }
                    daemon::Source::Manifests(dir)
                }
                None => daemon::Source::Kube { kubeconfig },
            };
            let metrics_addr = match metrics_addr.trim() {
                "" => None,
                text => match text.parse() {
                    Ok(addr) => Some(addr),
                    Err(e) => {
                        eprintln!("error: --metrics-addr {text:?}: {e} (use HOST:PORT, or an empty value for none)");
                        return ExitCode::from(2);
                    }
                },
            };
            let config = daemon::Config {
                status_file,
                debounce,
                drift_check_interval,
                resync_interval,
                metrics_addr,
                fail_closed,
                flannel_subnet_env,
                ..daemon::Config::new(&node_name, source)
            };
            match daemon::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e @ daemon::Error::Usage(_)) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
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
