//! Where cluster state comes from. Sources turn the outside world into [`Object`]s
//! (k8s-openapi types) and report them as [`Update`]s; they never interpret policy.
//!
//! - [`watch`]: a directory of manifests, polled.
//! - [`kube`]: the Kubernetes API, through kube-rs watchers.

pub mod kube;
pub mod manifests;
pub mod watch;

use crate::model::{Kind, Object, ObjectRef};

/// A change to the cluster state a source describes.
#[derive(Clone, Debug)]
pub enum Change {
    /// Boxed: objects are large and travel through a channel.
    Apply(Box<Object>),
    Delete(ObjectRef),
    /// The complete current set of objects of one kind (a re-list): those not in it are gone.
    Reset(Kind, Vec<Object>),
}

/// What a source reports.
#[derive(Debug)]
pub enum Update {
    Change(Change),
    /// The source has delivered its complete initial state.
    InitDone,
    /// A watch failed and will be retried; the state known so far stays in force.
    WatchError {
        resource: &'static str,
        error: String,
    },
}
