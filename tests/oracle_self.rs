//! The oracle's own tests: the subtle cases of docs/semantics.md, each asserted both ways so
//! that a wrong oracle fails; and the generator's determinism, validity and coverage.

mod support;

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

use support::gen;
use support::oracle::{self, Oracle, World};
use support::Proto::{self, Sctp, Tcp, Udp};

// ---------------------------------------------------------------------------------------------
// Builders

fn node_ip(node: &str) -> &'static str {
    match node {
        "node-a" => "192.168.56.10",
        "node-b" => "192.168.56.11",
        "node-a6" => "fd00:192:168:56::10",
        other => panic!("no such test node {other}"),
    }
}

/// A running pod with one IP (v4 or v6), on `node`, no container ports.
fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: Value) -> Pod {
    let node_name = node.trim_end_matches('6');
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node_name, "containers": [{"name": "c"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "hostIP": node_ip(node),
            "hostIPs": [{"ip": node_ip(node)}],
        },
    }))
    .expect("test pod is well-formed")
}

fn with_ports(mut pod: Pod, ports: Value) -> Pod {
    let containers = serde_json::from_value(ports).expect("test containers are well-formed");
    pod.spec.as_mut().expect("test pods have a spec").containers = containers;
    pod
}

fn with_phase(mut pod: Pod, phase: &str) -> Pod {
    pod.status.as_mut().expect("test pods have a status").phase = Some(phase.to_string());
    pod
}

fn host_network(mut pod: Pod) -> Pod {
    pod.spec
        .as_mut()
        .expect("test pods have a spec")
        .host_network = Some(true);
    pod
}

fn namespace(name: &str, labels: Value) -> Namespace {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    }))
    .expect("test namespace is well-formed")
}

fn policy(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .expect("test policy is well-formed")
}

fn world(namespaces: Vec<Namespace>, pods: Vec<Pod>, policies: Vec<NetworkPolicy>) -> World {
    World {
        namespaces,
        pods,
        policies,
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP literal")
}

fn ok(w: &World, src: &str, dst: &str, proto: Proto, port: u16) -> bool {
    oracle::allowed(w, ip(src), ip(dst), proto, port)
}

/// Two plain pods: A 10.244.0.2 (node-a, app=a) and B 10.244.1.2 (node-b, app=b).
fn two_pods() -> Vec<Pod> {
    vec![
        pod("ns", "a", "node-a", "10.244.0.2", json!({"app": "a"})),
        pod("ns", "b", "node-b", "10.244.1.2", json!({"app": "b"})),
    ]
}

const A: &str = "10.244.0.2";
const B: &str = "10.244.1.2";
const OUTSIDE: &str = "203.0.113.7";

// ---------------------------------------------------------------------------------------------
// Baseline and always-allowed

#[test]
fn no_policy_allows_everything() {
    let w = world(vec![], two_pods(), vec![]);
    assert!(ok(&w, A, B, Tcp, 80));
    assert!(ok(&w, B, A, Sctp, 9999));
    assert!(ok(&w, OUTSIDE, A, Udp, 53));
}

#[test]
fn deny_all_ingress_but_self_and_own_node_still_allowed() {
    let deny = policy("ns", "deny", json!({"podSelector": {}}));
    let w = world(vec![], two_pods(), vec![deny]);
    assert!(!ok(&w, B, A, Tcp, 80), "isolated for ingress, no rule");
    assert!(!ok(&w, OUTSIDE, A, Tcp, 80));
    assert!(ok(&w, A, A, Tcp, 80), "a pod reaching itself");
    assert!(ok(&w, "192.168.56.10", A, Tcp, 80), "node-a → its own pod");
    assert!(
        !ok(&w, "192.168.56.11", A, Tcp, 80),
        "node-b is not A's node"
    );
    assert!(ok(&w, A, OUTSIDE, Tcp, 80), "egress not isolated");
}

// ---------------------------------------------------------------------------------------------
// Label selectors

#[test]
fn notin_and_doesnotexist_match_a_missing_key_but_in_does_not() {
    let pods = vec![
        pod("ns", "nolabel", "node-a", "10.244.0.2", json!({})),
        pod("ns", "web", "node-a", "10.244.0.3", json!({"app": "web"})),
        pod("ns", "db", "node-a", "10.244.0.4", json!({"app": "db"})),
    ];
    let isolate = |expr: Value| {
        let p = policy(
            "ns",
            "p",
            json!({"podSelector": {"matchExpressions": [expr]}}),
        );
        world(vec![], pods.clone(), vec![p])
    };
    let isolated = |w: &World, dst: &str| !ok(w, OUTSIDE, dst, Tcp, 80);

    let w = isolate(json!({"key": "app", "operator": "NotIn", "values": ["web"]}));
    assert!(isolated(&w, "10.244.0.2"), "NotIn: missing key matches");
    assert!(
        !isolated(&w, "10.244.0.3"),
        "NotIn: listed value does not match"
    );
    assert!(isolated(&w, "10.244.0.4"), "NotIn: other value matches");

    let w = isolate(json!({"key": "app", "operator": "DoesNotExist"}));
    assert!(
        isolated(&w, "10.244.0.2"),
        "DoesNotExist: missing key matches"
    );
    assert!(!isolated(&w, "10.244.0.3"));

    let w = isolate(json!({"key": "app", "operator": "In", "values": ["web", "db"]}));
    assert!(
        !isolated(&w, "10.244.0.2"),
        "In: missing key does not match"
    );
    assert!(isolated(&w, "10.244.0.3"));
    assert!(isolated(&w, "10.244.0.4"));

    let w = isolate(json!({"key": "app", "operator": "Exists"}));
    assert!(!isolated(&w, "10.244.0.2"));
    assert!(isolated(&w, "10.244.0.4"));
}

#[test]
fn match_labels_with_empty_value_needs_the_key() {
    let pods = vec![
        pod("ns", "empty", "node-a", "10.244.0.2", json!({"env": ""})),
        pod("ns", "missing", "node-a", "10.244.0.3", json!({})),
        pod("ns", "prod", "node-a", "10.244.0.4", json!({"env": "prod"})),
    ];
    let p = policy(
        "ns",
        "p",
        json!({"podSelector": {"matchLabels": {"env": ""}}}),
    );
    let w = world(vec![], pods, vec![p]);
    assert!(
        !ok(&w, OUTSIDE, "10.244.0.2", Tcp, 80),
        "env=\"\" is selected"
    );
    assert!(
        ok(&w, OUTSIDE, "10.244.0.3", Tcp, 80),
        "no env key: not selected"
    );
    assert!(
        ok(&w, OUTSIDE, "10.244.0.4", Tcp, 80),
        "env=prod: not selected"
    );
}

#[test]
fn requirements_are_anded() {
    let pods = vec![
        pod(
            "ns",
            "both",
            "node-a",
            "10.244.0.2",
            json!({"app": "web", "tier": "front"}),
        ),
        pod("ns", "one", "node-a", "10.244.0.3", json!({"app": "web"})),
    ];
    let p = policy(
        "ns",
        "p",
        json!({"podSelector": {
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "Exists"}],
        }}),
    );
    let w = world(vec![], pods, vec![p]);
    assert!(!ok(&w, OUTSIDE, "10.244.0.2", Tcp, 80));
    assert!(ok(&w, OUTSIDE, "10.244.0.3", Tcp, 80));
}

// ---------------------------------------------------------------------------------------------
// Rules: [] vs [{}], peers, namespaces

#[test]
fn empty_rule_list_denies_and_empty_rule_allows() {
    let deny = policy("ns", "p", json!({"podSelector": {}, "ingress": []}));
    let w = world(vec![], two_pods(), vec![deny]);
    assert!(!ok(&w, B, A, Tcp, 80), "ingress: [] allows nothing");

    let allow = policy("ns", "p", json!({"podSelector": {}, "ingress": [{}]}));
    let w = world(vec![], two_pods(), vec![allow]);
    assert!(ok(&w, B, A, Udp, 53), "ingress: [{{}}] allows everything");
    assert!(ok(&w, OUTSIDE, A, Sctp, 9999));

    let from_empty = policy(
        "ns",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [], "ports": [{"port": 80}]}]}),
    );
    let w = world(vec![], two_pods(), vec![from_empty]);
    assert!(ok(&w, OUTSIDE, A, Tcp, 80), "from: [] = every source");
    assert!(!ok(&w, OUTSIDE, A, Tcp, 81), "but only the listed port");

    let egress_deny = policy(
        "ns",
        "p",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": []}),
    );
    let w = world(vec![], two_pods(), vec![egress_deny]);
    assert!(!ok(&w, A, OUTSIDE, Tcp, 80));
    assert!(
        ok(&w, OUTSIDE, A, Tcp, 80),
        "Egress-only policyTypes: ingress open"
    );
}

#[test]
fn pod_selector_peer_stays_in_the_policy_namespace_and_namespace_selector_widens() {
    let pods = vec![
        pod("ns", "target", "node-a", "10.244.0.2", json!({"app": "t"})),
        pod("ns", "web", "node-a", "10.244.0.3", json!({"app": "web"})),
        pod(
            "other",
            "web",
            "node-b",
            "10.244.1.3",
            json!({"app": "web"}),
        ),
        pod(
            "implicit",
            "web",
            "node-b",
            "10.244.1.4",
            json!({"app": "web"}),
        ),
    ];
    let namespaces = vec![
        namespace("ns", json!({"team": "red"})),
        namespace("other", json!({"team": "blue"})),
    ];
    let rule = |peer: Value| {
        let p = policy(
            "ns",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "t"}}, "ingress": [{"from": [peer]}]}),
        );
        world(namespaces.clone(), pods.clone(), vec![p])
    };
    let t = "10.244.0.2";

    let w = rule(json!({"podSelector": {"matchLabels": {"app": "web"}}}));
    assert!(ok(&w, "10.244.0.3", t, Tcp, 80));
    assert!(
        !ok(&w, "10.244.1.3", t, Tcp, 80),
        "podSelector alone: own namespace only"
    );

    let w = rule(json!({"namespaceSelector": {}}));
    assert!(
        ok(&w, "10.244.1.3", t, Tcp, 80),
        "namespaceSelector {{}}: every namespace"
    );
    assert!(
        ok(&w, "10.244.1.4", t, Tcp, 80),
        "including one without an object"
    );
    assert!(!ok(&w, OUTSIDE, t, Tcp, 80), "but no outside address");

    let w = rule(json!({"namespaceSelector": {"matchLabels": {"team": "blue"}}}));
    assert!(ok(&w, "10.244.1.3", t, Tcp, 80));
    assert!(!ok(&w, "10.244.0.3", t, Tcp, 80));

    let w = rule(json!({"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "implicit"}}}));
    assert!(
        ok(&w, "10.244.1.4", t, Tcp, 80),
        "implicit namespace has the name label"
    );
    assert!(!ok(&w, "10.244.1.3", t, Tcp, 80));

    let w = rule(json!({"namespaceSelector": {"matchExpressions": [
        {"key": "team", "operator": "DoesNotExist"}]}}));
    assert!(
        ok(&w, "10.244.1.4", t, Tcp, 80),
        "implicit namespace has no other label"
    );
    assert!(!ok(&w, "10.244.1.3", t, Tcp, 80));

    // Both selectors in one peer: AND.
    let w = rule(json!({
        "namespaceSelector": {"matchLabels": {"team": "blue"}},
        "podSelector": {"matchLabels": {"app": "web"}},
    }));
    assert!(ok(&w, "10.244.1.3", t, Tcp, 80));
    assert!(
        !ok(&w, "10.244.0.3", t, Tcp, 80),
        "right pod, wrong namespace"
    );
    assert!(!ok(&w, "10.244.1.4", t, Tcp, 80));
}

#[test]
fn policies_add_up() {
    let one = policy(
        "ns",
        "one",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}),
    );
    let two = policy(
        "ns",
        "two",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 443}]}]}),
    );
    let w = world(vec![], two_pods(), vec![one.clone(), two.clone()]);
    assert!(ok(&w, B, A, Tcp, 80));
    assert!(ok(&w, B, A, Tcp, 443));
    assert!(!ok(&w, B, A, Tcp, 81));
    let w = world(vec![], two_pods(), vec![two, one]);
    assert!(ok(&w, B, A, Tcp, 80), "order never matters");
}

#[test]
fn egress_and_ingress_both_apply() {
    let egress = policy(
        "ns",
        "egress",
        json!({"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"ports": [{"port": 80}]}]}),
    );
    let ingress = policy(
        "ns",
        "ingress",
        json!({"podSelector": {"matchLabels": {"app": "b"}},
               "ingress": [{"ports": [{"port": 80}, {"port": 443}]}]}),
    );
    let w = world(vec![], two_pods(), vec![egress, ingress]);
    assert!(ok(&w, A, B, Tcp, 80));
    assert!(!ok(&w, A, B, Tcp, 443), "egress of A refuses");
    assert!(!ok(&w, OUTSIDE, B, Tcp, 81), "ingress of B refuses");
    assert!(ok(&w, OUTSIDE, B, Tcp, 443));
}

// ---------------------------------------------------------------------------------------------
// Ports

#[test]
fn ports_absent_vs_empty_entry() {
    let rule = |ports: Value| {
        let p = policy(
            "ns",
            "p",
            json!({"podSelector": {}, "ingress": [{"ports": ports}]}),
        );
        world(vec![], two_pods(), vec![p])
    };
    let w = rule(json!([{}]));
    assert!(ok(&w, B, A, Tcp, 9999), "[{{}}] = every TCP port");
    assert!(!ok(&w, B, A, Udp, 53), "[{{}}] = TCP only");
    assert!(!ok(&w, B, A, Sctp, 80));

    let w = rule(json!([]));
    assert!(ok(&w, B, A, Udp, 53), "[] = every port and protocol");

    let w = rule(Value::Null);
    assert!(ok(&w, B, A, Sctp, 9999), "absent = every port and protocol");

    let w = rule(json!([{"protocol": "UDP"}]));
    assert!(ok(&w, B, A, Udp, 9999));
    assert!(!ok(&w, B, A, Tcp, 9999));

    let w = rule(json!([{"port": 53}]));
    assert!(ok(&w, B, A, Tcp, 53), "protocol defaults to TCP");
    assert!(!ok(&w, B, A, Udp, 53));
}

#[test]
fn end_port_is_an_inclusive_range() {
    let p = policy(
        "ns",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [
            {"protocol": "SCTP", "port": 80, "endPort": 443}]}]}),
    );
    let w = world(vec![], two_pods(), vec![p]);
    assert!(!ok(&w, B, A, Sctp, 79));
    assert!(ok(&w, B, A, Sctp, 80));
    assert!(ok(&w, B, A, Sctp, 443));
    assert!(!ok(&w, B, A, Sctp, 444));
    assert!(!ok(&w, B, A, Tcp, 100), "range is SCTP only");
}

#[test]
fn named_ports_ingress_uses_target_egress_uses_destination() {
    // A declares http=80/TCP, dns=53/UDP; B declares http=8080/TCP, dns=53/TCP.
    let a = with_ports(
        pod("ns", "a", "node-a", A, json!({"app": "a"})),
        json!([{"name": "c", "ports": [
            {"name": "http", "containerPort": 80},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]),
    );
    let b = with_ports(
        pod("ns", "b", "node-b", B, json!({"app": "b"})),
        json!([
            {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]},
            {"name": "d", "ports": [{"name": "dns", "containerPort": 53, "protocol": "TCP"}]},
        ]),
    );
    let hostnet = with_ports(
        host_network(pod(
            "ns",
            "h",
            "node-b",
            "192.168.56.11",
            json!({"app": "h"}),
        )),
        json!([{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}]),
    );
    let pods = vec![a, b, hostnet];

    // Ingress on every pod: only `http`.
    let ingress = policy(
        "ns",
        "in",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}),
    );
    let w = world(vec![], pods.clone(), vec![ingress]);
    assert!(ok(&w, OUTSIDE, A, Tcp, 80), "A's http is 80");
    assert!(!ok(&w, OUTSIDE, A, Tcp, 8080));
    assert!(ok(&w, OUTSIDE, B, Tcp, 8080), "B's http is 8080");
    assert!(
        !ok(&w, OUTSIDE, B, Tcp, 80),
        "not the source's or anyone else's number"
    );
    assert!(!ok(&w, OUTSIDE, A, Udp, 80), "the entry is TCP");

    // Egress from A only: `http` resolved on the destination.
    let egress = policy(
        "ns",
        "out",
        json!({"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"ports": [{"port": "http"}, {"port": "dns", "protocol": "UDP"}]}]}),
    );
    let w = world(vec![], pods.clone(), vec![egress]);
    assert!(ok(&w, A, B, Tcp, 8080), "B's http");
    assert!(
        !ok(&w, A, B, Tcp, 80),
        "A's own http number does not count on egress"
    );
    assert!(
        !ok(&w, A, OUTSIDE, Tcp, 80),
        "outside: no pod, named port matches nothing"
    );
    assert!(
        !ok(&w, A, "192.168.56.11", Tcp, 80),
        "hostNetwork destination: named port matches nothing"
    );
    assert!(
        !ok(&w, A, B, Udp, 53),
        "B's dns is TCP, the entry wants UDP"
    );
    assert!(!ok(&w, A, B, Tcp, 53), "protocol mismatch the other way");

    // Same name, different protocols on two containers: each resolves separately.
    let dns_any = policy(
        "ns",
        "dns",
        json!({"podSelector": {}, "ingress": [{"ports": [
            {"port": "dns", "protocol": "TCP"}, {"port": "dns", "protocol": "UDP"}]}]}),
    );
    let w = world(vec![], pods, vec![dns_any]);
    assert!(ok(&w, OUTSIDE, A, Udp, 53));
    assert!(!ok(&w, OUTSIDE, A, Tcp, 53), "A has no dns/TCP");
    assert!(ok(&w, OUTSIDE, B, Tcp, 53));
    assert!(!ok(&w, OUTSIDE, B, Udp, 53), "B has no dns/UDP");
}

#[test]
fn container_ports_with_invalid_name_or_protocol_are_ignored() {
    let a = with_ports(
        pod("ns", "a", "node-a", A, json!({})),
        json!([
            {"name": "c", "ports": [{"name": "http", "containerPort": 80, "protocol": "tcp"}]},
            {"name": "d", "ports": [{"name": "http", "containerPort": 81}]},
        ]),
    );
    let p = policy(
        "ns",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}),
    );
    let w = world(vec![], vec![a], vec![p]);
    assert!(!ok(&w, OUTSIDE, A, Tcp, 80), "protocol \"tcp\" is not TCP");
    assert!(ok(&w, OUTSIDE, A, Tcp, 81));
}

// ---------------------------------------------------------------------------------------------
// policyTypes

#[test]
fn policy_types_default_from_the_rules() {
    // Egress rules only, no policyTypes: isolates ingress (deny) and egress (per the rules).
    let p = policy(
        "ns",
        "p",
        json!({"podSelector": {"matchLabels": {"app": "a"}},
               "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}),
    );
    let w = world(vec![], two_pods(), vec![p]);
    assert!(
        !ok(&w, B, A, Tcp, 80),
        "egress-only policy isolates ingress too"
    );
    assert!(ok(&w, A, B, Udp, 53));
    assert!(!ok(&w, A, B, Tcp, 80), "egress isolated by its rule");

    // `egress: []` without policyTypes: no egress isolation.
    let p = policy(
        "ns",
        "p",
        json!({"podSelector": {}, "ingress": [{}], "egress": []}),
    );
    let w = world(vec![], two_pods(), vec![p]);
    assert!(ok(&w, A, OUTSIDE, Tcp, 80));

    // `policyTypes: []` behaves like absent.
    let p = policy(
        "ns",
        "p",
        json!({"podSelector": {}, "policyTypes": [], "egress": [{"ports": [{"port": 53}]}]}),
    );
    let w = world(vec![], two_pods(), vec![p]);
    assert!(!ok(&w, OUTSIDE, A, Tcp, 80));
    assert!(!ok(&w, A, OUTSIDE, Tcp, 80));
    assert!(ok(&w, A, OUTSIDE, Tcp, 53));

    // Rules for a direction not in policyTypes are ignored.
    let p = policy(
        "ns",
        "p",
        json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}],
               "egress": [{"ports": [{"port": 53}]}]}),
    );
    let w = world(vec![], two_pods(), vec![p]);
    assert!(
        ok(&w, A, OUTSIDE, Tcp, 80),
        "egress rules ignored, egress open"
    );

    // A policy without spec = podSelector {} and deny all ingress.
    let mut p = policy("ns", "p", json!({}));
    p.spec = None;
    let w = world(vec![], two_pods(), vec![p]);
    assert!(!ok(&w, OUTSIDE, A, Tcp, 80));
    assert!(ok(&w, A, OUTSIDE, Tcp, 80));
}

#[test]
fn unknown_policy_type_isolates_both_directions() {
    let p = policy(
        "ns",
        "p",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "ingress"],
               "ingress": [{"ports": [{"port": 80}]}]}),
    );
    let w = world(vec![], two_pods(), vec![p]);
    assert!(
        !ok(&w, A, OUTSIDE, Tcp, 80),
        "egress isolated, no egress rule"
    );
    assert!(
        ok(&w, OUTSIDE, A, Tcp, 80),
        "its valid ingress rule still applies"
    );
    assert!(!ok(&w, OUTSIDE, A, Tcp, 81));

    // DECISION: its egress rules apply too.
    let p = policy(
        "ns",
        "p",
        json!({"podSelector": {}, "policyTypes": ["Bogus"],
               "egress": [{"ports": [{"port": 53}]}]}),
    );
    let w = world(vec![], two_pods(), vec![p]);
    assert!(ok(&w, A, OUTSIDE, Tcp, 53));
    assert!(!ok(&w, A, OUTSIDE, Tcp, 80));
    assert!(!ok(&w, OUTSIDE, A, Tcp, 53), "ingress isolated too");
}

// ---------------------------------------------------------------------------------------------
// ipBlock

#[test]
fn ip_block_except_and_families() {
    let pods = vec![
        pod("ns", "t", "node-a", "10.244.0.2", json!({"app": "t"})),
        pod("ns", "t6", "node-a6", "fd00:10:244::2", json!({"app": "t"})),
        pod("ns", "x", "node-b", "10.244.1.2", json!({})),
        pod("ns", "y", "node-b", "10.244.2.2", json!({})),
    ];
    let rule = |block: Value| {
        let p = policy(
            "ns",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "t"}},
                   "ingress": [{"from": [{"ipBlock": block}]}]}),
        );
        world(vec![], pods.clone(), vec![p])
    };
    let t = "10.244.0.2";
    let t6 = "fd00:10:244::2";

    let w = rule(json!({"cidr": "10.244.0.0/16", "except": ["10.244.1.0/24"]}));
    assert!(
        ok(&w, "10.244.2.2", t, Tcp, 80),
        "in cidr, outside except (a pod IP)"
    );
    assert!(!ok(&w, "10.244.1.2", t, Tcp, 80), "inside except");
    assert!(!ok(&w, OUTSIDE, t, Tcp, 80), "outside cidr");

    let w = rule(json!({"cidr": "0.0.0.0/0", "except": ["10.244.0.0/16"]}));
    assert!(ok(&w, OUTSIDE, t, Tcp, 80));
    assert!(
        ok(&w, "192.168.56.11", t, Tcp, 80),
        "node IPs match ipBlocks"
    );
    assert!(!ok(&w, "10.244.2.2", t, Tcp, 80));
    assert!(
        !ok(&w, "2001:db8::7", t6, Tcp, 80),
        "v4 cidr never matches v6"
    );

    let w = rule(json!({"cidr": "::/0"}));
    assert!(ok(&w, "2001:db8::7", t6, Tcp, 80));
    assert!(!ok(&w, OUTSIDE, t, Tcp, 80), "v6 cidr never matches v4");

    // DECISION: host bits are masked off.
    let w = rule(json!({"cidr": "10.244.1.77/16"}));
    assert!(ok(&w, "10.244.2.2", t, Tcp, 80));
    assert!(!ok(&w, OUTSIDE, t, Tcp, 80));
}

// ---------------------------------------------------------------------------------------------
// Who is who: hostNetwork, finished and pending pods

#[test]
fn host_network_pods_are_neither_targets_nor_selected_peers() {
    let h = host_network(pod(
        "ns",
        "h",
        "node-b",
        "192.168.56.11",
        json!({"app": "h"}),
    ));
    let mut pods = two_pods();
    pods.push(h);
    let deny = policy("ns", "deny", json!({"podSelector": {}}));
    let w = world(vec![], pods.clone(), vec![deny]);
    assert!(
        ok(&w, A, "192.168.56.11", Tcp, 80),
        "hostNetwork pod not a target"
    );
    assert!(!ok(&w, A, B, Tcp, 80), "ordinary pod is a target");
    assert!(
        ok(&w, "192.168.56.11", B, Tcp, 80),
        "hostNetwork pod = node-b reaching its pod"
    );
    assert!(
        !ok(&w, "192.168.56.11", A, Tcp, 80),
        "node-b is not A's node"
    );

    let egress = |peer: Value| {
        let p = policy(
            "ns",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [peer]}]}),
        );
        world(vec![], pods.clone(), vec![p])
    };
    let w = egress(json!({"podSelector": {}}));
    assert!(ok(&w, A, B, Tcp, 80));
    assert!(
        !ok(&w, A, "192.168.56.11", Tcp, 80),
        "podSelector never selects hostNetwork"
    );
    let w = egress(json!({"namespaceSelector": {}}));
    assert!(!ok(&w, A, "192.168.56.11", Tcp, 80));
    let w = egress(json!({"ipBlock": {"cidr": "192.168.56.0/24"}}));
    assert!(
        ok(&w, A, "192.168.56.11", Tcp, 80),
        "ipBlock matches the node IP"
    );
    assert!(!ok(&w, A, B, Tcp, 80));
    // A pod's egress governs pod → own node too.
    assert!(ok(&w, A, "192.168.56.10", Tcp, 80));
    let w = egress(json!({"ipBlock": {"cidr": "10.0.0.0/8"}}));
    assert!(!ok(&w, A, "192.168.56.10", Tcp, 80));
}

#[test]
fn finished_and_ipless_pods_are_not_live() {
    let failed = with_phase(
        pod("ns", "old", "node-a", "10.244.0.9", json!({"app": "a"})),
        "Failed",
    );
    let done = with_phase(
        pod("ns", "done", "node-a", "10.244.0.8", json!({"app": "a"})),
        "Succeeded",
    );
    // A failed pod holding B's IP: B is still B.
    let ghost_of_b = with_phase(
        pod("ns", "ghost", "node-b", B, json!({"app": "a"})),
        "Failed",
    );
    let mut pending = pod("ns", "pending", "node-a", "10.244.0.7", json!({"app": "a"}));
    let status = pending.status.as_mut().expect("status");
    status.phase = Some("Pending".to_string());
    status.pod_ip = None;
    status.pod_ips = None;
    let mut pods = vec![failed, done, ghost_of_b, pending];
    pods.extend(two_pods());

    let deny = policy(
        "ns",
        "deny",
        json!({"podSelector": {"matchLabels": {"app": "a"}}}),
    );
    let w = world(vec![], pods.clone(), vec![deny]);
    assert!(
        ok(&w, OUTSIDE, "10.244.0.9", Tcp, 80),
        "Failed pod is not a target"
    );
    assert!(
        ok(&w, OUTSIDE, "10.244.0.8", Tcp, 80),
        "Succeeded pod is not a target"
    );
    assert!(
        ok(&w, OUTSIDE, B, Tcp, 80),
        "B (app=b) is not selected despite the ghost"
    );
    assert!(!ok(&w, OUTSIDE, A, Tcp, 80));

    let allow_a = policy(
        "ns",
        "p",
        json!({"podSelector": {"matchLabels": {"app": "b"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}]}]}),
    );
    let w = world(vec![], pods, vec![allow_a]);
    assert!(ok(&w, A, B, Tcp, 80));
    assert!(!ok(&w, "10.244.0.9", B, Tcp, 80), "Failed pod is no peer");
    assert!(
        !ok(&w, "10.244.0.8", B, Tcp, 80),
        "Succeeded pod is no peer"
    );
}

#[test]
fn unparsable_pod_ips_are_ignored() {
    let mut broken = pod("ns", "broken", "node-a", "10.244.0.5", json!({"app": "a"}));
    let status = broken.status.as_mut().expect("status");
    status.pod_ip = Some("10.244.0.300".to_string());
    status.pod_ips = Some(vec![k8s_openapi::api::core::v1::PodIP {
        ip: "10.244.0.300".to_string(),
    }]);
    let mut half = pod("ns", "half", "node-a", "10.244.0.6", json!({"app": "a"}));
    half.status
        .as_mut()
        .expect("status")
        .pod_ips
        .as_mut()
        .expect("podIPs")
        .push(k8s_openapi::api::core::v1::PodIP {
            ip: "nonsense".to_string(),
        });
    let deny = policy("ns", "deny", json!({"podSelector": {}}));
    let w = world(vec![], vec![broken, half], vec![deny]);
    assert!(
        !ok(&w, OUTSIDE, "10.244.0.6", Tcp, 80),
        "valid IP of a half-broken pod"
    );
    // The broken pod has no valid IP: nothing is isolated at its intended address.
    assert!(ok(&w, OUTSIDE, "10.244.0.5", Tcp, 80));
}

// ---------------------------------------------------------------------------------------------
// Fail closed

/// Each invalid field makes an otherwise allow-everything rule allow nothing, while the
/// policy still isolates; a second, valid policy keeps working.
#[test]
fn invalid_rule_allows_nothing_but_still_isolates() {
    let bad_peers = [
        json!({"ipBlock": {"cidr": "0.0.0.0/0"}, "podSelector": {}}),
        json!({"ipBlock": {"cidr": "0.0.0.0/0"}, "namespaceSelector": {}}),
        json!({}),
        json!({"ipBlock": {"cidr": "10.0.0.0/33"}}),
        json!({"ipBlock": {"cidr": "10.0.0.0"}}),
        json!({"ipBlock": {"cidr": ""}}),
        json!({"ipBlock": {"cidr": "0.0.0.0/0", "except": ["garbage"]}}),
        json!({"ipBlock": {"cidr": "0.0.0.0/0", "except": ["fd00::/64"]}}),
        json!({"ipBlock": {"cidr": "0.0.0.0/0", "except": ["0.0.0.0/0"]}}),
        json!({"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.0.0.0/8"]}}),
        json!({"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.245.0.0/24"]}}),
        json!({"podSelector": {"matchExpressions": [
            {"key": "app", "operator": "in", "values": ["a"]}]}}),
        json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}),
        json!({"namespaceSelector": {"matchExpressions": [
            {"key": "app", "operator": "NotIn", "values": []}]}}),
        json!({"namespaceSelector": {"matchExpressions": [
            {"key": "app", "operator": "Exists", "values": ["x"]}]}}),
    ];
    let bad_ports = [
        json!({"protocol": "tcp"}),
        json!({"protocol": "ICMP"}),
        json!({"protocol": ""}),
        json!({"port": 0}),
        json!({"port": 65536}),
        json!({"port": "HTTP"}),
        json!({"port": "80"}),
        json!({"port": "-web"}),
        json!({"port": "web-"}),
        json!({"port": "we--b"}),
        json!({"port": "abcdefghijklmnop"}),
        json!({"port": ""}),
        json!({"endPort": 90}),
        json!({"port": "http", "endPort": 90}),
        json!({"port": 90, "endPort": 80}),
        json!({"port": 90, "endPort": 65536}),
    ];
    let check = |rule: Value, what: &str| {
        // The rule would allow everything if it were valid: a valid wide peer/port next to
        // the invalid one.
        let bad = policy(
            "ns",
            "bad",
            json!({"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [rule]}),
        );
        let w = world(vec![], two_pods(), vec![bad.clone()]);
        assert!(
            !ok(&w, B, A, Tcp, 80),
            "{what}: invalid rule must allow nothing"
        );
        assert!(!ok(&w, OUTSIDE, A, Tcp, 80), "{what}");
        assert!(ok(&w, A, B, Tcp, 80), "{what}: other pods unaffected");
        let good = policy(
            "ns",
            "good",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}),
        );
        let w = world(vec![], two_pods(), vec![bad, good]);
        assert!(ok(&w, B, A, Tcp, 80), "{what}: a valid policy still allows");
        assert!(!ok(&w, B, A, Tcp, 81), "{what}");
    };
    for peer in bad_peers {
        let what = format!("peer {peer}");
        check(
            json!({"from": [{"podSelector": {}}, {"ipBlock": {"cidr": "0.0.0.0/0"}}, peer]}),
            &what,
        );
    }
    for port in bad_ports {
        let what = format!("port {port}");
        check(json!({"ports": [{}, {"protocol": "UDP"}, port]}), &what);
    }
    // The same shapes made valid do allow: the test above is not vacuous.
    let fine = policy(
        "ns",
        "fine",
        json!({"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{
            "from": [{"podSelector": {}}, {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.245.0.0/16"]}}],
            "ports": [{}, {"protocol": "UDP"}, {"port": 90, "endPort": 90}, {"port": "a-1"}]}]}),
    );
    let w = world(vec![], two_pods(), vec![fine]);
    assert!(ok(&w, B, A, Tcp, 80));
    assert!(ok(&w, OUTSIDE, A, Tcp, 80));
}

#[test]
fn invalid_rule_counts_for_policy_types_defaulting() {
    // An invalid egress rule is still an egress rule: Egress is isolated, nothing allowed.
    let p = policy(
        "ns",
        "p",
        json!({"podSelector": {}, "ingress": [{}], "egress": [{"ports": [{"port": 0}]}]}),
    );
    let w = world(vec![], two_pods(), vec![p]);
    assert!(!ok(&w, A, OUTSIDE, Tcp, 80));
    assert!(ok(&w, OUTSIDE, A, Tcp, 80));
}

#[test]
fn invalid_pod_selector_selects_the_whole_namespace() {
    let mut pods = two_pods();
    pods.push(pod(
        "other",
        "c",
        "node-a",
        "10.244.0.3",
        json!({"app": "b"}),
    ));
    let p = policy(
        "ns",
        "p",
        json!({"podSelector": {"matchExpressions": [
                   {"key": "app", "operator": "In", "values": ["nothing-has-this"]},
                   {"key": "app", "operator": "Exists", "values": ["x"]}]},
               "ingress": [{"ports": [{"port": 443}]}]}),
    );
    let w = world(vec![], pods, vec![p]);
    assert!(!ok(&w, OUTSIDE, A, Tcp, 80), "selects every pod of ns");
    assert!(!ok(&w, OUTSIDE, B, Tcp, 80));
    assert!(ok(&w, OUTSIDE, B, Tcp, 443), "its valid rules still apply");
    assert!(
        ok(&w, OUTSIDE, "10.244.0.3", Tcp, 80),
        "other namespaces untouched"
    );
}

// ---------------------------------------------------------------------------------------------
// Node IPs, dual stack, default namespace

#[test]
fn node_reaching_own_pods_over_each_family() {
    let mut p = pod("ns", "d", "node-a", "10.244.0.2", json!({}));
    let status = p.status.as_mut().expect("status");
    status.pod_ips = Some(vec![
        k8s_openapi::api::core::v1::PodIP {
            ip: "10.244.0.2".to_string(),
        },
        k8s_openapi::api::core::v1::PodIP {
            ip: "fd00:10:244::2".to_string(),
        },
    ]);
    status.host_ips = Some(vec![
        k8s_openapi::api::core::v1::HostIP {
            ip: "192.168.56.10".to_string(),
        },
        k8s_openapi::api::core::v1::HostIP {
            ip: "fd00:192:168:56::10".to_string(),
        },
    ]);
    let deny = policy("ns", "deny", json!({"podSelector": {}}));
    let w = world(vec![], vec![p], vec![deny]);
    assert!(ok(&w, "fd00:192:168:56::10", "fd00:10:244::2", Tcp, 80));
    assert!(ok(&w, "192.168.56.10", "10.244.0.2", Tcp, 80));
    assert!(
        !ok(&w, "2001:db8::7", "fd00:10:244::2", Tcp, 80),
        "v6 IP is isolated too"
    );
    assert!(!ok(&w, "fd00:192:168:56::11", "fd00:10:244::2", Tcp, 80));
}

#[test]
fn missing_namespace_means_default() {
    let mut a = pod("default", "a", "node-a", A, json!({}));
    a.metadata.namespace = None;
    let b = pod("default", "b", "node-b", B, json!({}));
    let mut deny = policy("default", "deny", json!({"podSelector": {}}));
    deny.metadata.namespace = None;
    let w = world(vec![], vec![a, b], vec![deny]);
    assert!(!ok(&w, OUTSIDE, A, Tcp, 80));
    assert!(!ok(&w, OUTSIDE, B, Tcp, 80));
}

// ---------------------------------------------------------------------------------------------
// Generator

#[test]
fn generator_is_deterministic_and_round_trips_through_yaml() {
    for seed in [0, 1, 2, 3, 41, 977, u64::MAX] {
        let one = gen::cluster(seed);
        let two = gen::cluster(seed);
        assert_eq!(gen::to_yaml(&one), gen::to_yaml(&two), "seed {seed}");
        assert_eq!(one.probes, two.probes, "seed {seed}");

        let yaml = gen::to_yaml(&one);
        let back = oracle::world_from_yaml(&yaml).expect("generated YAML reads back");
        assert_eq!(back.pods.len(), one.world.pods.len());
        let (a, b) = (Oracle::new(&one.world), Oracle::new(&back));
        for (src, dst, proto, port) in &one.probes {
            assert_eq!(
                a.allowed(*src, *dst, *proto, *port),
                b.allowed(*src, *dst, *proto, *port),
                "seed {seed}: {src} -> {dst} {proto:?}/{port} differs after YAML"
            );
        }
    }
    assert_ne!(
        gen::to_yaml(&gen::cluster(5)),
        gen::to_yaml(&gen::cluster(6))
    );
}

#[test]
fn generated_policies_are_valid_unless_marked_invalid() {
    let mut marked = 0;
    let mut total = 0;
    for seed in 0..3000 {
        let g = gen::cluster(seed);
        for p in &g.world.policies {
            total += 1;
            let key = format!(
                "NetworkPolicy {}/{}:",
                p.metadata.namespace.as_deref().unwrap_or("default"),
                p.metadata.name.as_deref().unwrap_or("")
            );
            let is_marked = g.invalid.iter().any(|line| line.starts_with(&key));
            marked += usize::from(is_marked);
            assert_eq!(
                oracle::policy_is_valid(p),
                !is_marked,
                "seed {seed}: {key} marked invalid = {is_marked}; {:?}",
                g.invalid
            );
        }
    }
    let share = marked as f64 / total as f64;
    assert!(
        (0.07..0.13).contains(&share),
        "{marked} of {total} policies invalid"
    );
}

/// Every feature the differential test relies on shows up, and the oracle answers both ways.
#[test]
fn generator_coverage() {
    let mut seen: std::collections::BTreeMap<&str, usize> = Default::default();
    let (mut allowed, mut denied) = (0usize, 0usize);
    let clusters = 2000;
    for seed in 0..clusters {
        let g = gen::cluster(seed);
        for what in gen::features(&g) {
            *seen.entry(what).or_default() += 1;
        }
        let o = Oracle::new(&g.world);
        for (src, dst, proto, port) in &g.probes {
            if o.allowed(*src, *dst, *proto, *port) {
                allowed += 1;
            } else {
                denied += 1;
            }
        }
    }
    println!("{clusters} clusters: {allowed} allowed, {denied} denied; {seen:#?}");
    for what in gen::FEATURES {
        let n = seen.get(what).copied().unwrap_or(0);
        assert!(n >= 20, "{what}: only {n} of {clusters} clusters; {seen:?}");
    }
    assert!(
        allowed > 200_000 && denied > 200_000,
        "allowed {allowed}, denied {denied}"
    );
}

#[test]
fn shrink_keeps_the_failure_and_drops_the_rest() {
    // A fake failure: "some egress rule of some policy names a port `dns` and the probe
    // set contains a UDP probe to port 53".
    let fails = |g: &gen::Generated| {
        let named_dns =
            g.world.policies.iter().any(|p| {
                p.spec
                    .iter()
                    .flat_map(|s| s.egress.iter().flatten())
                    .any(|r| {
                        r.ports.iter().flatten().any(|port| {
                            port.port
                        == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                            "dns".to_string(),
                        ))
                        })
                    })
            });
        named_dns
            && g.probes
                .iter()
                .any(|(_, _, proto, port)| *proto == Udp && *port == 53)
    };
    let g = (0..500)
        .map(gen::cluster)
        .find(|g| fails(g) && g.world.pods.len() > 3 && g.world.policies.len() > 2)
        .expect("some cluster has an egress dns named port");
    let small = gen::shrink(&g, fails);
    assert!(fails(&small));
    assert_eq!(small.probes.len(), 1);
    assert!(small.world.pods.is_empty());
    assert!(small.world.namespaces.is_empty());
    assert_eq!(small.world.policies.len(), 1);
    let spec = small.world.policies[0].spec.as_ref().expect("spec kept");
    let egress = spec.egress.as_ref().expect("egress kept");
    assert_eq!(egress.len(), 1);
    assert!(egress[0].to.is_none());
    assert_eq!(egress[0].ports.as_ref().map(Vec::len), Some(1));
    assert!(spec.ingress.iter().flatten().next().is_none());
    assert!(gen::to_yaml(&small).contains("port: dns"));
}
