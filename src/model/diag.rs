use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Node,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Node => "Node",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of an object, as people write it: `Kind namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// Namespaced kinds default to `default`, as kubectl does.
    pub fn new(kind: Kind, namespace: Option<&Option<String>>, name: &Option<String>) -> Self {
        let namespace = match kind {
            Kind::Namespace | Kind::Node => None,
            _ => Some(
                namespace
                    .and_then(|n| n.as_deref())
                    .filter(|n| !n.is_empty())
                    .unwrap_or("default")
                    .to_string(),
            ),
        };
        ObjectRef {
            kind,
            namespace,
            name: name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// What kube-nftpol does about a bad field: always the fail-closed reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effect {
    /// The rule allows nothing; the policy still isolates the pods it selects.
    RuleIgnored,
    /// The policy selects every pod of its namespace.
    SelectsWholeNamespace,
    /// The policy isolates both ingress and egress.
    IsolatesBothDirections,
    /// The address is ignored (a pod without a valid address is not seen by policies).
    AddressIgnored,
    /// The container port cannot be referred to by name.
    PortIgnored,
    /// The object is not used at all.
    ObjectIgnored,
    /// A node pod CIDR is left out of `--fail-closed`'s guard.
    CidrIgnored,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::RuleIgnored => {
                "rule ignored: it allows nothing, the policy still isolates its pods"
            }
            Effect::SelectsWholeNamespace => "the policy selects every pod of its namespace",
            Effect::IsolatesBothDirections => "the policy isolates both ingress and egress",
            Effect::AddressIgnored => "address ignored",
            Effect::PortIgnored => "port ignored for named-port lookups",
            Effect::ObjectIgnored => "object ignored",
            Effect::CidrIgnored => "pod CIDR not guarded by --fail-closed",
        }
    }
}

/// A bad field in an object: `NetworkPolicy ns/name: spec.ingress[0].from[1].ipBlock.cidr:
/// invalid CIDR "10.0.0.0/33" (rule ignored: ...)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    pub object: ObjectRef,
    pub field: String,
    pub message: String,
    pub effect: Effect,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {} ({})",
            self.object,
            self.field,
            self.message,
            self.effect.as_str()
        )
    }
}
