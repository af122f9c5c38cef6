//! The Kubernetes API as a source: kube-rs watchers on all Pods, Namespaces and
//! NetworkPolicies, and on this node's Node object.
//!
//! - Objects are trimmed to what the compiler reads before they leave this module (labels,
//!   names, node, phase, addresses, named container ports, the policy spec, the node's pod
//!   CIDRs and addresses), so nothing else of 10,000 pods is ever held.
//! - Finished pods (phase Succeeded/Failed) are filtered by the API server: policies never
//!   see them, and a pod that finishes arrives as a deletion.
//! - Each (re)list — the first one, and every one after a watch expired or failed — is
//!   buffered and delivered as one [`Change::Reset`] of its kind, which drops objects that are
//!   gone. [`Update::InitDone`] follows once every watch has listed once: until then the
//!   daemon writes nothing, and the rules of a previous run stay in force.
//! - Watch errors (API server unreachable, expired resource versions, RBAC) are reported as
//!   [`Update::WatchError`] and retried with kube-runtime's default backoff (exponential, up
//!   to about 30 s); the last committed ruleset stays in force meanwhile.

use std::fmt::Debug;
use std::path::Path;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::{Change, Update};
use crate::model::{Kind, Object};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("not running in a cluster (no --kubeconfig or --manifests given): {0}")]
    InCluster(kube::config::InClusterError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(kube::Error),
}

/// A client from `--kubeconfig PATH`, or the in-cluster service account when `None`.
/// Must be called inside a tokio runtime.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| Error::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(err)?
        }
        None => kube::Config::incluster().map_err(Error::InCluster)?,
    };
    Client::try_from(config).map_err(Error::Client)
}

/// The resources watched, in the order their first lists are awaited.
pub const RESOURCES: [Kind; 4] = [Kind::Node, Kind::Namespace, Kind::NetworkPolicy, Kind::Pod];

/// Runs the four watches until `emit` returns false (the daemon is gone).
pub async fn run(client: Client, node_name: String, mut emit: impl FnMut(Update) -> bool) {
    let node_filter = format!("metadata.name={node_name}");
    let live_pods = "status.phase!=Succeeded,status.phase!=Failed";
    let streams = futures::stream::select_all([
        watch::<core::Node>(
            &client,
            Kind::Node,
            watcher::Config::default().fields(&node_filter),
        ),
        watch::<core::Namespace>(&client, Kind::Namespace, watcher::Config::default()),
        watch::<net::NetworkPolicy>(&client, Kind::NetworkPolicy, watcher::Config::default()),
        watch::<core::Pod>(
            &client,
            Kind::Pod,
            watcher::Config::default().fields(live_pods),
        ),
    ]);
    let mut streams = std::pin::pin!(streams);
    let mut buffers: Vec<(Kind, Vec<Object>)> = Vec::new();
    let mut listed: Vec<Kind> = Vec::new();
    let mut init_done = false;
    while let Some((kind, item)) = streams.next().await {
        let update = match item {
            Err(e) => Some(Update::WatchError {
                resource: kind.as_str(),
                error: e.to_string(),
            }),
            Ok(Event::Init) => {
                buffers.retain(|(k, _)| *k != kind);
                buffers.push((kind, Vec::new()));
                None
            }
            Ok(Event::InitApply(object)) => {
                if let Some((_, buffer)) = buffers.iter_mut().find(|(k, _)| *k == kind) {
                    buffer.push(object);
                }
                None
            }
            Ok(Event::InitDone) => {
                let objects = match buffers.iter().position(|(k, _)| *k == kind) {
                    Some(i) => buffers.swap_remove(i).1,
                    None => Vec::new(),
                };
                if !listed.contains(&kind) {
                    listed.push(kind);
                }
                Some(Update::Change(Change::Reset(kind, objects)))
            }
            Ok(Event::Apply(object)) => Some(Update::Change(Change::Apply(Box::new(object)))),
            Ok(Event::Delete(object)) => Some(Update::Change(Change::Delete(object.object_ref()))),
        };
        if let Some(update) = update {
            if !emit(update) {
                return;
            }
        }
        if !init_done && RESOURCES.iter().all(|k| listed.contains(k)) {
            init_done = true;
            if !emit(Update::InitDone) {
                return;
            }
        }
    }
}

type Tagged = (Kind, Result<Event<Object>, watcher::Error>);

/// One watch, its objects trimmed and wrapped, tagged with its kind.
fn watch<K>(
    client: &Client,
    kind: Kind,
    config: watcher::Config,
) -> std::pin::Pin<Box<dyn Stream<Item = Tagged> + Send>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static + Trim,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    Box::pin(
        watcher(api, config)
            .default_backoff()
            .map(move |item| (kind, item.map(trim_event))),
    )
}

fn trim_event<K: Trim>(event: Event<K>) -> Event<Object> {
    match event {
        Event::Apply(o) => Event::Apply(o.trim()),
        Event::Delete(o) => Event::Delete(o.trim()),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(o.trim()),
        Event::InitDone => Event::InitDone,
    }
}

/// Keeps only what the compiler reads.
pub trait Trim {
    fn trim(self) -> Object;
}

fn meta(m: ObjectMeta, namespaced: bool) -> ObjectMeta {
    ObjectMeta {
        name: m.name,
        namespace: if namespaced { m.namespace } else { None },
        labels: m.labels,
        ..ObjectMeta::default()
    }
}

impl Trim for core::Pod {
    fn trim(self) -> Object {
        let spec = self.spec.map(|s| core::PodSpec {
            node_name: s.node_name,
            host_network: s.host_network,
            containers: s
                .containers
                .into_iter()
                .map(|c| core::Container {
                    name: c.name,
                    ports: c
                        .ports
                        .map(|ports| ports.into_iter().filter(|p| p.name.is_some()).collect()),
                    ..core::Container::default()
                })
                .collect(),
            ..core::PodSpec::default()
        });
        let status = self.status.map(|s| core::PodStatus {
            phase: s.phase,
            pod_ip: s.pod_ip,
            pod_ips: s.pod_ips,
            host_ip: s.host_ip,
            host_ips: s.host_ips,
            ..core::PodStatus::default()
        });
        Object::Pod(core::Pod {
            metadata: meta(self.metadata, true),
            spec,
            status,
        })
    }
}

impl Trim for core::Namespace {
    fn trim(self) -> Object {
        Object::Namespace(core::Namespace {
            metadata: meta(self.metadata, false),
            spec: None,
            status: None,
        })
    }
}

impl Trim for net::NetworkPolicy {
    fn trim(self) -> Object {
        Object::NetworkPolicy(net::NetworkPolicy {
            metadata: meta(self.metadata, true),
            spec: self.spec,
        })
    }
}

impl Trim for core::Node {
    fn trim(self) -> Object {
        let spec = self.spec.map(|s| core::NodeSpec {
            pod_cidr: s.pod_cidr,
            pod_cidrs: s.pod_cidrs,
            ..core::NodeSpec::default()
        });
        let status = self.status.map(|s| core::NodeStatus {
            addresses: s.addresses,
            ..core::NodeStatus::default()
        });
        Object::Node(core::Node {
            metadata: meta(self.metadata, false),
            spec,
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Cluster;

    fn pod_json() -> core::Pod {
        let text = r#"{
          "apiVersion": "v1", "kind": "Pod",
          "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"},
                       "annotations": {"big": "xxxxxxxxxxxxxxxxxxxxxxxx"},
                       "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
                       "uid": "1234", "resourceVersion": "99"},
          "spec": {"nodeName": "node-a", "serviceAccountName": "default",
                   "containers": [{"name": "c", "image": "nginx", "env": [{"name": "A", "value": "1"}],
                                   "ports": [{"name": "http", "containerPort": 80},
                                             {"containerPort": 9090}]}]},
          "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}],
                     "hostIP": "192.168.1.10",
                     "conditions": [{"type": "Ready", "status": "True"}]}
        }"#;
        serde_json::from_str(text).expect("pod json")
    }

    #[test]
    fn trimming_a_pod_keeps_what_the_compiler_reads_and_drops_the_rest() {
        let full = pod_json();
        let (cluster_full, _) = Cluster::from_objects([Object::Pod(full.clone())]);
        let trimmed = full.trim();
        let (cluster_trimmed, _) = Cluster::from_objects([trimmed.clone()]);
        assert_eq!(
            cluster_full.pod("shop", "web"),
            cluster_trimmed.pod("shop", "web"),
            "the model must not see a difference"
        );
        let Object::Pod(p) = trimmed else {
            panic!("a pod stays a pod")
        };
        assert!(p.metadata.annotations.is_none() && p.metadata.managed_fields.is_none());
        assert!(p.metadata.uid.is_none());
        let spec = p.spec.expect("spec kept");
        assert_eq!(spec.service_account_name, None);
        assert_eq!(spec.containers[0].image, None);
        assert_eq!(spec.containers[0].env, None);
        let ports = spec.containers[0].ports.as_ref().expect("named ports kept");
        assert_eq!(ports.len(), 1, "unnamed ports are never referred to");
        assert_eq!(p.status.expect("status").conditions, None);
    }

    #[test]
    fn trimming_a_node_keeps_pod_cidrs_and_addresses() {
        let text = r#"{"metadata": {"name": "node-a", "labels": {"x": "y"}, "annotations": {"flannel.alpha.coreos.com/public-ip": "1.2.3.4"}},
          "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"], "providerID": "p"},
          "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}],
                     "images": [{"names": ["nginx"], "sizeBytes": 1}]}}"#;
        let node: core::Node = serde_json::from_str(text).expect("node json");
        let (full, _) = Cluster::from_objects([Object::Node(node.clone())]);
        let (trimmed, _) = Cluster::from_objects([node.trim()]);
        assert_eq!(full.node("node-a"), trimmed.node("node-a"));
        assert_eq!(trimmed.node_pod_cidrs("node-a").len(), 2);
    }
}
