//! Where cluster state comes from. Sources turn the outside world into [`Object`]s
//! (k8s-openapi types); they never interpret policy.
//!
//! [`Object`]: crate::model::Object

pub mod manifests;
pub mod watch;
