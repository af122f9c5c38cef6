//! Cluster-wide verdicts: which node's ruleset sees a connection on which hook, and what each
//! decides. This is the path model of `docs/semantics.md`, shared by the tests (golden flows,
//! the oracle comparison) and by people asking "why is this allowed?".

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::compile::{compile_with, Options};
use crate::model::{Cluster, Diagnostic, Protocol};
use crate::ruleset::eval::{eval, Decision, Packet};
use crate::ruleset::{Hook, Ruleset};

/// What an address is, as far as the path is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A live, non-hostNetwork pod on this node.
    Pod {
        namespace: String,
        name: String,
        node: Option<String>,
    },
    /// One of this node's addresses (hostNetwork pods included).
    Node(String),
    /// An address of a node's pod CIDRs (its Node object's `spec.podCIDRs`) that no known
    /// pod has: a pod the cluster state does not show yet, on that node.
    PodCidr(String),
    /// Anything else.
    External,
}

/// One ruleset traversal on the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    pub node: String,
    pub hook: Hook,
    pub decision: Decision,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowVerdict {
    pub allowed: bool,
    pub src: Endpoint,
    pub dst: Endpoint,
    pub hops: Vec<Hop>,
}

/// The compiled ruleset of every node of a cluster, and where each address lives.
pub struct NodeRulesets {
    pub rulesets: BTreeMap<String, Ruleset>,
    pub diagnostics: Vec<Diagnostic>,
    endpoints: BTreeMap<IpAddr, Endpoint>,
    pod_cidrs: Vec<(IpNet, String)>,
}

impl NodeRulesets {
    /// Compiles the ruleset of every node some pod is bound to or a Node object names.
    pub fn compile(cluster: &Cluster) -> Self {
        NodeRulesets::compile_with(cluster, &Options::default())
    }

    /// The same, in the shape for a kernel with the given abilities.
    pub fn compile_with(cluster: &Cluster, options: &Options) -> Self {
        let mut rulesets = BTreeMap::new();
        let mut diagnostics = Vec::new();
        let mut names = cluster.node_names();
        names.extend(cluster.nodes().map(|n| n.name.as_str()));
        for node in names {
            let compiled = compile_with(cluster, node, options);
            diagnostics.extend(compiled.diagnostics);
            rulesets.insert(node.to_string(), compiled.ruleset);
        }
        let mut endpoints = BTreeMap::new();
        for node in cluster.node_names() {
            for ip in cluster.node_ips(node) {
                endpoints.insert(ip, Endpoint::Node(node.to_string()));
            }
        }
        // Pods win over node addresses; the first pod (by name) wins a duplicate address.
        for pod in cluster
            .pods()
            .filter(|p| p.is_policy_pod())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            for ip in &pod.ips {
                let ep = Endpoint::Pod {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    node: pod.node_name.clone(),
                };
                endpoints.insert(*ip, ep);
            }
        }
        let pod_cidrs = cluster
            .nodes()
            .flat_map(|n| n.pod_cidrs.iter().map(|c| (*c, n.name.clone())))
            .collect();
        NodeRulesets {
            rulesets,
            diagnostics,
            endpoints,
            pod_cidrs,
        }
    }

    pub fn endpoint(&self, ip: &IpAddr) -> Endpoint {
        if let Some(ep) = self.endpoints.get(ip) {
            return ep.clone();
        }
        match self.pod_cidrs.iter().find(|(c, _)| c.contains(ip)) {
            Some((_, node)) => Endpoint::PodCidr(node.clone()),
            None => Endpoint::External,
        }
    }

    /// The cluster-wide verdict for the first packet of a connection.
    pub fn flow(&self, src: IpAddr, dst: IpAddr, protocol: Protocol, port: u16) -> FlowVerdict {
        let packet = Packet::new_connection(src, dst, protocol, port);
        let src_ep = self.endpoint(&src);
        let dst_ep = self.endpoint(&dst);
        let mut hops: Vec<(String, Hook)> = Vec::new();
        let pod_node = |ep: &Endpoint| match ep {
            Endpoint::Pod { node, .. } => node.clone(),
            Endpoint::PodCidr(node) => Some(node.clone()),
            _ => None,
        };
        // Source side: the pod's own node sees it leave (forward), or arrive if it is for the
        // node itself (input).
        if let Some(n) = pod_node(&src_ep) {
            let hook = if dst_ep == Endpoint::Node(n.clone()) {
                Hook::Input
            } else {
                Hook::Forward
            };
            hops.push((n, hook));
        }
        // Destination side, when a different node (or no source hop) handles it.
        match &dst_ep {
            Endpoint::Pod { node: Some(m), .. } | Endpoint::PodCidr(m) => {
                let from_own_node = src_ep == Endpoint::Node(m.clone());
                let already = pod_node(&src_ep).as_ref() == Some(m);
                if !from_own_node && !already {
                    hops.push((m.clone(), Hook::Forward));
                }
            }
            Endpoint::Node(m) if pod_node(&src_ep).is_some_and(|n| n != *m) => {
                hops.push((m.clone(), Hook::Input));
            }
            _ => {}
        }
        let hops: Vec<Hop> = hops
            .into_iter()
            .map(|(node, hook)| {
                let decision = match self.rulesets.get(&node) {
                    Some(rs) => eval(rs, hook, &packet),
                    None => Decision {
                        accepted: true,
                        trace: vec![],
                    },
                };
                Hop {
                    node,
                    hook,
                    decision,
                }
            })
            .collect();
        FlowVerdict {
            allowed: hops.iter().all(|h| h.decision.accepted),
            src: src_ep,
            dst: dst_ep,
            hops,
        }
    }
}
