//! The (10k pods, 1k policies) synthetic cluster of `benches/synth`, mapped onto the two
//! netns nodes, with the bench's probed pods and their policies inside it.
//!
//! - Synthetic `node-0` (the node under test, 107 pods) becomes `node-a`, `node-1` (about 110
//!   pods) becomes `node-b`; their pods get the node's real `status.hostIP`. Pods of the
//!   other ~90 synthetic nodes stay where they are: they are peers only.
//! - Five real pods join one synthetic namespace `NS`, with the addresses the netns cluster
//!   gives them: `bench-server` (node-a 10.244.1.10), `bench-client` (node-a .11),
//!   `bench-stranger` (node-a .12), `bench-client-remote` (node-b 10.244.2.10) and
//!   `bench-stranger-remote` (node-b .11). With 9,995 synthetic pods and 995 synthetic
//!   policies plus these five pods and five policies, the model has exactly 10,000 pods and
//!   1,000 policies, 110 of them on node-a.
//!
//! How the allowing policy is kept from being the first one evaluated. kube-nftpol's target
//! chain for a pod holds the rules of every policy selecting it, **policies in name order,
//! rules in spec order** (rules/README.md, "Target chains"); the linear rendering (c) walks
//! them in the same order. The server (`app=bench-server`, `tier=backend`) is put in the
//! staging namespace where the most synthetic policies select such a pod (a namespace-wide
//! default deny, `tier In (backend, db)` monitoring policies, ...), and gets three policies
//! of its own whose names sort after every synthetic `pol-<number>` (`-` then a letter sorts
//! after `-` then a digit):
//!
//! 1. `pol-bench-1-monitoring`: frontends of another team's namespaces, TCP 9090;
//! 2. `pol-bench-2-from-prod`: every pod of the `env=prod` namespaces (a third of the
//!    cluster), TCP 5432;
//! 3. `pol-bench-3-allow-client`: `app=bench-client`, TCP 5201-5202 and UDP 5203 — the only
//!    rule that allows the probed traffic, evaluated after all the others.
//!
//! The clients are isolated for egress too: `pol-bench-4-client-egress-web` (the synthetic
//! egress shape: DNS, every namespace on the named port `http`, the internet minus private
//! ranges on 443) comes before `pol-bench-5-client-egress-server`, the one that lets them
//! reach the server. The strangers are selected by nothing that allows them: they are the
//! negative probes. The bench checks all of this on the compiled rulesets (the trace of
//! `ruleset::eval` names the rule that allowed and its position) before any packet is sent,
//! and then with real packets.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube_nftpol::model::{Cluster as Model, Object};
use serde_json::json;

use crate::cluster::{node_v4, pod_v4, NODE_NAMES};
use crate::synth;

/// The server's ports: one per metric, all allowed by `pol-bench-3-allow-client`.
pub const TCP_STREAM_PORT: u16 = 5201;
pub const TCP_CRR_PORT: u16 = 5202;
pub const UDP_RR_PORT: u16 = 5203;

pub const ALLOWING_INGRESS: &str = "pol-bench-3-allow-client";
pub const ALLOWING_EGRESS: &str = "pol-bench-5-client-egress-server";

const SYNTH_PODS: usize = 10_000 - 5;
const SYNTH_POLICIES: usize = 1_000 - 5;

/// One of the real pods: a netns on `node` with host part `host`.
#[derive(Clone, Debug)]
pub struct BenchPod {
    pub name: &'static str,
    pub node: usize,
    pub host: u8,
    pub app: &'static str,
    pub tier: &'static str,
}

impl BenchPod {
    pub fn v4(&self) -> Ipv4Addr {
        pod_v4(self.node, self.host)
    }
    pub fn ip(&self) -> IpAddr {
        IpAddr::V4(self.v4())
    }
}

pub const SERVER: usize = 0;
pub const CLIENT: usize = 1;
pub const STRANGER: usize = 2;
pub const CLIENT_REMOTE: usize = 3;
pub const STRANGER_REMOTE: usize = 4;

pub fn bench_pods() -> Vec<BenchPod> {
    let pod = |name, node, host, app, tier| BenchPod {
        name,
        node,
        host,
        app,
        tier,
    };
    vec![
        pod("bench-server", 0, 10, "bench-server", "backend"),
        pod("bench-client", 0, 11, "bench-client", "frontend"),
        pod("bench-stranger", 0, 12, "bench-stranger", "cache"),
        pod("bench-client-remote", 1, 10, "bench-client", "frontend"),
        pod("bench-stranger-remote", 1, 11, "bench-stranger", "cache"),
    ]
}

pub struct Scenario {
    pub objects: Vec<Object>,
    /// The synthetic namespace the bench pods joined.
    pub namespace: String,
    pub pods: Vec<BenchPod>,
}

fn node_index(name: &str) -> Option<usize> {
    match name {
        "node-0" => Some(0),
        "node-1" => Some(1),
        _ => None,
    }
}

pub fn build() -> Scenario {
    let synthetic = synth::generate(&synth::Params {
        pods: SYNTH_PODS,
        policies: SYNTH_POLICIES,
        namespaces: SYNTH_PODS.div_ceil(100),
        local_pods: 107,
        seed: 42,
    });
    let mut objects = synthetic.objects;
    // node-0 → node-a, node-1 → node-b, with their real host IPs.
    for object in &mut objects {
        let Object::Pod(pod) = object else { continue };
        let Some(spec) = pod.spec.as_mut() else {
            continue;
        };
        let Some(i) = spec.node_name.as_deref().and_then(node_index) else {
            continue;
        };
        spec.node_name = Some(NODE_NAMES[i].to_string());
        if let Some(status) = pod.status.as_mut() {
            status.host_ip = Some(node_v4(i).to_string());
        }
    }

    let (namespace, team) = pick_namespace(&objects);
    let other_team = if team == "payments" {
        "search"
    } else {
        "payments"
    };
    let pods = bench_pods();
    for p in &pods {
        objects.push(Object::Pod(pod_object(&namespace, p)));
    }
    for policy in policies(&namespace, other_team) {
        objects.push(Object::NetworkPolicy(policy));
    }
    Scenario {
        objects,
        namespace,
        pods,
    }
}

/// The staging namespace (so that `pol-bench-2-from-prod` does not cover its own pods) where
/// the most synthetic policies isolate a `tier=backend` pod for ingress; ties by name.
fn pick_namespace(objects: &[Object]) -> (String, String) {
    let (model, _) = Model::from_objects(objects.iter().cloned());
    let labels: BTreeMap<String, String> = [("app", "bench-server"), ("tier", "backend")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut best: Option<(usize, String, String)> = None;
    for ns in model.namespaces() {
        if ns.labels.get("env").map(String::as_str) != Some("staging") {
            continue;
        }
        let selecting = model
            .policies()
            .filter(|p| p.namespace == ns.name && p.ingress.is_some())
            .filter(|p| p.pod_selector.as_ref().is_none_or(|s| s.matches(&labels)))
            .count();
        let better = match &best {
            None => true,
            Some((n, _, _)) => selecting > *n,
        };
        if better {
            let team = ns.labels.get("team").cloned().unwrap_or_default();
            best = Some((selecting, ns.name.clone(), team));
        }
    }
    let (_, name, team) = best.expect("the synthetic cluster has staging namespaces");
    (name, team)
}

fn pod_object(namespace: &str, p: &BenchPod) -> Pod {
    let value = json!({
        "metadata": {
            "name": p.name,
            "namespace": namespace,
            "labels": {"app": p.app, "tier": p.tier, "pod-template-hash": "bench"},
        },
        "spec": {
            "nodeName": NODE_NAMES[p.node],
            "containers": [{
                "name": "main",
                "ports": [
                    {"name": "http", "containerPort": 8080},
                    {"name": "metrics", "containerPort": 9090},
                    {"name": "bench-tcp", "containerPort": TCP_STREAM_PORT},
                    {"name": "bench-udp", "containerPort": UDP_RR_PORT, "protocol": "UDP"},
                ],
            }],
        },
        "status": {
            "phase": "Running",
            "hostIP": node_v4(p.node).to_string(),
            "podIP": p.v4().to_string(),
            "podIPs": [{"ip": p.v4().to_string()}],
        },
    });
    serde_json::from_value(value).expect("bench pod manifest")
}

fn policies(namespace: &str, other_team: &str) -> Vec<NetworkPolicy> {
    let bench_ports = json!([
        {"port": TCP_STREAM_PORT, "endPort": TCP_CRR_PORT},
        {"port": UDP_RR_PORT, "protocol": "UDP"},
    ]);
    let values = [
        json!({
            "metadata": {"name": "pol-bench-1-monitoring", "namespace": namespace},
            "spec": {
                "podSelector": {"matchLabels": {"app": "bench-server"}},
                "ingress": [{
                    "from": [{
                        "namespaceSelector": {"matchLabels": {"team": other_team}},
                        "podSelector": {"matchLabels": {"tier": "frontend"}},
                    }],
                    "ports": [{"port": 9090}],
                }],
            },
        }),
        json!({
            "metadata": {"name": "pol-bench-2-from-prod", "namespace": namespace},
            "spec": {
                "podSelector": {"matchLabels": {"app": "bench-server"}},
                "ingress": [{
                    "from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}],
                    "ports": [{"port": 5432}],
                }],
            },
        }),
        json!({
            "metadata": {"name": ALLOWING_INGRESS, "namespace": namespace},
            "spec": {
                "podSelector": {"matchLabels": {"app": "bench-server"}},
                "ingress": [{
                    "from": [{"podSelector": {"matchLabels": {"app": "bench-client"}}}],
                    "ports": bench_ports.clone(),
                }],
            },
        }),
        json!({
            "metadata": {"name": "pol-bench-4-client-egress-web", "namespace": namespace},
            "spec": {
                "podSelector": {"matchLabels": {"app": "bench-client"}},
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [{
                            "namespaceSelector": {"matchLabels": {
                                "kubernetes.io/metadata.name": "kube-system"}},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }],
                        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}],
                    },
                    {
                        "to": [{"namespaceSelector": {}}],
                        "ports": [{"port": "http"}],
                    },
                    {
                        "to": [{"ipBlock": {
                            "cidr": "0.0.0.0/0",
                            "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
                        }}],
                        "ports": [{"port": 443}],
                    },
                ],
            },
        }),
        json!({
            "metadata": {"name": ALLOWING_EGRESS, "namespace": namespace},
            "spec": {
                "podSelector": {"matchLabels": {"app": "bench-client"}},
                "policyTypes": ["Egress"],
                "egress": [{
                    "to": [{"podSelector": {"matchLabels": {"app": "bench-server"}}}],
                    "ports": bench_ports,
                }],
            },
        }),
    ];
    values
        .into_iter()
        .map(|v| serde_json::from_value(v).expect("bench policy manifest"))
        .collect()
}
