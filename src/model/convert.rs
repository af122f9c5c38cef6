//! The one place where `k8s-openapi` objects become model values.
//!
//! Validation follows the API server's (`pkg/apis/networking/validation`) so that a manifests
//! directory and a real cluster mean the same thing; what the API server would reject is
//! reported and read fail-closed (see `docs/semantics.md`).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    Diagnostic, Direction, Effect, IpBlock, Kind, NamedPort, Namespace, NamespaceSel, Node,
    ObjectRef, Op, Peer, Pod, PodPhase, Policy, PortRange, PortSel, PortSpec, Protocol,
    Requirement, Rule, Selector, NAMESPACE_NAME_LABEL,
};

/// Field path and message of one problem.
type Problem = (String, String);

/// A rule's peers (`from` or `to`) and ports, as the API has them.
type RawRule<'a> = (
    Option<&'a Vec<net::NetworkPolicyPeer>>,
    Option<&'a Vec<net::NetworkPolicyPort>>,
);

pub(super) fn namespace(ns: &core::Namespace) -> Namespace {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    // The API server forces this label to the namespace's name; so do we.
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
    Namespace { name, labels }
}

/// A node's pod CIDRs (`spec.podCIDRs`, else `spec.podCIDR`) and addresses. A malformed CIDR
/// is reported and left out.
pub(super) fn node(node: &core::Node, diags: &mut Vec<Diagnostic>) -> Node {
    let name = node.metadata.name.clone().unwrap_or_default();
    let object = ObjectRef::new(Kind::Node, None, &node.metadata.name);
    let spec = node.spec.as_ref();
    let mut fields: Vec<(String, &str)> = Vec::new();
    match spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .filter(|c| !c.is_empty())
    {
        Some(cidrs) => fields.extend(
            cidrs
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("spec.podCIDRs[{i}]"), c.as_str())),
        ),
        None => fields.extend(
            spec.and_then(|s| s.pod_cidr.as_deref())
                .map(|c| ("spec.podCIDR".to_string(), c)),
        ),
    }
    let mut pod_cidrs = Vec::new();
    for (field, text) in fields {
        match parse_cidr(text) {
            Ok(net) if !pod_cidrs.contains(&net) => pod_cidrs.push(net),
            Ok(_) => {}
            Err(message) => diags.push(Diagnostic {
                object: object.clone(),
                field,
                message,
                effect: Effect::CidrIgnored,
            }),
        }
    }
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    Node {
        name,
        pod_cidrs,
        addresses,
    }
}

pub(super) fn pod(pod: &core::Pod, diags: &mut Vec<Diagnostic>) -> Pod {
    let object = ObjectRef::new(Kind::Pod, Some(&pod.metadata.namespace), &pod.metadata.name);
    let mut report = |field: String, message: String, effect: Effect| {
        diags.push(Diagnostic {
            object: object.clone(),
            field,
            message,
            effect,
        })
    };
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();

    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Pending") => PodPhase::Pending,
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        _ => PodPhase::Unknown,
    };

    let mut ip_fields: Vec<(String, &str)> = Vec::new();
    if let Some(s) = status {
        match s.pod_ips.as_deref() {
            Some(list) if !list.is_empty() => {
                for (i, ip) in list.iter().enumerate() {
                    ip_fields.push((format!("status.podIPs[{i}].ip"), ip.ip.as_str()));
                }
            }
            _ => {
                if let Some(ip) = s.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
                    ip_fields.push(("status.podIP".to_string(), ip));
                }
            }
        }
    }
    let ips = parse_ips(ip_fields, &mut report);

    let mut host_fields: Vec<(String, &str)> = Vec::new();
    if let Some(s) = status {
        if let Some(ip) = s.host_ip.as_deref().filter(|ip| !ip.is_empty()) {
            host_fields.push(("status.hostIP".to_string(), ip));
        }
        for (i, ip) in s.host_ips.iter().flatten().enumerate() {
            host_fields.push((format!("status.hostIPs[{i}].ip"), ip.ip.as_str()));
        }
    }
    let host_ips = parse_ips(host_fields, &mut report);

    let mut named_ports = Vec::new();
    for (c, container) in spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        for (p, port) in container.ports.iter().flatten().enumerate() {
            let Some(name) = &port.name else { continue };
            let field = format!("spec.containers[{c}].ports[{p}]");
            if let Err(message) = check_port_name(name) {
                report(format!("{field}.name"), message, Effect::PortIgnored);
                continue;
            }
            let protocol = match port.protocol.as_deref() {
                None => Protocol::Tcp,
                Some(s) => match Protocol::from_api(s) {
                    Some(p) => p,
                    None => {
                        report(
                            format!("{field}.protocol"),
                            unknown_protocol(s),
                            Effect::PortIgnored,
                        );
                        continue;
                    }
                },
            };
            let Some(number) = valid_port(port.container_port) else {
                report(
                    format!("{field}.containerPort"),
                    format!("{} is not a port number (1-65535)", port.container_port),
                    Effect::PortIgnored,
                );
                continue;
            };
            // Names are unique per pod by the API reference, but the API server checks only
            // within a container: the first declaration in spec order wins, as in
            // kube-network-policies.
            let earlier = named_ports
                .iter()
                .find(|p: &&NamedPort| p.name == *name && p.protocol == protocol);
            if let Some(first) = earlier {
                report(
                    format!("{field}.name"),
                    format!(
                        "port name {name:?} ({protocol}) is declared twice in the pod; \
                         the first declaration ({}) is used",
                        first.port
                    ),
                    Effect::PortIgnored,
                );
                continue;
            }
            named_ports.push(NamedPort {
                name: name.clone(),
                protocol,
                port: number,
            });
        }
    }

    Pod {
        namespace: object.namespace.clone().unwrap_or_default(),
        name: object.name.clone(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        node_name: spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        phase,
        ips,
        host_ips,
        named_ports,
    }
}

fn parse_ips(
    fields: Vec<(String, &str)>,
    report: &mut impl FnMut(String, String, Effect),
) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for (field, text) in fields {
        match text.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) => report(
                field,
                format!("invalid IP address {text:?}"),
                Effect::AddressIgnored,
            ),
        }
    }
    ips
}

pub(super) fn policy(np: &net::NetworkPolicy, diags: &mut Vec<Diagnostic>) -> Policy {
    let object = ObjectRef::new(
        Kind::NetworkPolicy,
        Some(&np.metadata.namespace),
        &np.metadata.name,
    );
    let namespace = object.namespace.clone().unwrap_or_default();
    let mut report = |field: String, message: String, effect: Effect| {
        diags.push(Diagnostic {
            object: object.clone(),
            field,
            message,
            effect,
        })
    };
    let default_spec = net::NetworkPolicySpec::default();
    let spec = np.spec.as_ref().unwrap_or(&default_spec);

    let pod_selector = {
        let mut problems = Vec::new();
        let selector = selector(
            spec.pod_selector.as_ref(),
            "spec.podSelector",
            &mut problems,
        );
        for (field, message) in problems {
            report(field, message, Effect::SelectsWholeNamespace);
        }
        selector
    };

    let (isolates_ingress, isolates_egress) = match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => {
            let mut ingress = false;
            let mut egress = false;
            let mut bad = false;
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    other => {
                        bad = true;
                        report(
                            format!("spec.policyTypes[{i}]"),
                            format!("unknown policy type {other:?} (expected Ingress or Egress)"),
                            Effect::IsolatesBothDirections,
                        );
                    }
                }
            }
            (ingress || bad, egress || bad)
        }
        // API defaulting: Ingress always, Egress when there are egress rules.
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    };

    let mut rules_for = |direction: Direction, isolated: bool| -> Option<Vec<Rule>> {
        if !isolated {
            return None;
        }
        let raw: Vec<RawRule> = match direction {
            Direction::Ingress => spec
                .ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                .collect(),
            Direction::Egress => spec
                .egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                .collect(),
        };
        let mut rules = Vec::new();
        for (index, (peers, ports)) in raw.into_iter().enumerate() {
            let mut problems = Vec::new();
            let rule = rule(direction, index, peers, ports, &namespace, &mut problems);
            if problems.is_empty() {
                rules.push(rule);
            }
            for (field, message) in problems {
                report(field, message, Effect::RuleIgnored);
            }
        }
        Some(rules)
    };
    let ingress = rules_for(Direction::Ingress, isolates_ingress);
    let egress = rules_for(Direction::Egress, isolates_egress);

    Policy {
        namespace: namespace.clone(),
        name: object.name.clone(),
        pod_selector,
        ingress,
        egress,
    }
}

fn rule(
    direction: Direction,
    index: usize,
    peers: Option<&Vec<net::NetworkPolicyPeer>>,
    ports: Option<&Vec<net::NetworkPolicyPort>>,
    namespace: &str,
    problems: &mut Vec<Problem>,
) -> Rule {
    let (list, peer_field) = match direction {
        Direction::Ingress => ("spec.ingress", "from"),
        Direction::Egress => ("spec.egress", "to"),
    };
    let base = format!("{list}[{index}]");

    let peers = peers.filter(|p| !p.is_empty()).map(|peers| {
        peers
            .iter()
            .enumerate()
            .filter_map(|(j, p)| peer(p, &format!("{base}.{peer_field}[{j}]"), namespace, problems))
            .collect()
    });

    let ports = ports.filter(|p| !p.is_empty()).map(|ports| {
        ports
            .iter()
            .enumerate()
            .filter_map(|(k, p)| port(p, &format!("{base}.ports[{k}]"), problems))
            .collect()
    });

    Rule {
        index,
        peers,
        ports,
    }
}

fn peer(
    p: &net::NetworkPolicyPeer,
    field: &str,
    namespace: &str,
    problems: &mut Vec<Problem>,
) -> Option<Peer> {
    let has_selector = p.pod_selector.is_some() || p.namespace_selector.is_some();
    match &p.ip_block {
        Some(_) if has_selector => {
            problems.push((
                field.to_string(),
                "ipBlock cannot be combined with podSelector or namespaceSelector".to_string(),
            ));
            None
        }
        Some(block) => ip_block(block, &format!("{field}.ipBlock"), problems).map(Peer::IpBlock),
        None if !has_selector => {
            problems.push((field.to_string(), "must specify a peer".to_string()));
            None
        }
        None => {
            let pods = selector(
                p.pod_selector.as_ref(),
                &format!("{field}.podSelector"),
                problems,
            );
            let namespaces = match &p.namespace_selector {
                None => Some(NamespaceSel::Own(namespace.to_string())),
                Some(s) => selector(Some(s), &format!("{field}.namespaceSelector"), problems)
                    .map(NamespaceSel::Matching),
            };
            Some(Peer::Pods {
                namespaces: namespaces?,
                pods: pods?,
            })
        }
    }
}

fn ip_block(block: &net::IPBlock, field: &str, problems: &mut Vec<Problem>) -> Option<IpBlock> {
    let cidr = match parse_cidr(&block.cidr) {
        Ok(cidr) => cidr,
        Err(message) => {
            problems.push((format!("{field}.cidr"), message));
            return None;
        }
    };
    let mut except = Vec::new();
    let mut ok = true;
    for (i, text) in block.except.iter().flatten().enumerate() {
        let f = format!("{field}.except[{i}]");
        match parse_cidr(text) {
            Ok(e) if cidr.contains(&e) && e.prefix_len() > cidr.prefix_len() => except.push(e),
            Ok(_) => {
                ok = false;
                problems.push((f, format!("{text:?} is not a strict subset of cidr {cidr}")));
            }
            Err(message) => {
                ok = false;
                problems.push((f, message));
            }
        }
    }
    except.sort();
    except.dedup();
    ok.then_some(IpBlock { cidr, except })
}

/// Parses `a.b.c.d/n` or an IPv6 prefix; host bits are cleared as Go's `net.ParseCIDR` does.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| format!("invalid CIDR {text:?}"))
}

fn port(p: &net::NetworkPolicyPort, field: &str, problems: &mut Vec<Problem>) -> Option<PortSpec> {
    let before = problems.len();
    let protocol = match p.protocol.as_deref() {
        None => Some(Protocol::Tcp),
        Some(s) => {
            let parsed = Protocol::from_api(s);
            if parsed.is_none() {
                problems.push((format!("{field}.protocol"), unknown_protocol(s)));
            }
            parsed
        }
    };
    let end_field = format!("{field}.endPort");
    let port = match (&p.port, p.end_port) {
        (None, None) => Some(PortSel::All),
        (None, Some(_)) => {
            problems.push((end_field, "endPort requires port".to_string()));
            None
        }
        (Some(IntOrString::Int(n)), end) => match valid_port(*n) {
            None => {
                problems.push((
                    format!("{field}.port"),
                    format!("{n} is not a port number (1-65535)"),
                ));
                None
            }
            Some(first) => match end {
                None => Some(PortSel::Range(PortRange::single(first))),
                Some(e) => match valid_port(e).filter(|e| *e >= first) {
                    Some(last) => Some(PortSel::Range(PortRange { first, last })),
                    None => {
                        problems.push((
                            end_field,
                            format!("{e} must be a port number between port ({first}) and 65535"),
                        ));
                        None
                    }
                },
            },
        },
        (Some(IntOrString::String(name)), end) => {
            let mut ok = true;
            if let Err(message) = check_port_name(name) {
                problems.push((format!("{field}.port"), message));
                ok = false;
            }
            if end.is_some() {
                problems.push((
                    end_field,
                    "endPort cannot be used with a named port".to_string(),
                ));
                ok = false;
            }
            ok.then(|| PortSel::Named(name.clone()))
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(PortSpec {
        protocol: protocol?,
        port: port?,
    })
}

/// `None` for a missing selector means "everything" only where the API says so; callers pass
/// `None` exactly there.
fn selector(
    s: Option<&LabelSelector>,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Option<Selector> {
    let Some(s) = s else {
        return Some(Selector::everything());
    };
    let before = problems.len();
    let mut requirements = Vec::new();
    for (key, value) in s.match_labels.iter().flatten() {
        requirements.push(Requirement {
            key: key.clone(),
            op: Op::In(BTreeSet::from([value.clone()])),
        });
    }
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
        let op = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                problems.push((
                    format!("{f}.values"),
                    format!("operator {} needs at least one value", e.operator),
                ));
                continue;
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                problems.push((
                    format!("{f}.values"),
                    format!("operator {} takes no values", e.operator),
                ));
                continue;
            }
            "In" => Op::In(values),
            "NotIn" => Op::NotIn(values),
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            other => {
                problems.push((
                    format!("{f}.operator"),
                    format!(
                        "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                    ),
                ));
                continue;
            }
        };
        requirements.push(Requirement {
            key: e.key.clone(),
            op,
        });
    }
    (problems.len() == before).then(|| Selector::new(requirements))
}

fn valid_port(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

fn unknown_protocol(s: &str) -> String {
    format!("unknown protocol {s:?} (expected TCP, UDP or SCTP)")
}

/// IANA_SVC_NAME (RFC 6335 §5.1), as the API server checks it: at most 15 characters of
/// `[a-z0-9-]`, at least one letter, no leading, trailing or doubled hyphen.
pub(super) fn check_port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid port name (IANA_SVC_NAME: 1-15 lower-case letters, digits \
             and single inner hyphens, with at least one letter)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Cluster, Object};

    fn policy_yaml(yaml: &str) -> (Policy, Vec<Diagnostic>) {
        let np: net::NetworkPolicy = serde_yaml::from_str(yaml).expect("test YAML parses");
        let mut diags = Vec::new();
        (policy(&np, &mut diags), diags)
    }

    const HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: ns}\n";

    #[test]
    fn policy_types_default_to_ingress_plus_egress_when_egress_rules_exist() {
        let (p, d) = policy_yaml(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  egress: [{{}}]\n"
        ));
        assert!(d.is_empty());
        assert_eq!(
            p.ingress,
            Some(vec![]),
            "egress-only policy without policyTypes isolates ingress"
        );
        assert_eq!(p.egress.map(|r| r.len()), Some(1));

        let (p, _) = policy_yaml(&format!("{HEAD}spec:\n  podSelector: {{}}\n  egress: []\n"));
        assert_eq!(p.egress, None, "egress: [] alone does not add Egress");
    }

    #[test]
    fn rules_of_a_direction_not_in_policy_types_are_ignored() {
        let (p, _) = policy_yaml(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  ingress: [{{}}]\n"
        ));
        assert_eq!(p.ingress, None);
        assert_eq!(p.egress, Some(vec![]));
    }

    #[test]
    fn empty_port_entry_means_all_tcp_ports() {
        let (p, _) = policy_yaml(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress: [{{ports: [{{}}]}}]\n"
        ));
        let rule = &p.ingress.expect("isolates ingress")[0];
        assert_eq!(
            rule.ports,
            Some(vec![PortSpec {
                protocol: Protocol::Tcp,
                port: PortSel::All
            }])
        );
        assert_eq!(rule.peers, None);
    }

    #[test]
    fn bad_rule_is_dropped_with_a_field_path_and_the_policy_still_isolates() {
        let (p, d) = policy_yaml(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 10.0.0.0/33}}}}]\n  - from: [{{podSelector: {{}}}}]\n"
        ));
        let rules = p.ingress.expect("still isolates ingress");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].index, 1);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].field, "spec.ingress[0].from[0].ipBlock.cidr");
        assert_eq!(d[0].effect, Effect::RuleIgnored);
        assert!(d[0]
            .to_string()
            .starts_with("NetworkPolicy ns/p: spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR"));
    }

    #[test]
    fn each_kind_of_bad_field_is_reported_on_its_path() {
        let cases = [
            ("ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]", "spec.ingress[0].from[0].ipBlock.except[0]"),
            ("ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]", "spec.ingress[0].from[0].ipBlock.except[0]"),
            ("ingress: [{ports: [{protocol: ICMP}]}]", "spec.ingress[0].ports[0].protocol"),
            ("ingress: [{ports: [{protocol: tcp}]}]", "spec.ingress[0].ports[0].protocol"),
            ("ingress: [{ports: [{port: Http_Port}]}]", "spec.ingress[0].ports[0].port"),
            ("ingress: [{ports: [{port: \"80\"}]}]", "spec.ingress[0].ports[0].port"),
            ("ingress: [{ports: [{port: 0}]}]", "spec.ingress[0].ports[0].port"),
            ("ingress: [{ports: [{port: 90, endPort: 80}]}]", "spec.ingress[0].ports[0].endPort"),
            ("ingress: [{ports: [{port: 90, endPort: 70000}]}]", "spec.ingress[0].ports[0].endPort"),
            ("ingress: [{ports: [{endPort: 80}]}]", "spec.ingress[0].ports[0].endPort"),
            ("ingress: [{ports: [{port: http, endPort: 80}]}]", "spec.ingress[0].ports[0].endPort"),
            ("egress: [{to: [{podSelector: {matchExpressions: [{key: a, operator: Equals, values: [x]}]}}]}]", "spec.egress[0].to[0].podSelector.matchExpressions[0].operator"),
            ("egress: [{to: [{namespaceSelector: {matchExpressions: [{key: a, operator: In}]}}]}]", "spec.egress[0].to[0].namespaceSelector.matchExpressions[0].values"),
            ("egress: [{to: [{podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}}]}]", "spec.egress[0].to[0].podSelector.matchExpressions[0].values"),
            ("egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]", "spec.egress[0].to[0]"),
            ("egress: [{to: [{}]}]", "spec.egress[0].to[0]"),
        ];
        for (rules, field) in cases {
            let (p, d) = policy_yaml(&format!("{HEAD}spec:\n  podSelector: {{}}\n  {rules}\n"));
            assert_eq!(
                d.iter().map(|d| d.field.as_str()).collect::<Vec<_>>(),
                vec![field],
                "{rules}"
            );
            assert_eq!(d[0].effect, Effect::RuleIgnored, "{rules}");
            let isolated = p
                .ingress
                .as_ref()
                .or(p.egress.as_ref())
                .expect("direction still isolated");
            assert!(isolated.is_empty(), "{rules}: the bad rule allows nothing");
        }
    }

    #[test]
    fn bad_pod_selector_selects_the_whole_namespace() {
        let (p, d) = policy_yaml(&format!(
            "{HEAD}spec:\n  podSelector: {{matchExpressions: [{{key: a, operator: in, values: [x]}}]}}\n  ingress: [{{}}]\n"
        ));
        assert_eq!(p.pod_selector, None);
        assert_eq!(d[0].effect, Effect::SelectsWholeNamespace);
        assert_eq!(d[0].field, "spec.podSelector.matchExpressions[0].operator");
        assert_eq!(
            p.ingress.map(|r| r.len()),
            Some(1),
            "valid rules still apply"
        );
    }

    #[test]
    fn unknown_policy_type_isolates_both_directions() {
        let (p, d) = policy_yaml(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  policyTypes: [Ingres]\n"
        ));
        assert_eq!(d[0].field, "spec.policyTypes[0]");
        assert_eq!((p.ingress, p.egress), (Some(vec![]), Some(vec![])));
    }

    #[test]
    fn except_host_bits_are_cleared_like_go_parse_cidr() {
        let (p, d) = policy_yaml(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress: [{{from: [{{ipBlock: {{cidr: 10.1.2.3/16}}}}]}}]\n"
        ));
        assert!(d.is_empty());
        let peers = p.ingress.expect("ingress")[0].peers.clone().expect("peers");
        assert_eq!(
            peers,
            vec![Peer::IpBlock(IpBlock {
                cidr: "10.1.0.0/16".parse().expect("cidr"),
                except: vec![]
            })]
        );
    }

    #[test]
    fn pod_ips_named_ports_and_bad_fields() {
        let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  nodeName: node-a
  containers:
  - name: c
    image: x
    ports:
    - {name: http, containerPort: 8080}
    - {name: dns, containerPort: 53, protocol: UDP}
    - {name: Bad_Name, containerPort: 81}
    - {containerPort: 82}
  - name: sidecar
    image: x
    ports:
    - {name: http, containerPort: 9000}
    - {name: http, containerPort: 9001, protocol: UDP}
status:
  phase: Running
  hostIP: 192.168.56.10
  podIP: 10.244.1.5
  podIPs: [{ip: 10.244.1.5}, {ip: "fd00::5"}, {ip: "not-an-ip"}]
"#;
        let p: core::Pod = serde_yaml::from_str(yaml).expect("parses");
        let (cluster, diags) = Cluster::from_objects([Object::Pod(p)]);
        let pod = cluster
            .pod("default", "web")
            .expect("defaults to namespace default");
        assert!(pod.is_policy_pod());
        assert_eq!(
            pod.ips,
            vec![
                "10.244.1.5".parse::<IpAddr>().expect("ip"),
                "fd00::5".parse().expect("ip")
            ]
        );
        assert_eq!(
            pod.resolve_port("http", Protocol::Tcp),
            Some(8080),
            "first declaration wins"
        );
        assert_eq!(pod.resolve_port("dns", Protocol::Udp), Some(53));
        assert_eq!(pod.resolve_port("dns", Protocol::Tcp), None);
        let fields: Vec<_> = diags.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            pod.resolve_port("http", Protocol::Udp),
            Some(9001),
            "same name, other protocol"
        );
        assert_eq!(
            fields,
            vec![
                "status.podIPs[2].ip",
                "spec.containers[0].ports[2].name",
                "spec.containers[1].ports[0].name"
            ]
        );
        assert_eq!(
            cluster.node_ips("node-a").into_iter().collect::<Vec<_>>(),
            vec!["192.168.56.10".parse::<IpAddr>().expect("ip")]
        );
    }

    #[test]
    fn port_names_follow_iana_svc_name() {
        for good in ["http", "h2c", "a-b", "x1234567890abcd"] {
            assert!(check_port_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "80",
            "HTTP",
            "a_b",
            "-a",
            "a-",
            "a--b",
            "x1234567890abcde",
        ] {
            assert!(check_port_name(bad).is_err(), "{bad}");
        }
    }
}
