//! Seeded synthetic clusters for benchmarks: namespaces of teams, deployments of 1–50
//! replicas with app/tier/team labels and named ports, and a policy mix like real clusters
//! have (default deny, pod and namespace selectors, ipBlocks with excepts, numeric and named
//! ports). Bench-only: never used by the product.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Pod, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_nftpol::model::Object;

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

pub struct Params {
    pub pods: usize,
    pub policies: usize,
    pub namespaces: usize,
    /// Pods bound to `node-0`, the node under test; the rest spread over other nodes.
    pub local_pods: usize,
    pub seed: u64,
}

pub struct Synthetic {
    pub objects: Vec<Object>,
    pub node: String,
}

const TIERS: [&str; 4] = ["frontend", "backend", "db", "cache"];
const TEAMS: [&str; 6] = ["payments", "search", "identity", "data", "infra", "web"];

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn match_labels(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        match_expressions: None,
    }
}

pub fn pod_ip(i: usize) -> String {
    format!(
        "10.{}.{}.{}",
        64 + i / 65_000,
        (i % 65_000) / 250,
        2 + i % 250
    )
}

pub fn generate(p: &Params) -> Synthetic {
    let mut rng = Rng::new(p.seed);
    let mut objects = Vec::new();
    let ns_names: Vec<String> = (0..p.namespaces).map(|i| format!("ns-{i:03}")).collect();
    for (i, ns) in ns_names.iter().enumerate() {
        let team = TEAMS[i % TEAMS.len()];
        let env = if i % 3 == 0 { "prod" } else { "staging" };
        objects.push(Object::Namespace(Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                labels: labels(&[("team", team), ("env", env)]),
                ..Default::default()
            },
            ..Default::default()
        }));
    }

    // Deployments until the pod budget is spent.
    let mut deployments = Vec::new();
    let mut pod_index = 0;
    let nodes = p.pods.div_ceil(p.local_pods.max(1)).max(2);
    let mut local_left = p.local_pods;
    while pod_index < p.pods {
        let ns = rng.pick(&ns_names).clone();
        let app = format!("app-{}", deployments.len());
        let tier = *rng.pick(&TIERS);
        let replicas = (1 + rng.below(50) as usize).min(p.pods - pod_index);
        let port = *rng.pick(&[80u16, 8080, 8443, 5432, 6379, 9000]);
        for r in 0..replicas {
            // Spread the node under test's pods over many deployments.
            let node =
                if local_left > 0 && rng.below((p.pods - pod_index) as u64) < local_left as u64 {
                    local_left -= 1;
                    "node-0".to_string()
                } else {
                    format!("node-{}", 1 + rng.below(nodes as u64 - 1))
                };
            let ip = pod_ip(pod_index);
            objects.push(Object::Pod(Pod {
                metadata: ObjectMeta {
                    name: Some(format!("{app}-{r}")),
                    namespace: Some(ns.clone()),
                    labels: labels(&[
                        ("app", &app),
                        ("tier", tier),
                        ("pod-template-hash", "abc123"),
                    ]),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    node_name: Some(node),
                    containers: vec![Container {
                        name: "main".into(),
                        ports: Some(vec![
                            ContainerPort {
                                name: Some("http".into()),
                                container_port: port as i32,
                                ..Default::default()
                            },
                            ContainerPort {
                                name: Some("metrics".into()),
                                container_port: 9090,
                                ..Default::default()
                            },
                        ]),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                status: Some(PodStatus {
                    phase: Some("Running".into()),
                    pod_ip: Some(ip.clone()),
                    pod_ips: Some(vec![PodIP { ip }]),
                    host_ip: Some("192.168.0.1".into()),
                    ..Default::default()
                }),
            }));
            pod_index += 1;
        }
        deployments.push((ns, app, replicas));
    }

    for i in 0..p.policies {
        let (ns, app, _) = rng.pick(&deployments).clone();
        let meta = ObjectMeta {
            name: Some(format!("pol-{i}")),
            namespace: Some(ns.clone()),
            ..Default::default()
        };
        let kind = rng.below(10);
        let spec = match kind {
            // Default deny for the namespace.
            0 => NetworkPolicySpec {
                pod_selector: Some(LabelSelector::default()),
                policy_types: Some(vec!["Ingress".into()]),
                ..Default::default()
            },
            // Tier to tier on a named port.
            1..=3 => NetworkPolicySpec {
                pod_selector: Some(match_labels(&[("app", &app)])),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(match_labels(&[("tier", *rng.pick(&TIERS))])),
                        ..Default::default()
                    }]),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::String("http".into())),
                        ..Default::default()
                    }]),
                }]),
                ..Default::default()
            },
            // Monitoring from another team's namespaces, AND-ed selectors.
            4..=5 => NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "tier".into(),
                        operator: "In".into(),
                        values: Some(vec!["backend".into(), "db".into()]),
                    }]),
                    ..Default::default()
                }),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        namespace_selector: Some(match_labels(&[("team", *rng.pick(&TEAMS))])),
                        pod_selector: Some(match_labels(&[("tier", "frontend")])),
                        ..Default::default()
                    }]),
                    ports: Some(vec![
                        NetworkPolicyPort {
                            port: Some(IntOrString::Int(9090)),
                            ..Default::default()
                        },
                        NetworkPolicyPort {
                            port: Some(IntOrString::Int(8000)),
                            end_port: Some(8100),
                            ..Default::default()
                        },
                    ]),
                }]),
                ..Default::default()
            },
            // Egress: DNS to kube-system, the cluster, and the internet minus private ranges.
            6..=7 => NetworkPolicySpec {
                pod_selector: Some(match_labels(&[("app", &app)])),
                policy_types: Some(vec!["Egress".into()]),
                egress: Some(vec![
                    NetworkPolicyEgressRule {
                        to: Some(vec![NetworkPolicyPeer {
                            namespace_selector: Some(match_labels(&[(
                                "kubernetes.io/metadata.name",
                                "kube-system",
                            )])),
                            pod_selector: Some(match_labels(&[("k8s-app", "kube-dns")])),
                            ..Default::default()
                        }]),
                        ports: Some(vec![
                            NetworkPolicyPort {
                                port: Some(IntOrString::Int(53)),
                                protocol: Some("UDP".into()),
                                ..Default::default()
                            },
                            NetworkPolicyPort {
                                port: Some(IntOrString::Int(53)),
                                protocol: Some("TCP".into()),
                                ..Default::default()
                            },
                        ]),
                    },
                    NetworkPolicyEgressRule {
                        to: Some(vec![NetworkPolicyPeer {
                            namespace_selector: Some(LabelSelector::default()),
                            ..Default::default()
                        }]),
                        ports: Some(vec![NetworkPolicyPort {
                            port: Some(IntOrString::String("http".into())),
                            ..Default::default()
                        }]),
                    },
                    NetworkPolicyEgressRule {
                        to: Some(vec![NetworkPolicyPeer {
                            ip_block: Some(IPBlock {
                                cidr: "0.0.0.0/0".into(),
                                except: Some(vec![
                                    "10.0.0.0/8".into(),
                                    "172.16.0.0/12".into(),
                                    "192.168.0.0/16".into(),
                                ]),
                            }),
                            ..Default::default()
                        }]),
                        ports: Some(vec![NetworkPolicyPort {
                            port: Some(IntOrString::Int(443)),
                            ..Default::default()
                        }]),
                    },
                ]),
                ..Default::default()
            },
            // Same-namespace apps by label, any port.
            _ => NetworkPolicySpec {
                pod_selector: Some(match_labels(&[("app", &app)])),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![
                        NetworkPolicyPeer {
                            pod_selector: Some(match_labels(&[("app", &rng.pick(&deployments).1)])),
                            ..Default::default()
                        },
                        NetworkPolicyPeer {
                            namespace_selector: Some(match_labels(&[("env", "prod")])),
                            ..Default::default()
                        },
                    ]),
                    ports: None,
                }]),
                ..Default::default()
            },
        };
        objects.push(Object::NetworkPolicy(NetworkPolicy {
            metadata: meta,
            spec: Some(spec),
        }));
    }
    Synthetic {
        objects,
        node: "node-0".into(),
    }
}
