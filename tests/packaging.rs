//! The packaging: `packaging/kubernetes/` (every document parsed into its k8s-openapi type,
//! with no field dropped on the way, and the DaemonSet checked for what the node daemon
//! needs), `systemd/` (`systemd-analyze verify`, the unit's settings, the example
//! environment file against `run --help`), the Containerfile (its runtime packages against
//! `ldd`), and the Debian package (built and put through dpkg for real by
//! `packaging/deb/test.sh`, as root).
//!
//! Checks that need a tool the machine lacks print `skipped: ...` and pass.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_kube-nftpol");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Kubernetes manifests

/// One YAML document of `packaging/kubernetes/`, parsed into its type.
#[derive(Debug)]
enum Manifest {
    DaemonSet(Box<DaemonSet>),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Other(String),
}

/// `kustomization.yaml`: not a Kubernetes object; the fields kustomize reads that we use.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    resources: Vec<String>,
}

/// Parses `doc` into `T`, naming the path of a field of the wrong type, then serialises the
/// typed object back and compares it with the document: k8s-openapi's types ignore unknown
/// fields (serde skips them), so a misspelled field (`imagePullPolcy`) would otherwise be
/// dropped without a word, and with it the setting it was meant to be.
fn typed<T: DeserializeOwned + Serialize>(doc: &serde_yaml::Value) -> Result<T, String> {
    let object: T = serde_path_to_error::deserialize(doc.clone())
        .map_err(|e| format!("at {}: {}", e.path(), e.inner()))?;
    let original = serde_json::to_value(doc).map_err(|e| format!("as JSON: {e}"))?;
    let back = serde_json::to_value(&object).map_err(|e| format!("serialising: {e}"))?;
    let mut differences = Vec::new();
    compare("", &original, &back, &mut differences);
    if differences.is_empty() {
        Ok(object)
    } else {
        Err(format!(
            "fields the type does not know (misspelled?) or does not keep: {}",
            differences.join("; ")
        ))
    }
}

fn compare(path: &str, original: &Value, back: &Value, out: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => compare(&here, value, other, out),
                    None => out.push(format!("{here} dropped")),
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{key} added"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                compare(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ if original == back => {}
        _ => out.push(format!("{path}: {original} became {back}")),
    }
}

fn parse_document(doc: &serde_yaml::Value) -> Result<Manifest, String> {
    let kind = doc
        .get("kind")
        .and_then(|k| k.as_str())
        .ok_or("no kind")?
        .to_string();
    Ok(match kind.as_str() {
        "DaemonSet" => Manifest::DaemonSet(Box::new(typed(doc)?)),
        "ServiceAccount" => Manifest::ServiceAccount(typed(doc)?),
        "ClusterRole" => Manifest::ClusterRole(typed(doc)?),
        "ClusterRoleBinding" => Manifest::ClusterRoleBinding(typed(doc)?),
        "Role" => typed::<Role>(doc).map(|_| Manifest::Other(kind))?,
        "RoleBinding" => typed::<RoleBinding>(doc).map(|_| Manifest::Other(kind))?,
        "ConfigMap" => typed::<ConfigMap>(doc).map(|_| Manifest::Other(kind))?,
        "Namespace" => typed::<Namespace>(doc).map(|_| Manifest::Other(kind))?,
        "Service" => typed::<Service>(doc).map(|_| Manifest::Other(kind))?,
        other => return Err(format!("kind {other}: add its type to tests/packaging.rs")),
    })
}

/// Every document of every file under `packaging/kubernetes/` but the kustomization, typed.
fn manifests() -> Vec<(String, Manifest)> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for file in kubernetes_files() {
        if file == "kustomization.yaml" {
            continue;
        }
        let text = read(&format!("packaging/kubernetes/{file}"));
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let where_ = format!("{file}, document {}", i + 1);
            match serde_yaml::Value::deserialize(doc) {
                Ok(serde_yaml::Value::Null) => {}
                Ok(value) => match parse_document(&value) {
                    Ok(m) => out.push((where_, m)),
                    Err(e) => errors.push(format!("{where_}: {e}")),
                },
                Err(e) => errors.push(format!("{where_}: YAML: {e}")),
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    out
}

fn kubernetes_files() -> Vec<String> {
    let dir = repo().join("packaging/kubernetes");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("packaging/kubernetes")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    for f in &files {
        assert!(
            f.ends_with(".yaml"),
            "packaging/kubernetes/{f}: only .yaml files belong there (tests/packaging.rs parses them)"
        );
    }
    files
}

fn daemonset() -> DaemonSet {
    let mut found = manifests().into_iter().filter_map(|(_, m)| match m {
        Manifest::DaemonSet(d) => Some(*d),
        _ => None,
    });
    let ds = found.next().expect("a DaemonSet in packaging/kubernetes/");
    assert!(found.next().is_none(), "one DaemonSet");
    ds
}

fn container(ds: &DaemonSet) -> Container {
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.containers.len(), 1, "one container");
    pod.containers[0].clone()
}

#[test]
fn every_manifest_parses_into_its_type_without_dropping_a_field() {
    let all = manifests();
    let kinds: BTreeSet<String> = all
        .iter()
        .map(|(_, m)| match m {
            Manifest::DaemonSet(_) => "DaemonSet".to_string(),
            Manifest::ServiceAccount(_) => "ServiceAccount".to_string(),
            Manifest::ClusterRole(_) => "ClusterRole".to_string(),
            Manifest::ClusterRoleBinding(_) => "ClusterRoleBinding".to_string(),
            Manifest::Other(kind) => kind.clone(),
        })
        .collect();
    for kind in [
        "DaemonSet",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    ] {
        assert!(kinds.contains(kind), "no {kind} in packaging/kubernetes/");
    }
    println!("{} documents typed: {kinds:?}", all.len());
}

#[test]
fn a_misspelled_field_is_caught() {
    let good = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: x, namespace: kube-system}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers:
      - name: x
        image: x
        imagePullPolicy: IfNotPresent
"#;
    let value: serde_yaml::Value = serde_yaml::from_str(good).unwrap();
    parse_document(&value).expect("the correct spelling parses");

    let typo: serde_yaml::Value =
        serde_yaml::from_str(&good.replace("imagePullPolicy", "imagePullPolcy")).unwrap();
    // serde alone accepts it: k8s-openapi ignores unknown fields.
    let lenient: Result<DaemonSet, _> = serde_yaml::from_value(typo.clone());
    println!(
        "k8s-openapi alone {} the typo",
        if lenient.is_ok() {
            "accepts (ignores)"
        } else {
            "rejects"
        }
    );
    let err = parse_document(&typo).expect_err("the typo must fail");
    assert!(
        err.contains(".spec.template.spec.containers[0].imagePullPolcy dropped"),
        "{err}"
    );

    let wrong_type: serde_yaml::Value =
        serde_yaml::from_str(&good.replace("image: x", "image: [x]")).unwrap();
    let err = parse_document(&wrong_type).expect_err("a list for a string must fail");
    assert!(
        err.contains("spec.template.spec.containers[0].image"),
        "{err}"
    );
}

#[test]
fn kustomization_lists_every_manifest() {
    let k: Kustomization = serde_yaml::from_str(&read("packaging/kubernetes/kustomization.yaml"))
        .expect("kustomization.yaml");
    assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k.kind, "Kustomization");
    let listed: BTreeSet<String> = k.resources.into_iter().collect();
    let files: BTreeSet<String> = kubernetes_files()
        .into_iter()
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files);
}

#[test]
fn daemonset_has_what_the_node_daemon_needs() {
    let ds = daemonset();
    let meta = &ds.metadata;
    assert_eq!(meta.namespace.as_deref(), Some("kube-system"));
    let spec = ds.spec.as_ref().unwrap();
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.clone()),
        Some(IntOrString::Int(1))
    );
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true), "hostNetwork");
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_ref().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint: {tolerations:?}"
    );

    // The ServiceAccount the RBAC grants.
    let sa = manifests()
        .into_iter()
        .find_map(|(_, m)| match m {
            Manifest::ServiceAccount(sa) => Some(sa),
            _ => None,
        })
        .expect("ServiceAccount");
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_eq!(meta.namespace, sa.metadata.namespace);

    let c = container(&ds);
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "args: {args:?}"
    );
    assert!(
        c.command.is_none(),
        "the image's ENTRYPOINT is the binary; set args only"
    );
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--kubeconfig") || a.starts_with("--manifests")),
        "in-cluster config is the default source: {args:?}"
    );
    let node_name = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        node_name
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName")
    );

    let sc = c.security_context.as_ref().expect("securityContext");
    assert_ne!(sc.privileged, Some(true), "not privileged");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));

    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let flannel = mounts
        .iter()
        .find(|m| m.mount_path == "/run/flannel")
        .expect("/run/flannel mounted");
    assert_eq!(flannel.read_only, Some(true), "/run/flannel read-only");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == flannel.name)
        .expect("its volume");
    assert_eq!(
        volume.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/run/flannel")
    );
    // Every mount read-only: the daemon writes nothing but netlink (and, if one were
    // writable, /proc/sys).
    for m in &mounts {
        assert_eq!(m.read_only, Some(true), "{} read-only", m.mount_path);
    }

    let resources = c.resources.as_ref().expect("resources");
    for key in ["cpu", "memory"] {
        assert!(
            resources
                .requests
                .as_ref()
                .is_some_and(|r| r.contains_key(key)),
            "requests.{key}"
        );
    }
    assert!(
        resources
            .limits
            .as_ref()
            .is_some_and(|r| r.contains_key("memory")),
        "limits.memory"
    );
}

/// `kube-nftpol run --help`: flag → (environment variable, default).
fn run_help() -> BTreeMap<String, (Option<String>, Option<String>, bool)> {
    let out = Command::new(BIN)
        .args(["run", "--help"])
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(flag) = t
            .split([',', ' '])
            .find(|w| w.starts_with("--"))
            .filter(|_| t.starts_with('-'))
        {
            let takes_value = t.contains('<');
            flags.insert(flag.to_string(), (None, None, takes_value));
            current = Some(flag.to_string());
        } else if let Some(cur) = &current {
            let entry = flags.get_mut(cur).unwrap();
            if let Some(env) = t.strip_prefix("[env: ") {
                entry.0 = Some(env.split('=').next().unwrap().to_string());
            } else if let Some(d) = t.strip_prefix("[default: ") {
                entry.1 = Some(d.trim_end_matches(']').to_string());
            }
        }
    }
    assert!(
        flags.contains_key("--node-name"),
        "parsed run --help: {flags:?}"
    );
    flags
}

fn env_names(help: &BTreeMap<String, (Option<String>, Option<String>, bool)>) -> BTreeSet<String> {
    help.values()
        .filter_map(|(env, _, _)| env.clone())
        .collect()
}

/// Runs `kube-nftpol run` with only `env` and `args`, plus `--manifests` of a directory that
/// does not exist: the run stops at that, with status 2, right after the flags parsed, before
/// anything touches the node. Returns stderr; panics unless it got that far.
fn parse_only(args: &[String], env: &[(String, String)]) -> String {
    let out = Command::new(BIN)
        .env_clear()
        .envs(env.iter().cloned())
        .args(args)
        .args(["--manifests", "/nonexistent/kube-nftpol-packaging-test"])
        .output()
        .expect("kube-nftpol");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.code() == Some(2) && stderr.contains("cannot read manifests directory"),
        "kube-nftpol {args:?} with {env:?} did not get past its flags: {stderr}"
    );
    stderr
}

#[test]
fn daemonset_flags_and_environment_exist_in_run_help_and_parse() {
    let help = run_help();
    let names = env_names(&help);
    let c = container(&daemonset());
    let args = c.args.clone().unwrap_or_default();
    for arg in &args[1..] {
        if let Some(flag) = arg.strip_prefix("--") {
            let flag = format!("--{}", flag.split('=').next().unwrap());
            assert!(
                help.contains_key(&flag),
                "{flag} is not a flag of run: {help:?}"
            );
        }
    }
    let mut env = Vec::new();
    for e in c.env.iter().flatten() {
        if e.name.starts_with("KUBE_NFTPOL_") || e.name == "NODE_NAME" {
            assert!(names.contains(&e.name), "{} is not read by run", e.name);
        }
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(_)) => "node-from-field-ref".to_string(),
            (None, None) => String::new(),
        };
        env.push((e.name.clone(), value));
    }
    parse_only(&args, &env);
}

#[test]
fn probes_and_port_are_the_ones_the_daemon_serves() {
    let help = run_help();
    let c = container(&daemonset());
    let args = c.args.clone().unwrap_or_default();
    let from_args = args
        .iter()
        .position(|a| a == "--metrics-addr")
        .map(|i| args[i + 1].clone())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--metrics-addr=").map(str::to_string))
        });
    let from_env = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "KUBE_NFTPOL_METRICS_ADDR")
        .and_then(|e| e.value.clone());
    let addr = from_args
        .or(from_env)
        .or_else(|| help["--metrics-addr"].1.clone())
        .expect("a metrics address");
    let served: i32 = addr.rsplit(':').next().unwrap().parse().expect("port");
    assert_eq!(served, 9476, "docs/metrics.md names 9476");

    let ports = c.ports.clone().unwrap_or_default();
    let metrics = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a port named metrics");
    assert_eq!(metrics.container_port, served);
    let resolve = |port: &IntOrString| match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("no port named {name}"))
                .container_port
        }
    };
    for (which, probe, path) in [
        ("liveness", &c.liveness_probe, "/healthz"),
        ("readiness", &c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{which} probe: httpGet"));
        assert_eq!(get.path.as_deref(), Some(path), "{which} probe path");
        assert_eq!(resolve(&get.port), served, "{which} probe port");
    }
}

#[test]
fn cluster_role_only_reads_what_the_daemon_watches() {
    let all = manifests();
    let role = all
        .iter()
        .find_map(|(_, m)| match m {
            Manifest::ClusterRole(r) => Some(r),
            _ => None,
        })
        .expect("ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        let mut verbs = rule.verbs.clone();
        verbs.sort();
        assert_eq!(verbs, ["get", "list", "watch"], "verbs of {rule:?}");
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                granted.insert(format!("{group}/{resource}"));
            }
        }
    }
    let expected: BTreeSet<String> = [
        "/pods",
        "/namespaces",
        "/nodes",
        "networking.k8s.io/networkpolicies",
    ]
    .map(String::from)
    .into();
    assert_eq!(granted, expected);

    let binding = all
        .iter()
        .find_map(|(_, m)| match m {
            Manifest::ClusterRoleBinding(b) => Some(b),
            _ => None,
        })
        .expect("ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let pod_spec = daemonset().spec.unwrap().template.spec.unwrap();
    let subjects = binding.subjects.clone().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(
        Some(&subjects[0].name),
        pod_spec.service_account_name.as_ref()
    );
    assert_eq!(subjects[0].namespace.as_deref(), Some("kube-system"));
}

// ---------------------------------------------------------------------------------------------
// systemd

/// `[Section] Key=value` of a unit file, values of repeated keys in order.
fn unit_settings(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[') {
            section = s.trim_end_matches(']').to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.entry((section.clone(), k.trim().to_string()))
                .or_default()
                .push(v.trim().to_string());
        }
    }
    out
}

#[test]
fn systemd_unit_verifies_and_has_the_required_settings() {
    let text = read("systemd/kube-nftpol.service");
    let s = unit_settings(&text);
    let one = |section: &str, key: &str| -> String {
        let values = s
            .get(&(section.to_string(), key.to_string()))
            .unwrap_or_else(|| panic!("[{section}] {key}= missing"));
        values.join(" ")
    };
    assert_eq!(one("Service", "Type"), "notify");
    assert_eq!(one("Service", "Restart"), "always");
    assert_eq!(one("Service", "CapabilityBoundingSet"), "CAP_NET_ADMIN");
    assert_eq!(one("Service", "NoNewPrivileges"), "yes");
    assert_eq!(one("Service", "ProtectSystem"), "strict");
    assert_eq!(one("Service", "ProtectHome"), "yes");
    assert_eq!(one("Service", "PrivateTmp"), "yes");
    let families = one("Service", "RestrictAddressFamilies");
    let families: BTreeSet<&str> = families.split_whitespace().collect();
    assert_eq!(
        families,
        BTreeSet::from(["AF_NETLINK", "AF_UNIX", "AF_INET", "AF_INET6"])
    );
    assert!(one("Unit", "Before").contains("kubelet.service"));
    assert!(one("Unit", "After").contains("network-online.target"));
    assert_eq!(
        one("Service", "EnvironmentFile"),
        "-/etc/default/kube-nftpol"
    );
    // /proc/sys read-only but for the bridge sysctls the daemon writes.
    if s.contains_key(&("Service".into(), "ProtectKernelTunables".into())) {
        assert!(one("Service", "ReadWritePaths").contains("/proc/sys/net/bridge"));
    }
    // Stopping never removes the rules.
    for key in ["ExecStop", "ExecStopPost"] {
        assert!(
            !s.contains_key(&("Service".into(), key.into())),
            "{key}= would run at every stop"
        );
    }
    let exec = one("Service", "ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/bin/kube-nftpol"));
    assert_eq!(words.next(), Some("run"));
    let help = run_help();
    for w in words {
        let flag = w.split('=').next().unwrap();
        assert!(
            help.contains_key(flag),
            "ExecStart: {flag} is not a flag of run"
        );
    }

    let Some(analyze) = which("systemd-analyze") else {
        println!("skipped: systemd-analyze not installed (the unit was not verified)");
        return;
    };
    // verify wants ExecStart's binary to exist: a copy of the unit runs the one cargo built.
    let dir = scratch_dir("unit");
    let unit = dir.join("kube-nftpol.service");
    std::fs::write(
        &unit,
        text.replace(
            "ExecStart=/usr/bin/kube-nftpol ",
            &format!("ExecStart={BIN} "),
        ),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
    // Warnings (an unknown key, a bad value) do not change the exit status: fail on any
    // line about our unit.
    let ours: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("kube-nftpol"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {report}"
    );
    println!("systemd-analyze verify: clean");
}

#[test]
fn systemd_env_example_names_only_variables_run_reads() {
    let names = env_names(&run_help());
    let text = read("systemd/kube-nftpol.env");
    let mut seen = 0;
    for line in text.lines() {
        let line = line.trim().trim_start_matches('#');
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            continue;
        }
        seen += 1;
        if name == "RUST_LOG" {
            continue;
        }
        assert!(
            names.contains(name),
            "{name} is not read by kube-nftpol run"
        );
        // Each example value parses (the kubeconfig one would start a real run: its name is
        // enough).
        if name != "KUBE_NFTPOL_KUBECONFIG" && name != "KUBE_NFTPOL_MANIFESTS" {
            let mut env = vec![(name.to_string(), value.to_string())];
            if name != "NODE_NAME" {
                env.push(("NODE_NAME".into(), "node-a".into()));
            }
            parse_only(&["run".to_string()], &env);
        }
    }
    assert!(
        seen >= 10,
        "the example names every variable ({seen} found)"
    );
    for name in &names {
        assert!(
            text.contains(&format!("{name}=")),
            "systemd/kube-nftpol.env does not mention {name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Container image

#[test]
fn containerfile_runtime_has_every_library_the_binary_links() {
    let text = read("packaging/container/Containerfile");
    let stages: Vec<&str> = text.split("\nFROM ").collect();
    let runtime = stages.last().unwrap();
    assert!(
        runtime.contains("ENTRYPOINT [\"/usr/bin/kube-nftpol\"]"),
        "ENTRYPOINT"
    );
    // The builder's toolchain is the pinned one.
    let toolchain = read("rust-toolchain.toml");
    let channel = toolchain
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .expect("channel")
        .trim_matches('"');
    let minor: String = channel.split('.').take(2).collect::<Vec<_>>().join(".");
    assert!(
        text.contains(&format!(
            "FROM docker.io/library/rust:{minor}-bookworm AS build"
        )),
        "the builder should be rust:{minor}-bookworm (rust-toolchain.toml: {channel})"
    );
    // What the build stage copies holds every target Cargo.toml declares.
    let copied: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[..words.len() - 1]
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for path in ["Cargo.toml", "Cargo.lock"] {
        assert!(copied.iter().any(|c| c == path), "COPY {path}");
    }
    for src in cargo_target_paths() {
        let rel = src.strip_prefix(repo()).expect("target inside the repo");
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        assert!(
            copied.iter().any(|c| *c == top),
            "the Containerfile does not COPY {top}, where target {} lives",
            rel.display()
        );
    }

    // The RUN instruction's continued lines joined, the words after `apt-get install`.
    let joined = runtime.replace("\\\n", " ");
    let install = joined
        .lines()
        .find_map(|l| {
            l.split_once("apt-get install")
                .map(|(_, rest)| rest.to_string())
        })
        .expect("apt-get install in the runtime stage");
    let packages: BTreeSet<&str> = install
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .filter(|w| !w.starts_with('-'))
        .collect();
    let Some(linked) = linked_packages() else {
        return;
    };
    for (lib, package) in &linked {
        assert!(
            packages.contains(package.as_str()),
            "{lib} comes from {package}, which the runtime stage does not install ({packages:?})"
        );
    }
    println!("runtime packages {packages:?} cover {linked:?}");
}

/// Source paths of every target of the package (`cargo metadata`).
fn cargo_target_paths() -> Vec<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(repo())
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    meta["packages"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| PathBuf::from(t["src_path"].as_str().unwrap()))
        .collect()
}

/// (library, Debian package) for every shared library the binary loads; None (with a
/// `skipped` line) where ldd or dpkg is missing.
fn linked_packages() -> Option<Vec<(String, String)>> {
    if which("ldd").is_none() || which("dpkg-query").is_none() {
        println!("skipped: ldd or dpkg-query not installed (libraries not checked)");
        return None;
    }
    let out = Command::new("ldd").arg(BIN).output().expect("ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut linked = Vec::new();
    for path in text.split_whitespace().filter(|w| w.starts_with('/')) {
        let candidates = [
            path.to_string(),
            std::fs::canonicalize(path)
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            path.strip_prefix("/usr").unwrap_or(path).to_string(),
            format!("/usr{path}"),
        ];
        let package = candidates.iter().find_map(|p| {
            let o = Command::new("dpkg-query").args(["-S", p]).output().ok()?;
            let s = String::from_utf8_lossy(&o.stdout);
            let first = s.lines().next()?;
            Some(first.split(':').next()?.to_string())
        });
        linked.push((
            path.to_string(),
            package.unwrap_or_else(|| panic!("no Debian package owns {path}")),
        ));
    }
    assert!(
        linked.iter().any(|(_, p)| p == "libnftnl11"),
        "ldd {BIN}: {text}"
    );
    Some(linked)
}

// ---------------------------------------------------------------------------------------------
// Debian package

#[test]
fn deb_package_installs_upgrades_removes_and_purges() {
    let script = repo().join("packaging/deb/test.sh");
    let start = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(BIN)
        .output()
        .expect("packaging/deb/test.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => println!(
            "{stdout}packaging/deb/test.sh: {:.1}s",
            start.elapsed().as_secs_f64()
        ),
        Some(77) => println!(
            "{}",
            stdout
                .lines()
                .last()
                .unwrap_or("skipped: packaging/deb/test.sh")
        ),
        _ => panic!("packaging/deb/test.sh failed:\n{stdout}\n{stderr}"),
    }
}

// ---------------------------------------------------------------------------------------------

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kube-nftpol-packaging-{tag}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
