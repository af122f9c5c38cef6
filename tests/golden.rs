//! Golden scenarios (`rules/scenarios/<NNN-topic>/`): manifests in, the node's whole ruleset
//! out, compared as text; and the scenario's hand-written flows table checked against the
//! compiled rulesets of every node (via `ruleset::eval` on the path model) and against the
//! independent spec oracle.
//!
//! `UPDATE_GOLDEN=1 cargo test --test golden` rewrites `expected.nft` and `diagnostics.txt`;
//! review the diff before committing it. Flows are never rewritten: they are the spec.

mod support;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::Node;
use kube_nftpol::compile::{compile_with, Options};
use kube_nftpol::explain::NodeRulesets;
use kube_nftpol::model::{Cluster, Object, Protocol};
use kube_nftpol::render::text;
use kube_nftpol::sources::manifests;

fn scenarios() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/scenarios");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("rules/scenarios exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

struct Scenario {
    dir: PathBuf,
    name: String,
    node: String,
    /// The flags of the scenario's `options` file.
    options: Options,
    objects: Vec<Object>,
    /// Problems and diagnostics, as `render` prints them (paths relative to the scenario).
    diagnostics: String,
    cluster: Cluster,
}

fn load(dir: &Path) -> Scenario {
    let name = dir
        .file_name()
        .expect("scenario dir has a name")
        .to_string_lossy()
        .into_owned();
    let node = std::fs::read_to_string(dir.join("node"))
        .unwrap_or_else(|e| panic!("{name}: cannot read node file: {e}"))
        .trim()
        .to_string();
    let loaded = manifests::load_dir(&dir.join("input")).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut diagnostics = String::new();
    for p in &loaded.problems {
        let shown = p.to_string().replace(&format!("{}/", dir.display()), "");
        let _ = writeln!(diagnostics, "warning: {shown}");
    }
    let options = support::scenario::scenario_options(dir);
    let (cluster, diags) = Cluster::from_objects(loaded.objects.clone());
    let compiled_diags = compile_with(&cluster, &node, &options).diagnostics;
    for d in diags.iter().chain(&compiled_diags) {
        let _ = writeln!(diagnostics, "warning: {d}");
    }
    Scenario {
        dir: dir.to_path_buf(),
        name,
        node,
        options,
        objects: loaded.objects,
        diagnostics,
        cluster,
    }
}

/// Compares `actual` with the file, or rewrites it under UPDATE_GOLDEN=1. An empty `actual`
/// means the file must not exist.
fn golden(path: &Path, actual: &str, failures: &mut Vec<String>) {
    let expected = std::fs::read_to_string(path).ok();
    if updating() {
        if actual.is_empty() {
            let _ = std::fs::remove_file(path);
        } else if expected.as_deref() != Some(actual) {
            std::fs::write(path, actual).expect("golden file is writable");
        }
        return;
    }
    match expected {
        None if actual.is_empty() => {}
        None => failures.push(format!(
            "{}: missing; run UPDATE_GOLDEN=1 cargo test --test golden",
            path.display()
        )),
        Some(e) if e == actual => {}
        Some(e) => failures.push(format!(
            "{}: differs from the compiler's output:\n{}",
            path.display(),
            diff(&e, actual)
        )),
    }
}

/// A small line diff: enough to see what changed in a golden file.
fn diff(expected: &str, actual: &str) -> String {
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < e.len() || j < a.len() {
        if i < e.len() && j < a.len() && e[i] == a[j] {
            i += 1;
            j += 1;
            continue;
        }
        // Resynchronise on the next common line.
        let next = (i..e.len()).find_map(|x| (j..a.len()).find(|y| e[x] == a[*y]).map(|y| (x, y)));
        let (x, y) = next.unwrap_or((e.len(), a.len()));
        for line in &e[i..x] {
            let _ = writeln!(out, "-{line}");
        }
        for line in &a[j..y] {
            let _ = writeln!(out, "+{line}");
        }
        i = x;
        j = y;
    }
    out
}

struct Flow {
    line: usize,
    text: String,
    src: String,
    dst: String,
    protocol: Protocol,
    port: u16,
    allow: bool,
}

fn parse_flows(path: &Path) -> Result<Vec<Flow>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut flows = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| format!("{}:{}: {why}: {raw}", path.display(), n + 1);
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [src, dst, proto, port, verdict] = cols[..] else {
            return Err(bad("expected <src> <dst> <proto> <port> <allow|deny>"));
        };
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => return Err(bad("protocol must be tcp, udp or sctp")),
        };
        let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
        let allow = match verdict {
            "allow" => true,
            "deny" => false,
            _ => return Err(bad("verdict must be allow or deny")),
        };
        flows.push(Flow {
            line: n + 1,
            text: line.to_string(),
            src: src.into(),
            dst: dst.into(),
            protocol,
            port,
            allow,
        });
    }
    Ok(flows)
}

/// `ns/pod`, `ns/pod@4`, `ns/pod@6`, `node:<name>` or a literal address.
fn resolve(cluster: &Cluster, spec: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = spec.parse() {
        return Ok(ip);
    }
    if let Some(node) = spec.strip_prefix("node:") {
        return cluster
            .node_ips(node)
            .into_iter()
            .next()
            .ok_or(format!("node {node} has no known address"));
    }
    let (pod, family) = match spec.split_once('@') {
        Some((p, f)) => (p, Some(f)),
        None => (spec, None),
    };
    let (ns, name) = pod
        .split_once('/')
        .ok_or(format!("{spec}: not ns/pod, node:<name> or an IP"))?;
    let pod = cluster
        .pod(ns, name)
        .ok_or(format!("{spec}: no such pod"))?;
    let ip = match family {
        None => pod.ips.first(),
        Some("4") => pod.ips.iter().find(|i| i.is_ipv4()),
        Some("6") => pod.ips.iter().find(|i| i.is_ipv6()),
        Some(other) => return Err(format!("{spec}: @{other} is not @4 or @6")),
    };
    ip.copied()
        .ok_or(format!("{spec}: pod has no such address"))
}

fn oracle_proto(p: Protocol) -> support::Proto {
    match p {
        Protocol::Tcp => support::Proto::Tcp,
        Protocol::Udp => support::Proto::Udp,
        Protocol::Sctp => support::Proto::Sctp,
    }
}

fn world(objects: &[Object]) -> support::oracle::World {
    let mut w = support::oracle::World {
        namespaces: vec![],
        pods: vec![],
        policies: vec![],
    };
    for o in objects {
        match o {
            Object::Node(_) => {}
            Object::Namespace(n) => w.namespaces.push(n.clone()),
            Object::Pod(p) => w.pods.push(p.clone()),
            Object::NetworkPolicy(p) => w.policies.push(p.clone()),
        }
    }
    w
}

/// The addresses a Node object reports.
fn node_addresses(node: &Node) -> impl Iterator<Item = IpAddr> + '_ {
    let status = node.status.iter();
    let addresses = status.flat_map(|s| s.addresses.iter().flatten());
    addresses.filter_map(|a| a.address.parse().ok())
}

/// `--fail-closed`, from its definition: an address inside some Node's `spec.podCIDRs` that
/// no live, non-hostNetwork pod bound to that node has is dropped on its way in and out,
/// except when that node itself sends it (its own output is never filtered). Returns the
/// node.
fn unprogrammed(objects: &[Object], addr: IpAddr) -> Option<&Node> {
    let parse = |c: &String| c.parse::<ipnet::IpNet>().ok();
    objects.iter().find_map(|o| {
        let Object::Node(node) = o else { return None };
        let cidrs = node.spec.iter().flat_map(|s| s.pod_cidrs.iter().flatten());
        let inside = cidrs.filter_map(parse).any(|c| c.contains(&addr));
        let unprogrammed = inside
            && !objects.iter().any(|o| {
                let Object::Pod(p) = o else { return false };
                let spec = p.spec.as_ref();
                let status = p.status.as_ref();
                spec.and_then(|s| s.node_name.as_ref()) == node.metadata.name.as_ref()
                    && spec.and_then(|s| s.host_network) != Some(true)
                    && !matches!(
                        status.and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
                    && status.is_some_and(|s| {
                        let ips = s.pod_ips.iter().flatten().map(|i| &i.ip);
                        ips.chain(s.pod_ip.as_ref())
                            .any(|ip| ip.parse() == Ok(addr))
                    })
            });
        unprogrammed.then_some(node)
    })
}

#[test]
fn golden_rulesets_and_flows() {
    let dirs = scenarios();
    assert!(
        dirs.len() >= 30,
        "expected at least 30 scenarios, found {}",
        dirs.len()
    );
    let mut failures = Vec::new();
    let mut flows_checked = 0;
    let (mut allowed, mut denied) = (0, 0);
    for dir in &dirs {
        let s = load(dir);
        let compiled = compile_with(&s.cluster, &s.node, &s.options);
        if let Err(e) = compiled.ruleset.validate() {
            failures.push(format!("{}: ruleset does not validate: {e}", s.name));
        }
        golden(
            &s.dir.join("expected.nft"),
            &text::render(&compiled.ruleset),
            &mut failures,
        );
        golden(
            &s.dir.join("diagnostics.txt"),
            &s.diagnostics,
            &mut failures,
        );

        let flows = match parse_flows(&s.dir.join("flows.txt")) {
            Ok(f) if !f.is_empty() => f,
            Ok(_) => {
                failures.push(format!("{}: flows.txt has no flows", s.name));
                continue;
            }
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let nodes = NodeRulesets::compile_with(&s.cluster, &s.options);
        // The shape kernels with intervals in concatenations get must mean the same.
        let concat = NodeRulesets::compile_with(
            &s.cluster,
            &Options {
                concat_ports: true,
                ..s.options.clone()
            },
        );
        let oracle_world = world(&s.objects);
        for f in &flows {
            let at = format!("{}/flows.txt:{}: {}", s.name, f.line, f.text);
            let (src, dst) = match (resolve(&s.cluster, &f.src), resolve(&s.cluster, &f.dst)) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => {
                    failures.push(format!("{at}: {e}"));
                    continue;
                }
            };
            flows_checked += 1;
            if f.allow {
                allowed += 1;
            } else {
                denied += 1;
            }
            let verdict = nodes.flow(src, dst, f.protocol, f.port);
            if verdict.allowed != f.allow {
                let mut why = String::new();
                for hop in &verdict.hops {
                    let reasons: Vec<String> =
                        hop.decision.reasons().map(|o| o.to_string()).collect();
                    let _ = write!(
                        why,
                        "\n      {} {}: accepted={} by [{}]",
                        hop.node,
                        hop.hook.as_str(),
                        hop.decision.accepted,
                        reasons.join("; ")
                    );
                }
                failures.push(format!(
                    "{at}: ruleset says {} ({src} -> {dst}){why}",
                    if verdict.allowed { "allow" } else { "deny" }
                ));
            }
            if concat.flow(src, dst, f.protocol, f.port).allowed != f.allow {
                failures.push(format!("{at}: the concatenated-ports shape disagrees"));
            }
            let guarded = s.options.fail_closed
                && (unprogrammed(&s.objects, src).is_some()
                    || unprogrammed(&s.objects, dst)
                        .is_some_and(|node| !node_addresses(node).any(|a| a == src)));
            let oracle = !guarded
                && support::oracle::allowed(
                    &oracle_world,
                    src,
                    dst,
                    oracle_proto(f.protocol),
                    f.port,
                );
            if oracle != f.allow {
                failures.push(format!(
                    "{at}: the spec oracle says {}",
                    if oracle { "allow" } else { "deny" }
                ));
            }
        }
    }
    println!(
        "{} scenarios, {flows_checked} flows ({allowed} allow, {denied} deny)",
        dirs.len()
    );
    assert!(
        failures.is_empty(),
        "{} golden failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        allowed > 100 && denied > 100,
        "flows must exercise both verdicts: {allowed} allow, {denied} deny"
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `nft -c -f` (check only, nothing committed) in a throwaway network namespace accepts
/// every golden file: the text render is real nft syntax the running kernel takes.
#[test]
fn nft_accepts_every_golden_ruleset() {
    assert!(
        is_root(),
        "this test loads rulesets into the kernel (check mode, in a private network namespace) and \
         needs root: run the suite with `make test` as root"
    );
    let mut failures = Vec::new();
    let dirs = scenarios();
    for dir in &dirs {
        let file = dir.join("expected.nft");
        let out = Command::new("unshare")
            .args(["--net", "nft", "-c", "-f"])
            .arg(&file)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run unshare/nft (install nftables and util-linux): {e}")
            });
        if !out.status.success() {
            failures.push(format!(
                "{}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "nft rejects:\n{}", failures.join("\n"));
    println!("nft -c accepted {} golden rulesets", dirs.len());
}
