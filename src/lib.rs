//! kube-nftpol: Kubernetes NetworkPolicy enforcement for clusters whose CNI has none
//! (Flannel first), compiled into one nftables table per node.
//!
//! Data flows one way:
//!
//! ```text
//!  sources ──objects──► model (cluster state) ──► compile ──► Ruleset (a value)
//!  manifests dir         validated, fail-closed     pure        │
//!  (kube-rs later)                                              ├─► render::text  (nft syntax)
//!                                                               ├─► ruleset::eval (packets in, verdict out)
//!                                                               └─► explain       (cluster-wide path)
//! ```
//!
//! - [`model`], [`compile`], [`ruleset`], [`render::text`] and [`explain`] are pure: no I/O,
//!   no kube, tokio, nftnl or mnl (`tests/purity.rs` checks). Everything about policy
//!   semantics is testable without root.
//! - [`sources`] turn files (later the API server) into `k8s-openapi` objects;
//!   [`model::Cluster::apply`] is the one place they become model values, and bad fields
//!   become [`model::Diagnostic`]s naming the object and the field, read fail-closed.
//!
//! The semantics enforced are written down in `docs/semantics.md`; the ruleset's shape and
//! the reasons for it in `rules/README.md`.

pub mod compile;
pub mod daemon;
pub mod dataplane;
pub mod explain;
pub mod model;
pub mod render;
pub mod ruleset;
pub mod sources;
