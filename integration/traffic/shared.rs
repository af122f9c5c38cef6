//! Scenarios run by two suites: the traffic tests, with the cluster in a manifests directory,
//! and tests/kube_api.rs, with it in a real API server (`store`). One statement of intent,
//! two sources the daemons read it from.

use std::path::Path;
use std::sync::Arc;

use crate::cluster::Cluster;
use crate::driver::ObjectStore;
use crate::harness::{allow, deny, pod, Scenario, Sctp, Tcp, Udp};

/// Where the daemons read the cluster from, made once the netns cluster exists; `None`: the
/// manifests directory.
pub type StoreFactory = Box<dyn FnOnce(&Cluster, &Path) -> Arc<dyn ObjectStore>>;

fn with_store(scenario: Scenario, store: Option<StoreFactory>) -> Scenario {
    match store {
        Some(store) => scenario.store(store),
        None => scenario,
    }
}

const DENY_ALL_SHOP: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

/// `db` from `sources` (pod selectors `app: X`) on TCP `port`.
fn db_policy(sources: &[&str], port: u16) -> String {
    let from: Vec<String> = sources
        .iter()
        .map(|s| format!("{{podSelector: {{matchLabels: {{app: {s}}}}}}}"))
        .collect();
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: db-from-backend, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: db}}}}
  ingress:
  - from: [{}]
    ports: [{{protocol: TCP, port: {port}}}]
",
        from.join(", ")
    )
}

/// Default deny in `shop`, `db` open to same- and cross-node backends on tcp/80 only; the
/// policy then updated to tcp/81 and the frontend too; then the default deny deleted.
pub fn default_deny_and_allow_policy_updated(name: &str, store: Option<StoreFactory>) {
    let mut t = with_store(Scenario::new(name), store)
        .pod(pod("shop/db").labels(&[("app", "db")]).dual_stack())
        .pod(pod("shop/frontend").labels(&[("app", "frontend")]))
        .pod(
            pod("shop/backend")
                .on(1)
                .labels(&[("app", "backend")])
                .dual_stack(),
        )
        .pod(pod("staging/backend").on(1).labels(&[("app", "backend")]))
        .policy(DENY_ALL_SHOP)
        .policy(&db_policy(&["backend"], 80))
        .start();
    t.expect(
        "deny-all + db from backend on tcp/80",
        &[
            allow("shop/backend", "shop/db", Tcp, 80),
            allow("shop/backend", "shop/db", Tcp, 80).v6(),
            deny("shop/backend", "shop/db", Tcp, 81),
            deny("shop/backend", "shop/db", Udp, 80),
            deny("shop/backend", "shop/db", Sctp, 80),
            deny("shop/frontend", "shop/db", Tcp, 80),
            deny("staging/backend", "shop/db", Tcp, 80),
            deny("shop/db", "shop/frontend", Tcp, 80),
            deny("shop/db", "shop/backend", Udp, 81),
            deny("outside", "shop/backend", Tcp, 80),
            allow("shop/db", "staging/backend", Udp, 80),
            allow("shop/frontend", "outside", Tcp, 81),
        ],
    );
    t.check("deny-all + db from backend on tcp/80");

    // Updated mid-test: tcp/81, and the same-node frontend too.
    t.apply_policy(&db_policy(&["backend", "frontend"], 81));
    t.expect(
        "db from backend and frontend on tcp/81",
        &[
            deny("shop/backend", "shop/db", Tcp, 80),
            allow("shop/backend", "shop/db", Tcp, 81),
            allow("shop/backend", "shop/db", Tcp, 81).v6(),
            allow("shop/frontend", "shop/db", Tcp, 81),
            deny("staging/backend", "shop/db", Tcp, 81),
        ],
    );
    t.check("db from backend and frontend on tcp/81");

    t.delete_policy("shop/deny-all");
    t.expect(
        "deny-all deleted",
        &[
            allow("shop/db", "shop/frontend", Tcp, 80),
            deny("shop/backend", "shop/db", Tcp, 80),
            allow("outside", "shop/backend", Udp, 80),
        ],
    );
    t.check("deny-all deleted");
}

/// Peers move in and out of a policy as pods and a namespace are relabelled, and the target
/// leaves its selector.
pub fn pod_and_namespace_relabelled(name: &str, store: Option<StoreFactory>) {
    let mut t = with_store(Scenario::new(name), store)
        .namespace("client", &[("env", "dev")])
        .pod(pod("app/server").labels(&[("app", "server")]))
        .pod(pod("app/c1").on(1).labels(&[("role", "client")]))
        .pod(pod("app/c2").labels(&[("role", "none")]))
        .pod(pod("client/c").on(1).labels(&[("role", "client")]))
        .policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-from-clients, namespace: app}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
  - from: [{namespaceSelector: {matchLabels: {env: prod}}, podSelector: {matchLabels: {role: client}}}]
",
        )
        .start();
    t.expect(
        "initial",
        &[
            allow("app/c1", "app/server", Tcp, 80),
            deny("app/c2", "app/server", Tcp, 80),
            deny("client/c", "app/server", Tcp, 80),
        ],
    );
    t.check("initial");

    t.label_pod("app/c2", &[("role", "client")]);
    t.label_pod("app/c1", &[("role", "retired")]);
    t.expect(
        "clients swapped",
        &[
            deny("app/c1", "app/server", Tcp, 80),
            allow("app/c2", "app/server", Tcp, 80),
            allow("app/c2", "app/server", Udp, 81),
        ],
    );
    t.check("clients swapped");

    t.label_namespace("client", &[("env", "prod")]);
    t.expect(
        "namespace client relabelled prod",
        &[allow("client/c", "app/server", Tcp, 80)],
    );
    t.check("namespace client relabelled prod");

    // The target itself leaves the policy's selector: no longer isolated.
    t.label_pod("app/server", &[("app", "something-else")]);
    t.expect(
        "server unselected",
        &[allow("app/c1", "app/server", Tcp, 80)],
    );
    t.check("server unselected");
}
