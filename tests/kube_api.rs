//! `kube-nftpol run` against a real API server, the envtest way: when `KUBEBUILDER_ASSETS`
//! names a folder with `etcd` and `kube-apiserver` (`scripts/envtest-assets.sh` builds one
//! from Debian's packages), each test starts both on loopback inside a network namespace of
//! its own, runs the real daemon there with a token that has exactly the permissions of
//! `packaging/kubernetes/rbac.yaml`, changes the cluster through the API and waits until the
//! daemon's committed ruleset is the one `render` computes from what the API server lists.
//!
//! Without `KUBEBUILDER_ASSETS`, every test prints `skipped: KUBEBUILDER_ASSETS not set` and
//! none counts as passed. Own harness (`harness = false`) for exactly that. Needs root.
//!
//! The `traffic_*` tests build the real-traffic cluster of integration/traffic (two node
//! namespaces, pods, real probes; see integration/README.md) with etcd and kube-apiserver in
//! its underlay namespace (the "outside" host, 192.168.56.100, reachable from both nodes),
//! run each node's daemon with `--kubeconfig` instead of `--manifests`, create every
//! Namespace, Pod (status through the status subresource) and NetworkPolicy through the
//! API, and check the same truth tables as the manifests-driven scenarios.
//!
//! `cargo test --test kube_api [NAME-SUBSTRING]`

mod support;

// The traffic harness (integration/traffic), its objects kept by an API server.
#[allow(dead_code, unused_imports)]
#[path = "../integration/traffic/cluster.rs"]
mod cluster;
#[allow(dead_code, unused_imports)]
#[path = "../integration/traffic/driver.rs"]
mod driver;
#[allow(dead_code, unused_imports)]
#[path = "../integration/traffic/harness.rs"]
mod harness;
#[allow(dead_code, unused_imports)]
#[path = "../integration/traffic/netns.rs"]
mod netns;
#[allow(dead_code, unused_imports)]
#[path = "../integration/traffic/probe.rs"]
mod probe;
#[allow(dead_code, unused_imports)]
#[path = "../integration/traffic/servers.rs"]
mod servers;

#[path = "../integration/traffic/shared.rs"]
mod shared;
#[allow(dead_code, unused_imports)]
#[path = "../integration/traffic/table.rs"]
mod table;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use kube_nftpol::compile::{compile_with, fnv1a64, Options};
use kube_nftpol::dataplane::probe as kernel_probe;
use kube_nftpol::model::{Cluster, Object};
use kube_nftpol::render::text;
use support::netns::{nft, normalised_listing};

const BIN: &str = env!("CARGO_BIN_EXE_kube-nftpol");
const ADMIN_TOKEN: &str = "envtest-admin-token";
const DAEMON_TOKEN: &str = "envtest-kube-nftpol-token";
static NEXT: AtomicUsize = AtomicUsize::new(0);

type TestFn = fn(&Env);

fn main() -> ExitCode {
    let tests: [(&str, TestFn); 4] = [
        (
            "follows_every_kind_of_change_through_the_api",
            follows_every_kind_of_change_through_the_api,
        ),
        (
            "api_server_down_at_start_and_restarted_mid_test_never_drops_the_rules",
            api_server_down_and_restarted_never_drops_the_rules,
        ),
        (
            "traffic_default_deny_and_allow_same_and_cross_node_policy_updated",
            |env| {
                shared::default_deny_and_allow_policy_updated(
                    "api-deny-allow",
                    Some(api_store(env)),
                )
            },
        ),
        ("traffic_pod_and_namespace_relabelled", |env| {
            shared::pod_and_namespace_relabelled("api-relabel", Some(api_store(env)))
        }),
    ];
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let selected: Vec<_> = tests
        .iter()
        .filter(|(name, _)| filter.as_ref().is_none_or(|f| name.contains(f.as_str())))
        .collect();
    let Some(assets) = std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from) else {
        for (name, _) in &selected {
            println!("test {name} ... skipped: KUBEBUILDER_ASSETS not set");
        }
        println!(
            "\ntest result: 0 passed; 0 failed; {} skipped (KUBEBUILDER_ASSETS not set: \
             see scripts/envtest-assets.sh)",
            selected.len()
        );
        return ExitCode::SUCCESS;
    };
    for bin in ["etcd", "kube-apiserver"] {
        if !assets.join(bin).is_file() {
            println!(
                "KUBEBUILDER_ASSETS={} has no {bin}: failing rather than skipping",
                assets.display()
            );
            return ExitCode::FAILURE;
        }
    }
    support::netns::assert_root();
    let env = Env { assets };
    let (mut passed, mut failed) = (0, Vec::new());
    for (name, test) in selected {
        println!("test {name} ...");
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(|| test(&env));
        match outcome {
            Ok(()) => {
                println!(
                    "test {name} ... ok ({:.1}s)",
                    started.elapsed().as_secs_f64()
                );
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    println!(
        "\ntest result: {passed} passed; {} failed; 0 skipped",
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct Env {
    assets: PathBuf,
}

/// etcd, kube-apiserver and the daemon in one network namespace, with a work directory.
struct Cluster0 {
    ns: String,
    dir: PathBuf,
    assets: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    daemon: Option<Child>,
}

impl Cluster0 {
    fn new(env: &Env) -> Cluster0 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let ns = format!("knpk-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&ns);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("work dir");
        run(Command::new("ip").args(["netns", "add", &ns]));
        let c = Cluster0 {
            ns,
            dir,
            assets: env.assets.clone(),
            etcd: None,
            apiserver: None,
            daemon: None,
        };
        run(Command::new("ip").args(["-n", &c.ns, "link", "set", "lo", "up"]));
        write_pki(&c.dir, "https://127.0.0.1:6443", "IP:127.0.0.1");
        c
    }
}

/// Token file, service-account key pair, a CA, a serving certificate for `sans`
/// (`IP:a,IP:b`), and `admin.kubeconfig` / `daemon.kubeconfig` naming `server`.
fn write_pki(dir: &Path, server: &str, sans: &str) {
    {
        std::fs::write(
            dir.join("tokens.csv"),
            format!(
                "{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n\
                 {DAEMON_TOKEN},system:serviceaccount:kube-system:kube-nftpol,sa-uid,\"system:serviceaccounts\"\n"
            ),
        )
        .expect("tokens");
        let key = dir.join("sa.key");
        run(Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .stderr(Stdio::null()));
        run(Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(dir.join("sa.pub"))
            .stderr(Stdio::null()));
        // A CA and a serving certificate for `sans` made up front, so that kubeconfigs
        // can name the CA before the API server first starts.
        std::fs::write(
            dir.join("server.ext"),
            format!(
                "subjectAltName={sans}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .expect("ext file");
        let d = dir.display().to_string();
        let openssl = |args: &str| {
            let args: Vec<String> = args
                .split_whitespace()
                .map(|a| a.replace("DIR", &d))
                .collect();
            run(Command::new("openssl")
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null()));
        };
        openssl("req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=envtest-ca -keyout DIR/ca.key -out DIR/ca.crt");
        openssl("req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout DIR/server.key -out DIR/server.csr");
        openssl("x509 -req -days 2 -in DIR/server.csr -CA DIR/ca.crt -CAkey DIR/ca.key -CAcreateserial -extfile DIR/server.ext -out DIR/server.crt");
        for (file, token) in [
            ("admin.kubeconfig", ADMIN_TOKEN),
            ("daemon.kubeconfig", DAEMON_TOKEN),
        ] {
            std::fs::write(
                dir.join(file),
                format!(
                    "apiVersion: v1\nkind: Config\ncurrent-context: envtest\n\
                     clusters: [{{name: envtest, cluster: {{server: \"{server}\", \
                     certificate-authority: \"{}\"}}}}]\n\
                     users: [{{name: u, user: {{token: {token}}}}}]\n\
                     contexts: [{{name: envtest, context: {{cluster: envtest, user: u}}}}]\n",
                    dir.join("ca.crt").display()
                ),
            )
            .expect("kubeconfig");
        }
    }
}

impl Cluster0 {
    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .expect("log file")
    }

    fn in_ns(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c.stdin(Stdio::null()).stdout(Stdio::null());
        c
    }

    fn start_etcd(&mut self) {
        let child = self
            .in_ns(&self.assets.join("etcd"))
            .args(etcd_args(&self.dir))
            .stderr(self.log("etcd.log"))
            .spawn()
            .expect("etcd starts");
        self.etcd = Some(child);
    }

    fn start_apiserver(&mut self) {
        let child = self
            .in_ns(&self.assets.join("kube-apiserver"))
            .args(apiserver_args(&self.dir, "127.0.0.1"))
            .stderr(self.log("apiserver.log"))
            .spawn()
            .expect("kube-apiserver starts");
        self.apiserver = Some(child);
    }

    fn kill_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn start_daemon(&mut self) {
        let child = self
            .in_ns(Path::new(BIN))
            .args(["run", "--node-name", "node-a", "--fail-closed"])
            .arg("--kubeconfig")
            .arg(self.dir.join("daemon.kubeconfig"))
            .arg("--status-file")
            .arg(self.dir.join("status"))
            .args(["--flannel-subnet-env", "/nonexistent/subnet.env"])
            .args(["--metrics-addr", "127.0.0.1:9476"])
            .stderr(self.log("daemon.log"))
            .spawn()
            .expect("daemon starts");
        self.daemon = Some(child);
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn status(&self) -> String {
        std::fs::read_to_string(self.dir.join("status"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.ns)
    }

    fn last_sync_line(&self) -> String {
        self.daemon_log()
            .lines()
            .rfind(|l| l.contains("sync committed"))
            .unwrap_or_default()
            .to_string()
    }

    /// An admin client.
    fn client(&self) -> Client {
        let file = kube::config::Kubeconfig::read_from(self.dir.join("admin.kubeconfig"))
            .expect("kubeconfig");
        let config = block(kube::Config::from_custom_kubeconfig(
            file,
            &Default::default(),
        ))
        .expect("config");
        Client::try_from(config).expect("client")
    }
}

impl Drop for Cluster0 {
    fn drop(&mut self) {
        for c in [&mut self.daemon, &mut self.apiserver, &mut self.etcd] {
            if let Some(mut c) = c.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        if std::thread::panicking() {
            println!(
                "  work dir kept for the post-mortem: {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// etcd on the namespace's loopback, its data in `dir`.
fn etcd_args(dir: &Path) -> Vec<String> {
    let mut args = vec!["--name".to_string(), "envtest".into(), "--data-dir".into()];
    args.push(dir.join("etcd").display().to_string());
    args.extend(
        [
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=envtest=http://127.0.0.1:2380",
            "--unsafe-no-fsync",
        ]
        .map(String::from),
    );
    args
}

/// kube-apiserver serving on `addr`:6443 with the files [`write_pki`] made in `dir`.
fn apiserver_args(dir: &Path, addr: &str) -> Vec<String> {
    let file = |name: &str| dir.join(name).display().to_string();
    vec![
        format!("--bind-address={addr}"),
        format!("--advertise-address={addr}"),
        "--secure-port=6443".into(),
        "--etcd-servers=http://127.0.0.1:2379".into(),
        "--authorization-mode=RBAC".into(),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        "--disable-admission-plugins=ServiceAccount".into(),
        format!("--tls-cert-file={}", file("server.crt")),
        format!("--tls-private-key-file={}", file("server.key")),
        format!("--token-auth-file={}", file("tokens.csv")),
        format!("--service-account-key-file={}", file("sa.pub")),
        format!("--service-account-signing-key-file={}", file("sa.key")),
    ]
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("command runs");
    assert!(status.success(), "{cmd:?}: {status}");
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}

/// Polls until the API server answers (at most 60 s).
fn wait_api(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let api: Api<Namespace> = Api::all(client.clone());
    while block(api.list(&ListParams::default())).is_err() {
        assert!(Instant::now() < deadline, "the API server never answered");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The RBAC of the DaemonSet, applied as the admin.
fn apply_rbac(client: &Client) {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/kubernetes/rbac.yaml"),
    )
    .expect("rbac.yaml");
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).expect("yaml");
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("ClusterRole") => {
                let o: ClusterRole = serde_yaml::from_value(value).expect("ClusterRole");
                block(Api::<ClusterRole>::all(client.clone()).create(&PostParams::default(), &o))
                    .expect("create ClusterRole");
            }
            Some("ClusterRoleBinding") => {
                let o: ClusterRoleBinding =
                    serde_yaml::from_value(value).expect("ClusterRoleBinding");
                block(
                    Api::<ClusterRoleBinding>::all(client.clone())
                        .create(&PostParams::default(), &o),
                )
                .expect("create ClusterRoleBinding");
            }
            _ => {} // the ServiceAccount: the token file stands in for it
        }
    }
}

use serde::Deserialize;

fn create<K>(client: &Client, namespace: Option<&str>, value: serde_json::Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let object: K = serde_json::from_value(value).expect("object json");
    let api: Api<K> = Api::namespaced(client.clone(), namespace.unwrap_or("default"));
    block(api.create(&PostParams::default(), &object)).expect("create");
}

fn create_cluster_scoped<K>(client: &Client, value: serde_json::Value)
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let object: K = serde_json::from_value(value).expect("object json");
    block(Api::<K>::all(client.clone()).create(&PostParams::default(), &object)).expect("create");
}

fn namespace(client: &Client, name: &str, labels: serde_json::Value) {
    create_cluster_scoped::<Namespace>(
        client,
        json!({"metadata": {"name": name, "labels": labels}}),
    );
}

/// A pod bound to `node`; with an address, its status is set as the kubelet would.
fn pod(
    client: &Client,
    ns: &str,
    name: &str,
    node: &str,
    labels: serde_json::Value,
    ip: Option<&str>,
) {
    create::<Pod>(
        client,
        Some(ns),
        json!({"metadata": {"name": name, "namespace": ns, "labels": labels},
               "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x",
                        "ports": [{"name": "http", "containerPort": 8080}]}]}}),
    );
    if let Some(ip) = ip {
        pod_ip(client, ns, name, ip);
    }
}

fn pod_ip(client: &Client, ns: &str, name: &str, ip: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                        "hostIP": "192.168.56.10"}});
    block(api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)))
        .expect("patch status");
}

fn policy(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    create::<NetworkPolicy>(
        client,
        Some(ns),
        json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}),
    );
}

fn merge<K>(client: &Client, ns: &str, name: &str, patch: serde_json::Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    block(api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))).expect("patch");
}

fn merge_namespace(client: &Client, name: &str, patch: serde_json::Value) {
    let api: Api<Namespace> = Api::all(client.clone());
    block(api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))).expect("patch");
}

/// What the daemon must have committed: the ruleset `render` computes from what the API
/// server lists now (finished pods filtered, as the daemon's watch does).
fn expected(client: &Client, options: &Options) -> (String, String) {
    let lp = ListParams::default();
    let mut objects: Vec<Object> = Vec::new();
    let nodes = block(Api::<Node>::all(client.clone()).list(&lp)).expect("nodes");
    objects.extend(nodes.items.into_iter().map(Object::Node));
    let nss = block(Api::<Namespace>::all(client.clone()).list(&lp)).expect("namespaces");
    objects.extend(nss.items.into_iter().map(Object::Namespace));
    let pols = block(Api::<NetworkPolicy>::all(client.clone()).list(&lp)).expect("policies");
    objects.extend(pols.items.into_iter().map(Object::NetworkPolicy));
    let pods = block(Api::<Pod>::all(client.clone()).list(&lp)).expect("pods");
    objects.extend(
        pods.items
            .into_iter()
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
            })
            .map(Object::Pod),
    );
    let (cluster, _) = Cluster::from_objects(objects);
    let text = text::render(&compile_with(&cluster, "node-a", options).ruleset);
    (format!("{:016x}", fnv1a64(text.as_bytes())), text)
}

/// Waits until the daemon's committed ruleset is the expected one; returns the text.
fn converge(c: &Cluster0, client: &Client, options: &Options, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (want, text) = expected(client, options);
        if c.status() == want {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the daemon did not converge to {want} (status {:?}); log:\n{}",
            c.status(),
            c.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The kernel's table equals what `nft -f` makes of `text`.
fn assert_kernel_holds(c: &Cluster0, text: &str) {
    let script = text.to_string();
    let want = support::netns::in_private_netns(move |ns| {
        nft(ns, &["-f", "-"], Some(&script));
        normalised_listing(ns)
    });
    assert_eq!(
        normalised_listing(&c.path()),
        want,
        "kernel table vs render"
    );
}

fn metrics(c: &Cluster0) -> String {
    support::netns::http_get(&c.path(), 9476, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

fn watch_restarts(c: &Cluster0) -> f64 {
    metrics(c)
        .lines()
        .filter(|l| l.starts_with("kube_nftpol_watch_restarts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn seed(client: &Client) {
    apply_rbac(client);
    create_cluster_scoped::<Node>(
        client,
        json!({"metadata": {"name": "node-a"},
               "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}}),
    );
    namespace(client, "shop", json!({"team": "a"}));
    namespace(client, "other", json!({}));
    pod(
        client,
        "shop",
        "web",
        "node-a",
        json!({"app": "web"}),
        Some("10.244.1.10"),
    );
    pod(
        client,
        "shop",
        "db",
        "node-a",
        json!({"app": "db"}),
        Some("10.244.1.11"),
    );
    pod(
        client,
        "other",
        "client",
        "node-b",
        json!({"role": "client"}),
        Some("10.244.2.10"),
    );
    policy(
        client,
        "shop",
        "db-from-web",
        json!({"podSelector": {"matchLabels": {"app": "db"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                            "ports": [{"port": 5432}]}]}),
    );
}

/// Runs `body` on a thread inside the test's network namespace (its sockets reach the API
/// server on that loopback), with a tokio runtime entered and the ruleset options the daemon
/// picks there.
fn in_cluster(env: &Env, body: impl FnOnce(&mut Cluster0, &Options) + Send + 'static) {
    let mut c = Cluster0::new(env);
    let ns = c.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).expect("netns file");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let options = Options {
            fail_closed: true,
            ..kernel_probe::probe().expect("kernel probe").options()
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        body(&mut c, &options);
        drop(c);
        rt.shutdown_timeout(Duration::from_secs(1));
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn follows_every_kind_of_change_through_the_api(env: &Env) {
    in_cluster(env, |c, options| {
        c.start_etcd();
        c.start_apiserver();
        let client = c.client();
        wait_api(&client);
        seed(&client);
        c.start_daemon();
        let text = converge(c, &client, options, "initial list");
        assert!(
            c.last_sync_line().contains("kind=\"full\""),
            "{}",
            c.last_sync_line()
        );
        assert!(
            text.contains("10.244.1.0/24"),
            "the Node's pod CIDR is guarded:\n{text}"
        );
        assert_kernel_holds(c, &text);

        // Policy created: clients labelled role=client in namespaces team=b may reach web.
        policy(
            &client,
            "shop",
            "web-from-clients",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}},
                                          "podSelector": {"matchLabels": {"role": "client"}}}],
                                "ports": [{"port": 80}]}]}),
        );
        let text = converge(c, &client, options, "policy created");
        assert!(text.contains("web-from-clients"), "{text}");
        let line = c.last_sync_line();
        assert!(line.contains("kind=\"incremental\""), "{line}");

        // Policy updated: port 80 → the named port http.
        merge::<NetworkPolicy>(
            &client,
            "shop",
            "web-from-clients",
            json!({"spec": {"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}},
                                                   "podSelector": {"matchLabels": {"role": "client"}}}],
                                         "ports": [{"port": "http"}]}]}}),
        );
        let text = converge(c, &client, options, "policy updated");
        assert!(
            text.contains("th dport 8080"),
            "named port resolved on web:\n{text}"
        );

        // Namespace relabelled: other becomes team=b, so its client enters the peer set.
        assert!(!text.contains("10.244.2.10"), "{text}");
        merge_namespace(
            &client,
            "other",
            json!({"metadata": {"labels": {"team": "b"}}}),
        );
        let text = converge(c, &client, options, "namespace relabelled");
        assert!(text.contains("10.244.2.10"), "{text}");

        // Pod relabelled: the client is no longer role=client.
        merge::<Pod>(
            &client,
            "other",
            "client",
            json!({"metadata": {"labels": {"role": "other"}}}),
        );
        let text = converge(c, &client, options, "pod relabelled");
        assert!(!text.contains("10.244.2.10"), "{text}");

        // A pod scheduled here, its address reported later (Pending → Running).
        pod(
            &client,
            "shop",
            "web-2",
            "node-a",
            json!({"app": "web"}),
            None,
        );
        let text = converge(c, &client, options, "pod without address");
        assert!(!text.contains("10.244.1.12"), "{text}");
        pod_ip(&client, "shop", "web-2", "10.244.1.12");
        let text = converge(c, &client, options, "pod address reported");
        assert!(
            text.contains("10.244.1.12 : jump"),
            "web-2 dispatched:\n{text}"
        );
        assert!(
            c.last_sync_line().contains("kind=\"incremental\""),
            "{}",
            c.last_sync_line()
        );
        assert_kernel_holds(c, &text);

        // Policy deleted, pod deleted.
        block(
            Api::<NetworkPolicy>::namespaced(client.clone(), "shop")
                .delete("db-from-web", &DeleteParams::default()),
        )
        .expect("delete policy");
        let text = converge(c, &client, options, "policy deleted");
        assert!(!text.contains("db-from-web"), "{text}");
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        block(Api::<Pod>::namespaced(client.clone(), "shop").delete("web-2", &now))
            .expect("delete pod");
        let text = converge(c, &client, options, "pod deleted");
        assert!(!text.contains("10.244.1.12"), "{text}");
        assert_kernel_holds(c, &text);
        assert_eq!(
            watch_restarts(c),
            0.0,
            "no watch failed: {}",
            c.daemon_log()
        );
    });
}

fn api_server_down_and_restarted_never_drops_the_rules(env: &Env) {
    in_cluster(env, |c, options| {
        // The daemon starts first: nothing is written while it cannot list.
        c.start_etcd();
        c.start_daemon();
        std::thread::sleep(Duration::from_secs(2));
        let (exists, _, _) =
            support::netns::nft_status(&c.path(), &["list", "table", "inet", "kube-nftpol"], None);
        assert!(
            !exists,
            "a table was written before the initial list:\n{}",
            c.daemon_log()
        );
        assert!(
            watch_restarts(c) >= 1.0,
            "watch errors are counted: {}",
            c.daemon_log()
        );

        c.start_apiserver();
        let client = c.client();
        wait_api(&client);
        seed(&client);
        let text = converge(c, &client, options, "API server up");
        assert_kernel_holds(c, &text);
        let listing = normalised_listing(&c.path());

        // API server killed: the rules stay exactly as they are the whole time.
        let before = watch_restarts(c);
        c.kill_apiserver();
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            assert_eq!(
                normalised_listing(&c.path()),
                listing,
                "rules changed while the API server was down"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while watch_restarts(c) <= before {
            assert!(
                Instant::now() < deadline,
                "watch failures not counted: {}",
                c.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }

        // Back: the watches recover and follow new changes.
        c.start_apiserver();
        wait_api(&client);
        policy(
            &client,
            "shop",
            "deny-all",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        );
        let text = converge(c, &client, options, "change after the restart");
        assert!(text.contains("shop/deny-all"), "{text}");
        assert_kernel_holds(c, &text);
    });
}

// ---------------------------------------------------------------------------------------
// The real-traffic cluster of integration/traffic, its objects kept by an API server.

/// The API server's address: the underlay's own ("outside", on `ul0`), which both nodes
/// reach over their `eth0`.
const UNDERLAY_API: std::net::Ipv4Addr = cluster::OUTSIDE_V4;

/// etcd and kube-apiserver in the traffic cluster's underlay namespace; every manifest the
/// harness writes becomes an API object (pod status through the status subresource).
struct ApiStore {
    procs: Vec<Child>,
    client: Option<Client>,
    rt: tokio::runtime::Runtime,
    underlay: std::fs::File,
    dir: PathBuf,
}

/// A [`harness::StoreFactory`] for `Scenario::store`.
fn api_store(env: &Env) -> shared::StoreFactory {
    let assets = env.assets.clone();
    Box::new(move |cluster, work| std::sync::Arc::new(ApiStore::start(&assets, cluster, work)))
}

impl ApiStore {
    fn start(assets: &Path, cluster: &cluster::Cluster, work: &Path) -> ApiStore {
        let started = Instant::now();
        let dir = work.join("api");
        std::fs::create_dir_all(&dir).expect("api dir");
        write_pki(
            &dir,
            &format!("https://{UNDERLAY_API}:6443"),
            &format!("IP:{UNDERLAY_API},IP:127.0.0.1"),
        );
        let underlay = cluster.underlay.file().try_clone().expect("netns handle");
        let file = underlay.try_clone().expect("netns handle");
        // Worker threads inherit the namespace of the thread that builds the runtime.
        let rt = std::thread::spawn(move || {
            netns::enter(&file).expect("setns into the underlay");
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime")
        })
        .join()
        .expect("runtime thread");
        let mut store = ApiStore {
            procs: Vec::new(),
            client: None,
            rt,
            underlay,
            dir,
        };
        let ns = cluster.underlay.name.clone();
        let spawn = |store: &ApiStore, program: &str, args: Vec<String>, log: &str| {
            let log = std::fs::File::create(store.dir.join(log)).expect("log file");
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &ns]);
            if Path::new("/usr/bin/setpriv").exists() {
                cmd.args(["/usr/bin/setpriv", "--pdeathsig", "KILL", "--"]);
            }
            cmd.arg(assets.join(program))
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {program}: {e}"))
        };
        let etcd = spawn(&store, "etcd", etcd_args(&store.dir), "etcd.log");
        store.procs.push(etcd);
        let apiserver = spawn(
            &store,
            "kube-apiserver",
            apiserver_args(&store.dir, &UNDERLAY_API.to_string()),
            "apiserver.log",
        );
        store.procs.push(apiserver);
        let kubeconfig = store.dir.join("admin.kubeconfig");
        let client = store.in_underlay(move || {
            let file = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
            let config = block(kube::Config::from_custom_kubeconfig(
                file,
                &Default::default(),
            ))
            .expect("config");
            let client = Client::try_from(config).expect("client");
            wait_api(&client);
            apply_rbac(&client);
            client
        });
        store.client = Some(client);
        println!(
            "  etcd + kube-apiserver on {UNDERLAY_API}:6443 in {} up in {:.2?}",
            ns,
            started.elapsed()
        );
        store
    }

    /// Runs `f` on a thread in the underlay namespace with the runtime entered (for
    /// [`block`]).
    fn in_underlay<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                netns::enter(&self.underlay).expect("setns into the underlay");
                let _guard = self.rt.enter();
                f()
            })
            .join()
        })
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    fn api<T: Send>(&self, f: impl FnOnce(&Client) -> T + Send) -> T {
        let client = self.client.clone().expect("the API client");
        self.in_underlay(move || f(&client))
    }
}

impl Drop for ApiStore {
    fn drop(&mut self) {
        // The API server first, then etcd.
        for mut child in self.procs.drain(..).rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for log in ["apiserver.log", "etcd.log"] {
                let text = std::fs::read_to_string(self.dir.join(log)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                println!(
                    "  last lines of {log}:\n{}",
                    lines[lines.len().saturating_sub(10)..].join("\n")
                );
            }
        }
    }
}

fn get_opt<K>(api: &Api<K>, name: &str) -> Option<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    block(api.get_opt(name)).expect("get")
}

/// A merge patch that makes the object's labels exactly `labels` (removed keys as null).
fn labels_patch(
    old: Option<&std::collections::BTreeMap<String, String>>,
    new: &serde_json::Value,
) -> serde_json::Value {
    let mut labels = serde_json::Map::new();
    for key in old.into_iter().flat_map(|m| m.keys()) {
        labels.insert(key.clone(), serde_json::Value::Null);
    }
    if let Some(new) = new.as_object() {
        labels.extend(new.clone());
    }
    json!({"metadata": {"labels": labels}})
}

/// The Namespace object, with the name label the 1.20 API server does not add itself.
fn ensure_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    if get_opt(&api, name).is_none() {
        namespace(
            client,
            name,
            json!({support::oracle::NAMESPACE_NAME_LABEL: name}),
        );
    }
}

impl driver::ObjectStore for ApiStore {
    fn daemon_args(&self) -> Vec<String> {
        vec![
            "--kubeconfig".into(),
            self.dir.join("daemon.kubeconfig").display().to_string(),
        ]
    }

    fn put(&self, yaml: &str) {
        let (value, kind, name, ns) = identity(yaml);
        let labels = value["metadata"]["labels"].clone();
        let mut bare = value.clone();
        let status = bare.as_object_mut().and_then(|o| o.remove("status"));
        self.api(move |client| match kind.as_str() {
            "Namespace" => {
                let api: Api<Namespace> = Api::all(client.clone());
                match get_opt(&api, &name) {
                    None => create_cluster_scoped::<Namespace>(client, bare),
                    Some(old) => {
                        let patch = labels_patch(old.metadata.labels.as_ref(), &labels);
                        block(api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)))
                            .expect("patch namespace labels");
                    }
                }
            }
            "Pod" => {
                ensure_namespace(client, &ns);
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                match get_opt(&api, &name) {
                    None => create::<Pod>(client, Some(&ns), bare),
                    Some(old) => {
                        let patch = labels_patch(old.metadata.labels.as_ref(), &labels);
                        block(api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)))
                            .expect("patch pod labels");
                    }
                }
                // As the kubelet reports it; fields the manifest lacks are cleared.
                let mut status = status.unwrap_or_else(|| json!({}));
                for key in ["podIP", "podIPs", "hostIP"] {
                    if status.get(key).is_none() {
                        status[key] = serde_json::Value::Null;
                    }
                }
                let patch = json!({ "status": status });
                block(api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)))
                    .expect("patch pod status");
            }
            "NetworkPolicy" => {
                ensure_namespace(client, &ns);
                let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
                match get_opt(&api, &name) {
                    None => create::<NetworkPolicy>(client, Some(&ns), bare),
                    Some(old) => {
                        let mut new: NetworkPolicy =
                            serde_json::from_value(bare).expect("NetworkPolicy");
                        new.metadata.namespace = Some(ns.clone());
                        new.metadata.resource_version = old.metadata.resource_version;
                        block(api.replace(&name, &PostParams::default(), &new))
                            .expect("replace policy");
                    }
                }
            }
            "Node" => {
                let api: Api<Node> = Api::all(client.clone());
                if get_opt(&api, &name).is_none() {
                    create_cluster_scoped::<Node>(client, bare);
                }
                if let Some(status) = status {
                    let patch = json!({ "status": status });
                    block(api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)))
                        .expect("patch node status");
                }
            }
            other => panic!("the API store has no {other:?}"),
        });
    }

    fn remove(&self, yaml: &str) {
        let (_, kind, name, ns) = identity(yaml);
        self.api(move |client| {
            let now = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            let result = match kind.as_str() {
                "Pod" => block(Api::<Pod>::namespaced(client.clone(), &ns).delete(&name, &now))
                    .map(|_| ()),
                "NetworkPolicy" => {
                    block(Api::<NetworkPolicy>::namespaced(client.clone(), &ns).delete(&name, &now))
                        .map(|_| ())
                }
                "Namespace" => {
                    block(Api::<Namespace>::all(client.clone()).delete(&name, &now)).map(|_| ())
                }
                "Node" => block(Api::<Node>::all(client.clone()).delete(&name, &now)).map(|_| ()),
                other => panic!("the API store has no {other:?}"),
            };
            result.unwrap_or_else(|e| panic!("deleting {kind} {ns}/{name}: {e}"));
        });
    }

    fn objects(&self) -> Vec<Object> {
        self.api(|client| {
            let lp = ListParams::default();
            let mut objects: Vec<Object> = Vec::new();
            let nodes = block(Api::<Node>::all(client.clone()).list(&lp)).expect("nodes");
            objects.extend(nodes.items.into_iter().map(Object::Node));
            let nss = block(Api::<Namespace>::all(client.clone()).list(&lp)).expect("namespaces");
            objects.extend(nss.items.into_iter().map(Object::Namespace));
            let pols =
                block(Api::<NetworkPolicy>::all(client.clone()).list(&lp)).expect("policies");
            objects.extend(pols.items.into_iter().map(Object::NetworkPolicy));
            let pods = block(Api::<Pod>::all(client.clone()).list(&lp)).expect("pods");
            objects.extend(
                pods.items
                    .into_iter()
                    .filter(|p| {
                        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                        !matches!(phase, Some("Succeeded" | "Failed"))
                    })
                    .map(Object::Pod),
            );
            objects
        })
    }
}

/// A manifest as JSON, with its kind, name and namespace (`default` when absent).
fn identity(yaml: &str) -> (serde_json::Value, String, String, String) {
    let value: serde_json::Value = serde_yaml::from_str(yaml).expect("manifest yaml");
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let kind = text(&value["kind"]).unwrap_or_default();
    let name = text(&value["metadata"]["name"]).expect("a name");
    let ns = text(&value["metadata"]["namespace"]).unwrap_or_else(|| "default".into());
    (value, kind, name, ns)
}
