//! The scenarios. Each builds its own cluster (unique namespace names), checks full truth
//! tables against the spec oracle plus its own hand-written flows (the statement of
//! intent), and cleans everything up when `env` drops, also on failure.
//!
//! Addresses: node-a = 192.168.56.10 / fd00:192:168:56::10 (pods 10.244.1.x,
//! fd00:10:244:1::x), node-b = .11 / ::11 (pods 10.244.2.x, fd00:10:244:2::x), outside =
//! 192.168.56.100 / fd00:192:168:56::100. A pod's host part is 10, 11, ... in declaration
//! order per node unless `.host(n)` says otherwise.

use std::time::Duration;

use crate::harness::*;
use crate::probe::{self, Outcome};

/// Removes the common indentation of a YAML block written inside Rust code.
fn yaml(text: &str) -> String {
    let lines: Vec<&str> = text.lines().skip_while(|l| l.trim().is_empty()).collect();
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out: String = lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}

const DENY_ALL_INGRESS: &str = "
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata:
      name: deny-all
      namespace: NS
    spec:
      podSelector: {}
      policyTypes: [Ingress]
";

fn deny_all_ingress(namespace: &str) -> String {
    yaml(&DENY_ALL_INGRESS.replace("NS", namespace))
}

#[test]
fn no_policy_everything_reachable() {
    let env = Scenario::new("no-policy")
        .pod(pod("default/a1").dual_stack())
        .pod(pod("default/a2").dual_stack())
        .pod(pod("default/b1").on(1).dual_stack())
        .pod(pod("other/b4").on(1))
        .pod(pod("other/b6").on(1).v6_only())
        .start();
    env.expect(
        "spot",
        &[
            allow("default/a1", "default/a2", Tcp, 80),
            allow("default/a1", "default/b1", Udp, 81),
            allow("default/a1", "default/b1", Sctp, 80).v6(),
            allow("default/b1", "default/a1", Tcp, 81).v6(),
            allow("other/b6", "default/a2", Udp, 80).v6(),
            allow("outside", "default/a1", Tcp, 81).v6(),
            allow("outside", "other/b4", Sctp, 80),
            allow("node-b", "default/a2", Udp, 80),
            allow("default/a2", "node-b", Tcp, 80),
            allow("default/a2", "outside", Udp, 81).v6(),
            allow("default/a1", "default/a1", Tcp, 80),
        ],
    );
    env.check("no policies");
}

#[test]
fn default_deny_ingress_in_a_namespace() {
    let env = Scenario::new("default-deny-ns")
        .pod(pod("locked/a1"))
        .pod(pod("locked/b1").on(1))
        .pod(pod("open/a2"))
        .pod(pod("open/b2").on(1))
        .policy(&deny_all_ingress("locked"))
        .start();
    env.expect(
        "spot",
        &[
            deny("open/a2", "locked/a1", Tcp, 80),
            deny("open/b2", "locked/a1", Tcp, 81),
            deny("open/b2", "locked/a1", Udp, 80),
            deny("open/b2", "locked/a1", Sctp, 80),
            deny("locked/b1", "locked/a1", Tcp, 80),
            deny("outside", "locked/b1", Tcp, 80),
            deny("node-b", "locked/a1", Tcp, 80),
            allow("node-a", "locked/a1", Tcp, 80),
            allow("locked/a1", "locked/a1", Tcp, 80),
            allow("locked/a1", "open/b2", Tcp, 80),
            allow("open/a2", "open/b2", Udp, 81),
        ],
    );
    env.check("locked denies all ingress");
}

/// Shared with the API-driven suite (tests/kube_api.rs): default deny, then `db` from the
/// backends on one port, updated to another port and the frontend, then the deny deleted.
#[test]
fn default_deny_and_allow_policy_updated() {
    crate::shared::default_deny_and_allow_policy_updated("deny-allow", None);
}

#[test]
fn policy_created_updated_and_deleted() {
    let policy = |port: u16| {
        yaml(&format!(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {{name: api-from-front, namespace: web}}
            spec:
              podSelector: {{matchLabels: {{app: api}}}}
              ingress:
              - from: [{{podSelector: {{matchLabels: {{role: frontend}}}}}}]
                ports: [{{port: {port}}}]
            "
        ))
    };
    let mut env = Scenario::new("policy-lifecycle")
        .pod(pod("web/api").labels(&[("app", "api")]))
        .pod(pod("web/front").on(1).labels(&[("role", "frontend")]))
        .pod(pod("web/other"))
        .start();
    env.check("before the policy");

    env.apply_policy(&policy(80));
    env.expect(
        "created (tcp/80)",
        &[
            allow("web/front", "web/api", Tcp, 80),
            deny("web/front", "web/api", Tcp, 81),
            deny("web/other", "web/api", Tcp, 80),
        ],
    );
    env.check("created (tcp/80)");

    env.apply_policy(&policy(81));
    env.expect(
        "updated (tcp/81)",
        &[
            deny("web/front", "web/api", Tcp, 80),
            allow("web/front", "web/api", Tcp, 81),
            deny("web/other", "web/api", Tcp, 81),
        ],
    );
    env.check("updated (tcp/81)");

    env.delete_policy("web/api-from-front");
    env.expect(
        "deleted",
        &[
            allow("web/other", "web/api", Tcp, 80),
            allow("web/front", "web/api", Udp, 81),
        ],
    );
    env.check("deleted");
}

#[test]
fn namespace_relabelled_mid_test() {
    let mut env = Scenario::new("namespace-relabel")
        .namespace("client", &[("env", "dev")])
        .namespace("prod", &[("env", "prod")])
        .pod(pod("db/server"))
        .pod(pod("client/c").on(1))
        .pod(pod("prod/p"))
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: from-prod, namespace: db}
            spec:
              podSelector: {}
              ingress:
              - from: [{namespaceSelector: {matchLabels: {env: prod}}}]
            ",
        ))
        .start();
    env.expect(
        "client is dev",
        &[
            deny("client/c", "db/server", Tcp, 80),
            allow("prod/p", "db/server", Tcp, 80),
            allow("prod/p", "db/server", Sctp, 80),
        ],
    );
    env.check("client is dev");

    env.label_namespace("client", &[("env", "prod")]);
    env.expect(
        "client relabelled prod",
        &[
            allow("client/c", "db/server", Tcp, 80),
            allow("client/c", "db/server", Udp, 81),
        ],
    );
    env.check("client relabelled prod");

    env.label_namespace("client", &[("env", "dev")]);
    env.label_namespace("prod", &[("env", "staging")]);
    env.expect(
        "both not prod",
        &[
            deny("client/c", "db/server", Tcp, 80),
            deny("prod/p", "db/server", Tcp, 80),
        ],
    );
    env.check("both not prod");
}

/// Shared with the API-driven suite (tests/kube_api.rs).
#[test]
fn pod_and_namespace_relabelled_mid_test() {
    crate::shared::pod_and_namespace_relabelled("pod-relabel", None);
}

#[test]
fn pod_added_mid_test_in_a_default_deny_namespace() {
    let mut env = Scenario::new("pod-added")
        .pod(pod("locked/old"))
        .pod(pod("locked/client").on(1).labels(&[("role", "client")]))
        .pod(pod("free/x").on(1))
        .policy(&deny_all_ingress("locked"))
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: from-clients, namespace: locked}
            spec:
              podSelector: {}
              ingress:
              - from: [{podSelector: {matchLabels: {role: client}}}]
            ",
        ))
        .start();
    env.check("before");

    env.add_pod(pod("locked/new").on(1));
    env.expect(
        "new pod isolated",
        &[
            deny("free/x", "locked/new", Tcp, 80),
            deny("locked/old", "locked/new", Tcp, 80),
            deny("node-a", "locked/new", Tcp, 80),
            allow("node-b", "locked/new", Tcp, 80),
            allow("locked/client", "locked/new", Tcp, 80),
            allow("locked/new", "free/x", Tcp, 80),
        ],
    );
    env.check("new pod isolated");

    env.add_pod(pod("locked/new-client").labels(&[("role", "client")]));
    env.expect(
        "new client allowed",
        &[
            allow("locked/new-client", "locked/old", Tcp, 80),
            allow("locked/new-client", "locked/new", Udp, 81),
            deny("locked/old", "locked/new-client", Tcp, 80),
        ],
    );
    env.check("new client allowed");
}

#[test]
fn deleted_pod_ip_is_no_longer_a_peer() {
    let mut env = Scenario::new("pod-deleted")
        .pod(pod("db/server"))
        .pod(
            pod("db/client")
                .on(1)
                .host(20)
                .labels(&[("role", "client")]),
        )
        .pod(pod("db/bystander").on(1))
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: from-clients, namespace: db}
            spec:
              podSelector: {}
              ingress:
              - from: [{podSelector: {matchLabels: {role: client}}}]
            ",
        ))
        .start();
    env.expect("client alive", &[allow("db/client", "db/server", Tcp, 80)]);
    env.check("client alive");

    // Gone from the API, but its address still sends (a stale sandbox, a reused IP).
    env.delete_pod_manifest("db/client");
    env.check("client deleted, its address still sends");
    env.remove_pod_network("db/client");

    // The same address comes back as another pod without the label.
    env.add_pod(pod("db/reuse").on(1).host(20));
    env.expect(
        "address reused by an unlabelled pod",
        &[
            deny("db/reuse", "db/server", Tcp, 80),
            deny("db/bystander", "db/reuse", Tcp, 80),
        ],
    );
    env.check("address reused by an unlabelled pod");
}

#[test]
fn ipblock_except_covers_a_pod_on_the_other_node() {
    let env = Scenario::new("ipblock-except")
        .pod(pod("x/target").host(10).dual_stack())
        .pod(pod("x/near").host(11))
        .pod(pod("x/far-ok").on(1).host(20).dual_stack())
        .pod(pod("x/far-excepted").on(1).host(21))
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: cluster-but-one, namespace: x}
            spec:
              podSelector: {}
              ingress:
              - from:
                - ipBlock: {cidr: 10.244.0.0/16, except: [10.244.2.21/32]}
            ",
        ))
        .start();
    env.expect(
        "spot",
        &[
            allow("x/far-ok", "x/target", Tcp, 80),
            allow("x/far-ok", "x/target", Sctp, 80),
            deny("x/far-excepted", "x/target", Tcp, 80),
            deny("x/far-excepted", "x/target", Udp, 81),
            allow("x/near", "x/target", Tcp, 81),
            deny("outside", "x/target", Tcp, 80),
            deny("node-b", "x/target", Tcp, 80),
            allow("node-a", "x/target", Tcp, 80),
            // An IPv4 block says nothing about IPv6 peers.
            deny("x/far-ok", "x/target", Tcp, 80).v6(),
        ],
    );
    env.check("10.244.0.0/16 except 10.244.2.21");
}

#[test]
fn named_ports_ingress_differ_between_pods() {
    let env = Scenario::new("named-ports-ingress")
        .kinds(&[
            (Tcp, 8080),
            (Tcp, 9090),
            (Udp, 8080),
            (Tcp, 80),
            (Sctp, 8080),
        ])
        .pod(
            pod("web/w1")
                .labels(&[("app", "web")])
                .port("http", Tcp, 8080),
        )
        .pod(
            pod("web/w2")
                .on(1)
                .labels(&[("app", "web")])
                .port("http", Tcp, 9090)
                .port("metrics", Tcp, 8080),
        )
        .pod(pod("web/c"))
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: http-only, namespace: web}
            spec:
              podSelector: {matchLabels: {app: web}}
              ingress:
              - ports: [{port: http}]
            ",
        ))
        .start();
    env.expect(
        "spot",
        &[
            allow("web/c", "web/w1", Tcp, 8080),
            deny("web/c", "web/w1", Tcp, 9090),
            allow("web/c", "web/w2", Tcp, 9090),
            deny("web/c", "web/w2", Tcp, 8080),
            deny("web/c", "web/w1", Udp, 8080),
            deny("web/c", "web/w1", Sctp, 8080),
            deny("web/c", "web/w1", Tcp, 80),
            allow("outside", "web/w2", Tcp, 9090),
            allow("web/w1", "web/w2", Tcp, 9090),
        ],
    );
    env.check("ingress to port name http");
}

#[test]
fn named_ports_egress_differ_between_pods() {
    let env = Scenario::new("named-ports-egress")
        .kinds(&[(Tcp, 8080), (Tcp, 9090), (Udp, 8080), (Tcp, 80)])
        .pod(pod("cli/client").labels(&[("role", "client")]))
        .pod(pod("cli/unrestricted"))
        .pod(
            pod("web/w1")
                .labels(&[("app", "web")])
                .port("http", Tcp, 8080),
        )
        .pod(
            pod("web/w2")
                .on(1)
                .labels(&[("app", "web")])
                .port("http", Tcp, 9090),
        )
        .pod(
            pod("web/other")
                .on(1)
                .labels(&[("app", "other")])
                .port("http", Tcp, 8080),
        )
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: client-to-web-http, namespace: cli}
            spec:
              podSelector: {matchLabels: {role: client}}
              policyTypes: [Egress]
              egress:
              - to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]
                ports: [{port: http}]
            ",
        ))
        .start();
    env.expect(
        "spot",
        &[
            allow("cli/client", "web/w1", Tcp, 8080),
            deny("cli/client", "web/w1", Tcp, 9090),
            allow("cli/client", "web/w2", Tcp, 9090),
            deny("cli/client", "web/w2", Tcp, 8080),
            deny("cli/client", "web/w1", Udp, 8080),
            deny("cli/client", "web/other", Tcp, 8080),
            deny("cli/client", "outside", Tcp, 8080),
            deny("cli/client", "node-a", Tcp, 8080),
            allow("cli/unrestricted", "web/w2", Tcp, 8080),
            allow("web/w1", "cli/client", Tcp, 80),
        ],
    );
    env.check("egress to port name http");
}

#[test]
fn end_port_range() {
    let env = Scenario::new("endport")
        .kinds(&[
            (Tcp, 80),
            (Tcp, 7999),
            (Tcp, 8000),
            (Tcp, 8005),
            (Tcp, 8010),
            (Tcp, 8011),
            (Udp, 8005),
            (Sctp, 8005),
        ])
        .pod(pod("r/srv").labels(&[("app", "srv")]))
        .pod(pod("r/cli").on(1))
        .pod(pod("r/cli2"))
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: range, namespace: r}
            spec:
              podSelector: {matchLabels: {app: srv}}
              ingress:
              - ports: [{protocol: TCP, port: 8000, endPort: 8010}]
            ",
        ))
        .start();
    env.expect(
        "spot",
        &[
            deny("r/cli", "r/srv", Tcp, 7999),
            allow("r/cli", "r/srv", Tcp, 8000),
            allow("r/cli", "r/srv", Tcp, 8005),
            allow("r/cli", "r/srv", Tcp, 8010),
            deny("r/cli", "r/srv", Tcp, 8011),
            deny("r/cli", "r/srv", Udp, 8005),
            deny("r/cli", "r/srv", Sctp, 8005),
            deny("r/cli2", "r/srv", Tcp, 80),
        ],
    );
    env.check("tcp 8000-8010");
}

/// One rule whose protocols differ in their ports: on kernels with intervals in
/// concatenations (this one) it is compiled into a single `meta l4proto . th dport { ... }`
/// lookup, elsewhere into one rule per protocol group. Either way, exactly these pass.
#[test]
fn mixed_protocols_and_ranges_in_one_rule() {
    let env = Scenario::new("mixed-ports")
        .kinds(&[
            (Tcp, 80),
            (Tcp, 81),
            (Udp, 80),
            (Udp, 81),
            (Tcp, 8003),
            (Udp, 8003),
            (Sctp, 81),
            (Sctp, 80),
        ])
        .pod(pod("m/srv").labels(&[("app", "srv")]).dual_stack())
        .pod(pod("m/cli").on(1).dual_stack())
        .pod(pod("m/near").dual_stack())
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: mixed, namespace: m}
            spec:
              podSelector: {matchLabels: {app: srv}}
              ingress:
              - ports:
                - {port: 80}
                - {port: 81, protocol: UDP}
                - {port: 8000, endPort: 8010, protocol: TCP}
                - {port: 81, protocol: SCTP}
            ",
        ))
        .start();
    env.expect(
        "spot",
        &[
            allow("m/cli", "m/srv", Tcp, 80),
            deny("m/cli", "m/srv", Tcp, 81),
            deny("m/cli", "m/srv", Udp, 80),
            allow("m/cli", "m/srv", Udp, 81),
            allow("m/near", "m/srv", Tcp, 8003),
            deny("m/near", "m/srv", Udp, 8003),
            allow("m/near", "m/srv", Sctp, 81),
            deny("m/near", "m/srv", Sctp, 80),
        ],
    );
    env.check("mixed protocols and ranges");
}

#[test]
fn udp_only_rule() {
    let env = Scenario::new("udp-only")
        .pod(pod("u/srv"))
        .pod(pod("u/cli").on(1))
        .pod(pod("u/cli2"))
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: udp-80, namespace: u}
            spec:
              podSelector: {}
              ingress:
              - ports: [{protocol: UDP, port: 80}]
            ",
        ))
        .start();
    env.expect(
        "spot",
        &[
            allow("u/cli", "u/srv", Udp, 80),
            deny("u/cli", "u/srv", Udp, 81),
            deny("u/cli", "u/srv", Tcp, 80),
            deny("u/cli", "u/srv", Sctp, 80),
            allow("u/cli2", "u/srv", Udp, 80),
            allow("outside", "u/cli", Udp, 80),
        ],
    );
    env.check("udp/80 only");
}

#[test]
fn sctp_only_rule() {
    let env = Scenario::new("sctp-only")
        .kinds(&[(Sctp, 80), (Sctp, 81), (Tcp, 80), (Udp, 80)])
        .pod(pod("s/srv").labels(&[("app", "srv")]).dual_stack())
        .pod(
            pod("s/client")
                .on(1)
                .labels(&[("role", "client")])
                .dual_stack(),
        )
        .pod(pod("s/other").dual_stack())
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: sctp-80-from-clients, namespace: s}
            spec:
              podSelector: {matchLabels: {app: srv}}
              ingress:
              - from: [{podSelector: {matchLabels: {role: client}}}]
                ports: [{protocol: SCTP, port: 80}]
            ",
        ))
        .start();
    env.expect(
        "spot",
        &[
            allow("s/client", "s/srv", Sctp, 80),
            allow("s/client", "s/srv", Sctp, 80).v6(),
            deny("s/client", "s/srv", Sctp, 81),
            deny("s/client", "s/srv", Sctp, 81).v6(),
            deny("s/client", "s/srv", Tcp, 80),
            deny("s/client", "s/srv", Udp, 80).v6(),
            deny("s/other", "s/srv", Sctp, 80),
            allow("s/other", "s/client", Sctp, 81),
        ],
    );
    env.check("sctp/80 from clients");
}

#[test]
fn ipv6_only_pods() {
    let env = Scenario::new("ipv6-only")
        .pod(pod("six/target").v6_only().labels(&[("app", "target")]))
        .pod(pod("six/a2").v6_only())
        .pod(pod("six/b1").on(1).v6_only())
        .pod(pod("other/b2").on(1).v6_only())
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: target, namespace: six}
            spec:
              podSelector: {matchLabels: {app: target}}
              policyTypes: [Ingress, Egress]
              ingress:
              - from: [{ipBlock: {cidr: 'fd00:10:244:2::/64'}}]
              egress:
              - to: [{podSelector: {}}]
            ",
        ))
        .start();
    env.expect(
        "spot",
        &[
            allow("six/b1", "six/target", Tcp, 80).v6(),
            allow("other/b2", "six/target", Udp, 81).v6(),
            deny("six/a2", "six/target", Tcp, 80).v6(),
            deny("outside", "six/target", Tcp, 80).v6(),
            deny("node-b", "six/target", Tcp, 80).v6(),
            allow("node-a", "six/target", Tcp, 80).v6(),
            allow("six/target", "six/b1", Sctp, 80).v6(),
            deny("six/target", "other/b2", Tcp, 80).v6(),
            deny("six/target", "outside", Tcp, 80).v6(),
        ],
    );
    env.check("ipv6 ipBlock and podSelector");
}

#[test]
fn dual_stack_pods_ipblock_per_family() {
    let env = Scenario::new("dual-stack")
        .pod(pod("ds/srv").labels(&[("app", "srv")]).dual_stack())
        .pod(pod("ds/cli-b").on(1).dual_stack())
        .pod(pod("ds/cli-a").dual_stack())
        .pod(pod("ds/v4only").on(1))
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: blocks, namespace: ds}
            spec:
              podSelector: {matchLabels: {app: srv}}
              ingress:
              - from:
                - ipBlock: {cidr: 10.244.0.0/16}
                - ipBlock: {cidr: 'fd00:10:244:2::/64'}
                ports: [{port: 80}, {protocol: UDP, port: 81}]
            ",
        ))
        .start();
    env.expect(
        "spot",
        &[
            allow("ds/cli-a", "ds/srv", Tcp, 80),
            deny("ds/cli-a", "ds/srv", Tcp, 80).v6(),
            allow("ds/cli-b", "ds/srv", Tcp, 80).v6(),
            allow("ds/cli-b", "ds/srv", Udp, 81).v6(),
            deny("ds/cli-b", "ds/srv", Tcp, 81).v6(),
            allow("ds/v4only", "ds/srv", Udp, 81),
            deny("outside", "ds/srv", Tcp, 80).v6(),
        ],
    );
    env.check("v4 block for everyone, v6 block for node-b");
}

#[test]
fn service_hairpin_under_default_deny() {
    let env = Scenario::new("hairpin")
        .pod(pod("svc/web").labels(&[("app", "web")]))
        .pod(pod("svc/other"))
        .pod(pod("svc/remote").on(1))
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: deny-all, namespace: svc}
            spec:
              podSelector: {}
              policyTypes: [Ingress, Egress]
            ",
        ))
        .start();
    let web = env.pod_addr("svc/web", crate::table::Fam::V4);
    // What kube-proxy does for a ClusterIP with one endpoint: DNAT, and masquerade when
    // the endpoint is the client itself (hairpin).
    env.node_nft(
        0,
        &format!(
            "table ip knp-fake-kube-proxy {{
               chain pre {{
                 type nat hook prerouting priority dstnat;
                 ip daddr 10.96.0.10 tcp dport 80 dnat to {web}:80
               }}
               chain post {{
                 type nat hook postrouting priority srcnat;
                 ip saddr {web} ip daddr {web} masquerade
               }}
             }}\n"
        ),
    );
    env.hairpin_on("svc/web");
    let service = "10.96.0.10".parse().expect("service address");
    let outcome = env.probe("svc/web", service, Tcp, 80, probe::LONG);
    assert_eq!(
        outcome,
        Outcome::Open,
        "svc/web reaching itself through its Service must work under default deny"
    );
    // Through the same Service, another pod is held by its own egress policy and by
    // web's ingress policy.
    let outcome = env.probe("svc/other", service, Tcp, 80, probe::SHORT);
    assert_eq!(
        outcome.reachable(),
        Some(false),
        "svc/other -> Service -> svc/web must be blocked, got {outcome}"
    );
    env.expect(
        "spot",
        &[
            allow("svc/web", "svc/web", Tcp, 80),
            deny("svc/other", "svc/web", Tcp, 80),
            allow("node-a", "svc/web", Tcp, 80),
        ],
    );
    env.check("deny all, with the fake kube-proxy");
}

#[test]
fn node_reaches_its_own_pods_only() {
    let env = Scenario::new("node-to-pods")
        .pod(pod("locked/a").dual_stack())
        .pod(pod("locked/b").on(1).dual_stack())
        .policy(&deny_all_ingress("locked"))
        .start();
    env.expect(
        "spot",
        &[
            allow("node-a", "locked/a", Tcp, 80),
            allow("node-a", "locked/a", Udp, 81).v6(),
            allow("node-a", "locked/a", Sctp, 80),
            deny("node-b", "locked/a", Tcp, 80),
            deny("node-b", "locked/a", Tcp, 80).v6(),
            allow("node-b", "locked/b", Tcp, 80).v6(),
            deny("node-a", "locked/b", Udp, 80),
            deny("outside", "locked/b", Tcp, 80),
            // A node process that does not bind (the kubelet) uses its cni0 address; the
            // node's own traffic to its pods never meets a filter, whatever the source.
            allow("node-a@cni0", "locked/a", Tcp, 80).beyond_oracle(),
            allow("node-b@cni0", "locked/b", Udp, 81)
                .v6()
                .beyond_oracle(),
        ],
    );
    env.check("deny all ingress");
}

#[test]
fn egress_to_own_node_goes_through_input() {
    let mut env = Scenario::new("egress-to-node")
        .kinds(&[(Tcp, 9100), (Udp, 9100), (Tcp, 80), (Sctp, 9100)])
        .pod(pod("mon/agent").labels(&[("app", "agent")]).dual_stack())
        .pod(pod("mon/peer").on(1))
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: agent-no-egress, namespace: mon}
            spec:
              podSelector: {matchLabels: {app: agent}}
              policyTypes: [Egress]
            ",
        ))
        .start();
    env.expect(
        "egress denied",
        &[
            deny("mon/agent", "node-a", Tcp, 9100),
            deny("mon/agent", "node-a", Tcp, 9100).v6(),
            deny("mon/agent", "node-a@cni0", Tcp, 9100),
            deny("mon/agent", "node-b", Tcp, 9100),
            deny("mon/agent", "mon/peer", Tcp, 80),
            allow("node-a", "mon/agent", Tcp, 9100),
            allow("mon/peer", "node-a", Tcp, 9100),
            allow("mon/peer", "mon/agent", Tcp, 80),
        ],
    );
    env.check("egress denied");

    env.apply_policy(&yaml(
        "
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: agent-to-node, namespace: mon}
        spec:
          podSelector: {matchLabels: {app: agent}}
          policyTypes: [Egress]
          egress:
          - to: [{ipBlock: {cidr: 192.168.56.10/32}}]
            ports: [{protocol: TCP, port: 9100}]
        ",
    ));
    env.expect(
        "node ip allowed",
        &[
            allow("mon/agent", "node-a", Tcp, 9100),
            deny("mon/agent", "node-a", Udp, 9100),
            deny("mon/agent", "node-a", Tcp, 80),
            deny("mon/agent", "node-a", Tcp, 9100).v6(),
            deny("mon/agent", "node-a@cni0", Tcp, 9100),
            deny("mon/agent", "node-b", Tcp, 9100),
        ],
    );
    env.check("node ip allowed");
}

#[test]
fn egress_default_deny_with_dns() {
    let env = Scenario::new("egress-dns")
        .kinds(&[(Udp, 53), (Tcp, 53), (Tcp, 80), (Udp, 80), (Sctp, 53)])
        .pod(
            pod("kube-system/coredns")
                .on(1)
                .labels(&[("k8s-app", "kube-dns")]),
        )
        .pod(pod("kube-system/other"))
        .pod(pod("app/web"))
        .pod(pod("app/api").on(1))
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: default-deny-egress, namespace: app}
            spec:
              podSelector: {}
              policyTypes: [Egress]
              egress:
              - to:
                - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
                  podSelector: {matchLabels: {k8s-app: kube-dns}}
                ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
            ",
        ))
        .start();
    env.expect(
        "spot",
        &[
            allow("app/web", "kube-system/coredns", Udp, 53),
            allow("app/web", "kube-system/coredns", Tcp, 53),
            deny("app/web", "kube-system/coredns", Tcp, 80),
            deny("app/web", "kube-system/coredns", Sctp, 53),
            deny("app/web", "kube-system/other", Udp, 53),
            deny("app/web", "app/api", Tcp, 80),
            deny("app/api", "outside", Udp, 53),
            allow("kube-system/coredns", "app/web", Tcp, 80),
            allow("node-a", "app/web", Udp, 80),
        ],
    );
    env.check("egress only to DNS");
}

#[test]
fn namespace_and_pod_selector_and_versus_or() {
    let and = yaml(
        "
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: api-from, namespace: svc}
        spec:
          podSelector: {matchLabels: {app: api}}
          ingress:
          - from:
            - namespaceSelector: {matchLabels: {team: a}}
              podSelector: {matchLabels: {role: client}}
        ",
    );
    let or = yaml(
        "
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: api-from, namespace: svc}
        spec:
          podSelector: {matchLabels: {app: api}}
          ingress:
          - from:
            - namespaceSelector: {matchLabels: {team: a}}
            - podSelector: {matchLabels: {role: client}}
        ",
    );
    let mut env = Scenario::new("and-vs-or")
        .namespace("team-a", &[("team", "a")])
        .namespace("team-b", &[("team", "b")])
        .pod(pod("team-a/client").labels(&[("role", "client")]))
        .pod(pod("team-a/other").on(1))
        .pod(pod("team-b/client").on(1).labels(&[("role", "client")]))
        .pod(pod("svc/api").labels(&[("app", "api")]))
        .pod(pod("svc/client").on(1).labels(&[("role", "client")]))
        .policy(&and)
        .start();
    env.expect(
        "AND",
        &[
            allow("team-a/client", "svc/api", Tcp, 80),
            deny("team-a/other", "svc/api", Tcp, 80),
            deny("team-b/client", "svc/api", Tcp, 80),
            deny("svc/client", "svc/api", Tcp, 80),
        ],
    );
    env.check("namespace AND pod selector");

    env.apply_policy(&or);
    env.expect(
        "OR",
        &[
            allow("team-a/client", "svc/api", Tcp, 80),
            allow("team-a/other", "svc/api", Tcp, 80),
            deny("team-b/client", "svc/api", Tcp, 80),
            allow("svc/client", "svc/api", Tcp, 80),
        ],
    );
    env.check("namespace OR pod selector");
}

#[test]
fn established_connections_survive_a_policy_change() {
    let mut env = Scenario::new("established")
        .pod(pod("est/srv"))
        .pod(pod("est/near"))
        .pod(pod("est/far").on(1))
        .start();
    let mut near = env.connect("est/near", "est/srv", 80);
    let mut far = env.connect("est/far", "est/srv", 80);
    assert_eq!(
        probe::echo(&mut near, Duration::from_secs(1)),
        Outcome::Open
    );
    assert_eq!(probe::echo(&mut far, Duration::from_secs(1)), Outcome::Open);

    env.apply_policy(&deny_all_ingress("est"));
    assert_eq!(
        probe::echo(&mut near, Duration::from_secs(1)),
        Outcome::Open,
        "an open same-node connection must survive the new policy"
    );
    assert_eq!(
        probe::echo(&mut far, Duration::from_secs(1)),
        Outcome::Open,
        "an open cross-node connection must survive the new policy"
    );
    env.expect(
        "new connections",
        &[
            deny("est/near", "est/srv", Tcp, 80),
            deny("est/far", "est/srv", Tcp, 80),
        ],
    );
    env.check("deny all");
    // Still open after all that traffic.
    assert_eq!(probe::echo(&mut far, Duration::from_secs(1)), Outcome::Open);
}

#[test]
fn egress_ipblock_cluster_only() {
    let env = Scenario::new("egress-cluster-only")
        .pod(pod("e/pod").labels(&[("app", "pod")]))
        .pod(pod("e/peer").on(1))
        .pod(pod("other/x"))
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: cluster-only, namespace: e}
            spec:
              podSelector: {matchLabels: {app: pod}}
              policyTypes: [Egress]
              egress:
              - to: [{ipBlock: {cidr: 10.244.0.0/16}}]
            ",
        ))
        .start();
    env.expect(
        "spot",
        &[
            allow("e/pod", "e/peer", Tcp, 80),
            allow("e/pod", "other/x", Sctp, 80),
            deny("e/pod", "outside", Tcp, 80),
            deny("e/pod", "node-b", Udp, 80),
            deny("e/pod", "node-a", Tcp, 80),
            // cni0's 10.244.1.1 is in the block: pod -> own node through input, allowed.
            allow("e/pod", "node-a@cni0", Tcp, 80),
            allow("outside", "e/pod", Tcp, 80),
        ],
    );
    env.check("egress to 10.244.0.0/16 only");
}

#[test]
fn same_node_pods_need_egress_and_ingress() {
    let env = Scenario::new("same-node-both")
        .pod(pod("s/a").labels(&[("role", "a")]))
        .pod(pod("s/b").labels(&[("role", "b")]))
        .pod(pod("s/c").labels(&[("role", "c")]))
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: a-egress-to-b, namespace: s}
            spec:
              podSelector: {matchLabels: {role: a}}
              policyTypes: [Egress]
              egress:
              - to: [{podSelector: {matchLabels: {role: b}}}]
                ports: [{port: 80}]
            ",
        ))
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: b-from-c, namespace: s}
            spec:
              podSelector: {matchLabels: {role: b}}
              ingress:
              - from: [{podSelector: {matchLabels: {role: c}}}]
            ",
        ))
        .start();
    env.expect(
        "spot",
        &[
            // a's egress allows it, b's ingress does not: both are checked on one node.
            deny("s/a", "s/b", Tcp, 80),
            allow("s/c", "s/b", Tcp, 80),
            allow("s/c", "s/b", Udp, 81),
            deny("s/a", "s/c", Tcp, 80),
            allow("s/c", "s/a", Tcp, 80),
            allow("s/b", "s/a", Udp, 80),
        ],
    );
    env.check("a egress to b, b ingress from c");
}

#[test]
fn daemon_restart_keeps_rules_and_catches_up() {
    let mut env = Scenario::new("daemon-restart")
        .pod(pod("r/server").labels(&[("app", "server")]))
        .pod(pod("r/c1").on(1).labels(&[("role", "client")]))
        .pod(pod("r/c2").labels(&[("role", "none")]))
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: server-from-clients, namespace: r}
            spec:
              podSelector: {matchLabels: {app: server}}
              ingress:
              - from: [{podSelector: {matchLabels: {role: client}}}]
            ",
        ))
        .start();
    env.check("running");
    if !env.stop_daemons() {
        println!("render driver: no daemon to restart, nothing more to check here");
        return;
    }
    // SIGTERM leaves the rules in force.
    env.expect(
        "daemons stopped",
        &[
            allow("r/c1", "r/server", Tcp, 80),
            deny("r/c2", "r/server", Tcp, 80),
        ],
    );
    env.check("daemons stopped");
    // A change while nobody enforces it; the next daemons find the old table in the
    // kernel and must bring it up to date.
    env.label_pod("r/c2", &[("role", "client")]);
    env.label_pod("r/c1", &[("role", "none")]);
    env.resume_daemons();
    env.expect(
        "new daemons",
        &[
            deny("r/c1", "r/server", Tcp, 80),
            allow("r/c2", "r/server", Tcp, 80),
        ],
    );
    env.check("new daemons");
}

/// Issue: during a restart, upgrade or crash of the daemon, no connection the policies deny
/// may get through and no allowed one may break. Pairs are probed back to back (new
/// connections, same node and across nodes) while the daemons are stopped, restarted,
/// killed with SIGKILL and restarted again.
#[test]
fn restarts_and_kill_9_open_no_window() {
    let mut env = Scenario::new("no-window")
        .pod(pod("w/server").labels(&[("app", "server")]))
        .pod(pod("w/near").labels(&[("role", "client")]))
        .pod(pod("w/far").on(1).labels(&[("role", "client")]))
        .pod(pod("w/intruder").labels(&[("role", "none")]))
        .pod(pod("w/remote-intruder").on(1).labels(&[("role", "none")]))
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: server-from-clients, namespace: w}
            spec:
              podSelector: {matchLabels: {app: server}}
              ingress:
              - from: [{podSelector: {matchLabels: {role: client}}}]
                ports: [{port: 80}, {port: 80, protocol: UDP}]
            ",
        ))
        .start();
    let flows = [
        allow("w/near", "w/server", Tcp, 80),
        allow("w/far", "w/server", Tcp, 80),
        allow("w/far", "w/server", Udp, 80),
        deny("w/intruder", "w/server", Tcp, 80),
        deny("w/remote-intruder", "w/server", Tcp, 80),
        deny("w/remote-intruder", "w/server", Udp, 80),
        deny("w/near", "w/server", Tcp, 81),
    ];
    env.expect("running", &flows);
    if env.driver_kind() != crate::driver::Kind::Daemon {
        println!("render driver: no daemon to restart, nothing more to check here");
        return;
    }
    let watch = env.watch(&flows);
    let pause = || std::thread::sleep(Duration::from_millis(800));
    pause();
    env.stop_daemons();
    pause();
    env.resume_daemons();
    pause();
    env.kill_daemons();
    pause();
    env.resume_daemons();
    pause();
    let results = watch.finish();
    for r in &results {
        println!("  {}: {} probes, {} wrong", r.flow, r.probes, r.wrong.len());
    }
    let bad: Vec<String> = results
        .iter()
        .filter(|r| !r.wrong.is_empty() || r.probes < 20)
        .map(|r| format!("  {} ({} probes): {:?}", r.flow, r.probes, r.wrong))
        .collect();
    assert!(
        bad.is_empty(),
        "a window opened or closed during restarts:\n{}",
        bad.join("\n")
    );
    env.check("after the restarts");
}

#[test]
fn burst_of_changes_converges_to_the_last_state() {
    let policy = |port: u16| {
        yaml(&format!(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {{name: server-from-clients, namespace: b}}
            spec:
              podSelector: {{matchLabels: {{app: server}}}}
              ingress:
              - from: [{{podSelector: {{matchLabels: {{role: client}}}}}}]
                ports: [{{port: {port}}}]
            "
        ))
    };
    let mut env = Scenario::new("burst")
        .pod(pod("b/server").labels(&[("app", "server")]))
        .pod(pod("b/c1").on(1).labels(&[("role", "client")]))
        .pod(pod("b/c2"))
        .policy(&policy(80))
        .start();
    env.check("before");
    // Twenty changes back to back, without waiting in between.
    env.together(|env| {
        for port in 8000..8016 {
            env.apply_policy(&policy(port));
        }
        env.apply_policy(&policy(81));
        env.label_pod("b/c2", &[("role", "client")]);
        env.label_pod("b/c1", &[("role", "gone")]);
        env.label_namespace("b", &[("env", "prod")]);
    });
    env.expect(
        "after the burst",
        &[
            allow("b/c2", "b/server", Tcp, 81),
            deny("b/c2", "b/server", Tcp, 80),
            deny("b/c1", "b/server", Tcp, 81),
        ],
    );
    env.check("after the burst");
}

/// On Flannel, a host process of node-b that does not bind reaches node-a's pods from
/// node-b's overlay addresses (10.244.2.0 on flannel.1, fd00:10:244:2::1 on cni0), not from
/// its node IP: an ipBlock of the node IP does not admit it, a pod-CIDR ipBlock does.
#[test]
fn other_nodes_host_traffic_comes_from_overlay_addresses() {
    let mut env = Scenario::new("remote-host-source")
        .pod(pod("x/target").labels(&[("app", "target")]).dual_stack())
        .pod(pod("x/peer").on(1).dual_stack())
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: from-node-b, namespace: x}
            spec:
              podSelector: {matchLabels: {app: target}}
              ingress:
              - from:
                - ipBlock: {cidr: 192.168.56.11/32}
                - ipBlock: {cidr: 'fd00:192:168:56::11/128'}
            ",
        ))
        .start();
    let target4 = env.pod_addr("x/target", crate::table::Fam::V4);
    let target6 = env.pod_addr("x/target", crate::table::Fam::V6);
    assert_eq!(
        env.node_ns(1).route_source(target4).map(|a| a.to_string()),
        Some("10.244.2.0".to_string()),
        "node-b's unbound traffic to node-a's pods leaves from its flannel.1 address"
    );
    assert_eq!(
        env.node_ns(1).route_source(target6).map(|a| a.to_string()),
        Some("fd00:10:244:2::1".to_string()),
        "node-b's unbound IPv6 traffic to node-a's pods leaves from its cni0 address"
    );
    env.expect(
        "node-b's IPs allowed",
        &[
            allow("node-b", "x/target", Tcp, 80),
            allow("node-b", "x/target", Udp, 81).v6(),
            deny("node-b@flannel.1", "x/target", Tcp, 80),
            deny("node-b@cni0", "x/target", Tcp, 80).v6(),
            deny("x/peer", "x/target", Tcp, 80),
        ],
    );
    env.check("node-b's IPs allowed");

    env.apply_policy(&yaml(
        "
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: from-node-b, namespace: x}
        spec:
          podSelector: {matchLabels: {app: target}}
          ingress:
          - from:
            - ipBlock: {cidr: 10.244.0.0/16}
            - ipBlock: {cidr: 'fd00:10:244::/48'}
        ",
    ));
    env.expect(
        "pod CIDRs allowed",
        &[
            allow("x/peer", "x/target", Tcp, 80),
            allow("node-b@flannel.1", "x/target", Tcp, 80),
            allow("node-b@cni0", "x/target", Tcp, 80).v6(),
            deny("node-b", "x/target", Tcp, 80),
        ],
    );
    env.check("pod CIDRs allowed");
}

/// Someone deletes the table (a stray `nft flush ruleset`): the daemon's drift check puts
/// it back. Daemon driver only.
#[test]
fn daemon_repairs_a_deleted_table() {
    let env = Scenario::new("drift")
        .daemon_args(&["--drift-check-interval", "500ms"])
        .pod(pod("locked/a"))
        .pod(pod("locked/b").on(1))
        .policy(&deny_all_ingress("locked"))
        .start();
    if env.driver_kind() != crate::driver::Kind::Daemon {
        println!("render driver: no daemon to repair anything, nothing to check here");
        return;
    }
    env.check("deny all");
    env.node_nft(0, "delete table inet kube-nftpol\n");
    let open = env.probe(
        "locked/b",
        env.pod_addr("locked/a", crate::table::Fam::V4),
        Tcp,
        80,
        probe::LONG,
    );
    assert_eq!(
        open.reachable(),
        Some(true),
        "without the table, node-a enforces nothing (got {open})"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let outcome = env.probe(
            "locked/b",
            env.pod_addr("locked/a", crate::table::Fam::V4),
            Tcp,
            80,
            probe::SHORT,
        );
        if outcome.reachable() == Some(false) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not restore the deleted table within 10 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    env.check("table restored");
}

/// `prod`: default-deny ingress, and pods `app=web` take TCP and UDP 80 from pods
/// `role=client` of any namespace. The other scenarios' pods: `prod/web` (node-a),
/// `dev/client-a` (node-a, dual-stack), `dev/client-b` (node-b, dual-stack), `dev/other`
/// (node-a, no label: a denied client).
fn fail_closed_cluster(name: &str, fail_closed: bool) -> Scenario {
    let scenario = Scenario::new(name)
        .kinds(&[(Tcp, 80), (Tcp, 81), (Udp, 80)])
        // node-a publishes its pod CIDRs in its Node object, node-b in Flannel's subnet.env.
        .pod_cidrs(&[PodCidrSource::NodeObject, PodCidrSource::SubnetEnv])
        .pod(pod("prod/web").labels(&[("app", "web")]))
        .pod(
            pod("dev/client-a")
                .labels(&[("role", "client")])
                .dual_stack(),
        )
        .pod(
            pod("dev/client-b")
                .on(1)
                .labels(&[("role", "client")])
                .dual_stack(),
        )
        .pod(pod("dev/other"))
        .policy(&deny_all_ingress("prod"))
        .policy(&yaml(
            "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: web-from-clients, namespace: prod}
            spec:
              podSelector: {matchLabels: {app: web}}
              ingress:
              - from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]
                ports: [{port: 80}, {port: 80, protocol: UDP}]
            ",
        ));
    if fail_closed {
        scenario.fail_closed()
    } else {
        scenario
    }
}

/// Flows of new pods `prod/new-a` (node-a) and `prod/new-b` (node-b), both dual-stack, that the
/// policies allow once the pods are known (from the allowed clients, same node and across
/// nodes, TCP and UDP; and from the new pods outwards), plus flows from strangers
/// (node-b, outside, dev/other) that only an unknown pod accepts. `allow`: the verdict
/// while the pods are not known.
fn unknown_pod_flows(allow_: bool) -> Vec<Flow> {
    let f = |src: &str, dst: &str, proto, port| {
        if allow_ {
            allow(src, dst, proto, port)
        } else {
            deny(src, dst, proto, port)
        }
    };
    vec![
        // Towards the new pods.
        f("dev/client-a", "prod/new-a", Tcp, 80),
        f("dev/client-a", "prod/new-a", Udp, 80),
        f("dev/client-a", "prod/new-a", Tcp, 80).v6(),
        f("dev/client-b", "prod/new-a", Tcp, 80),
        f("dev/client-b", "prod/new-a", Udp, 80).v6(),
        f("dev/client-b", "prod/new-b", Tcp, 80),
        f("dev/client-b", "prod/new-b", Udp, 80),
        f("dev/client-b", "prod/new-b", Tcp, 80).v6(),
        f("dev/client-a", "prod/new-b", Tcp, 80),
        f("dev/other", "prod/new-a", Tcp, 80),
        f("node-b", "prod/new-a", Tcp, 80),
        f("outside", "prod/new-b", Tcp, 80),
        // From the new pods (egress is not restricted in prod).
        f("prod/new-a", "dev/client-a", Tcp, 80),
        f("prod/new-a", "dev/client-a", Udp, 80).v6(),
        f("prod/new-a", "dev/client-b", Tcp, 80),
        f("prod/new-a", "outside", Tcp, 80),
        f("prod/new-a", "node-a", Tcp, 80),
        f("prod/new-b", "dev/client-b", Udp, 80),
        f("prod/new-b", "dev/client-a", Tcp, 80),
        f("prod/new-b", "node-b", Tcp, 80),
        f("prod/new-b", "dev/client-a", Udp, 80).v6(),
    ]
}

/// Prints a watch's counts; fails when a flow was not probed at least `min` times or one
/// probe contradicted its verdict.
fn assert_watch(what: &str, results: &[WatchResult], min: usize) {
    let (mut probes, mut wrong) = (0, 0);
    for r in results {
        println!("  {}: {} probes, {} wrong", r.flow, r.probes, r.wrong.len());
        probes += r.probes;
        wrong += r.wrong.len();
    }
    println!("  {what}: {probes} probes in all, {wrong} wrong");
    let bad: Vec<String> = results
        .iter()
        .filter(|r| !r.wrong.is_empty() || r.probes < min)
        .map(|r| {
            let first: Vec<&String> = r.wrong.iter().take(4).collect();
            format!(
                "  {}: {} probes, {} wrong, first: {first:?}",
                r.flow,
                r.probes,
                r.wrong.len()
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: a flow went the wrong way (or was probed fewer than {min} times):\n{}",
        bad.join("\n")
    );
}

/// Another policy on `prod/web` (port 81 from pods `role=monitoring`, of which there are
/// none): a ruleset change the daemons sync while the new pods are up but unknown.
fn monitoring_policy() -> String {
    yaml(
        "
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: web-from-monitoring, namespace: prod}
        spec:
          podSelector: {matchLabels: {app: web}}
          ingress:
          - from: [{podSelector: {matchLabels: {role: monitoring}}}]
            ports: [{port: 81}]
        ",
    )
}

/// The new pods' network (as the CNI sets it up) exists before any manifest says so: the
/// same steps with and without `--fail-closed`, which decides only what happens before
/// the pods are known (and after their manifests are deleted).
fn new_pods_before_their_manifests(env: &mut Env, fail_closed: bool) {
    env.add_pod_network(pod("prod/new-a").labels(&[("app", "web")]).dual_stack());
    env.add_pod_network(
        pod("prod/new-b")
            .on(1)
            .labels(&[("app", "web")])
            .dual_stack(),
    );

    // Unknown: no manifest, then a Pending one without addresses, while the daemons sync
    // another change. Probed back to back all along, same node and across nodes, to and
    // from the new pods.
    let flows = unknown_pod_flows(!fail_closed);
    env.agree("no manifest yet", &flows);
    let watch = env.watch(&flows);
    let pause = |ms| std::thread::sleep(Duration::from_millis(ms));
    pause(600);
    env.together(|env| {
        env.write_pod_manifest("prod/new-a", PodStage::Pending);
        env.write_pod_manifest("prod/new-b", PodStage::Pending);
        env.apply_policy(&monitoring_policy());
    });
    env.agree("pending, no address", &flows);
    pause(600);
    let results = watch.finish();
    assert_watch(
        if fail_closed {
            "unknown pods, --fail-closed: nothing may get through"
        } else {
            "unknown pods, no --fail-closed: everything gets through"
        },
        &results,
        3,
    );
    env.check("new pods up, not known");

    // Their manifests with addresses: flows the policies deny, probed across the change,
    // never get through (with --fail-closed they were denied before too: no window where
    // the pod is reachable but its policies not yet in force).
    let denied = [
        deny("dev/other", "prod/new-a", Tcp, 80),
        deny("dev/client-a", "prod/new-a", Tcp, 81),
        deny("dev/client-b", "prod/new-a", Tcp, 81).v6(),
        deny("node-b", "prod/new-a", Tcp, 80),
        deny("dev/client-b", "prod/new-b", Tcp, 81),
        deny("outside", "prod/new-b", Tcp, 80),
        deny("outside", "prod/new-b", Tcp, 80).v6(),
    ];
    let watch = fail_closed.then(|| env.watch(&denied));
    pause(300);
    env.together(|env| {
        env.write_pod_manifest("prod/new-a", PodStage::Running);
        env.write_pod_manifest("prod/new-b", PodStage::Running);
    });
    pause(300);
    if let Some(watch) = watch {
        assert_watch("the new pods' rules land", &watch.finish(), 3);
    }
    let mut known = vec![
        allow("dev/client-a", "prod/new-a", Tcp, 80),
        allow("dev/client-a", "prod/new-a", Udp, 80),
        allow("dev/client-a", "prod/new-a", Tcp, 80).v6(),
        allow("dev/client-b", "prod/new-a", Tcp, 80),
        allow("dev/client-b", "prod/new-a", Udp, 80).v6(),
        allow("dev/client-b", "prod/new-b", Tcp, 80),
        allow("dev/client-a", "prod/new-b", Udp, 80),
        allow("prod/new-a", "dev/client-b", Tcp, 80),
        allow("prod/new-b", "outside", Tcp, 80),
        allow("prod/new-a", "node-a", Tcp, 80),
    ];
    known.extend(denied.iter().cloned());
    env.expect("new pods known", &known);
    env.check("new pods known");

    // Deleted from the API while their namespaces still run (a stale sandbox): strangers
    // again. Without --fail-closed nothing isolates them any more.
    env.together(|env| {
        env.delete_pod_manifest("prod/new-a");
        env.delete_pod_manifest("prod/new-b");
    });
    let gone = |src: &str, dst: &str, proto, port| {
        if fail_closed {
            deny(src, dst, proto, port)
        } else {
            allow(src, dst, proto, port)
        }
    };
    env.expect(
        "new pods deleted",
        &[
            gone("dev/client-a", "prod/new-a", Tcp, 80),
            gone("dev/client-b", "prod/new-a", Udp, 80).v6(),
            gone("dev/client-b", "prod/new-b", Tcp, 80),
            gone("dev/other", "prod/new-a", Tcp, 80),
            gone("prod/new-a", "dev/client-a", Tcp, 80),
            gone("prod/new-b", "outside", Tcp, 80),
            // The node's own traffic to its pod CIDR is never guarded.
            allow("node-a", "prod/new-a", Tcp, 80),
            allow("node-b", "prod/new-b", Udp, 80),
            // Known pods keep their policies.
            allow("dev/client-b", "prod/web", Tcp, 80),
            deny("dev/other", "prod/web", Tcp, 80),
        ],
    );
    env.check("new pods deleted, their namespaces still up");
}

/// Issue: "a new pod in a namespace with a default-deny policy is never reachable, not even
/// for the first packets". With `--fail-closed` (node-a's pod CIDRs from its Node object,
/// node-b's from Flannel's subnet.env), a pod whose network is up before the daemon knows
/// it cannot send or receive anything until its rules are in force, and becomes dark again
/// when its manifest goes away while its network stays.
#[test]
fn fail_closed_new_pod_dark_until_programmed() {
    let mut env = fail_closed_cluster("fail-closed", true).start();
    env.expect(
        "known pods",
        &[
            allow("dev/client-a", "prod/web", Tcp, 80),
            allow("dev/client-b", "prod/web", Udp, 80),
            deny("dev/other", "prod/web", Tcp, 80),
            allow("prod/web", "dev/other", Tcp, 81),
        ],
    );
    new_pods_before_their_manifests(&mut env, true);
}

/// The control of [`fail_closed_new_pod_dark_until_programmed`]: the same cluster, pods and
/// steps without `--fail-closed`. A pod the daemon does not know is not isolated, so the
/// same probes get through: they can tell a dark pod from an open one.
#[test]
fn without_fail_closed_an_unknown_pod_is_open() {
    let mut env = fail_closed_cluster("not-fail-closed", false).start();
    new_pods_before_their_manifests(&mut env, false);
}
