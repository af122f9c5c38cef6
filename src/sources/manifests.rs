//! A directory of Kubernetes manifests: `*.yaml`, `*.yml` and `*.json` files (not recursive,
//! hidden files skipped), each with one or more documents of kind `Namespace`, `Node`, `Pod`,
//! `NetworkPolicy`, or a `List` of them.
//!
//! A document that does not parse, or has a kind kube-nftpol does not read, is a [`Problem`]
//! naming the file, the document and, when it can be read, the object and the field; the
//! other documents are still used.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::model::Object;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read manifests directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// Short label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::ReadDir { .. } => "read_dir",
        }
    }
}

/// Something wrong with one document (or a whole file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based document number within the file; `None` for the whole file.
    pub document: Option<usize>,
    /// `Kind namespace/name` when the document got that far.
    pub object: Option<String>,
    pub message: String,
    /// The document could not be read, so what it held is unknown (as opposed to a document
    /// that was read and is deliberately ignored, like a Deployment).
    pub fatal: bool,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(d) = self.document {
            write!(f, " (document {d})")?;
        }
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Vec<Object>,
    pub problems: Vec<Problem>,
}

/// Whether `path` names a file this source reads.
pub fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str());
    !hidden && matches!(ext, Some("yaml" | "yml" | "json"))
}

/// Reads every manifest in `dir`, in file-name order.
pub fn load_dir(dir: &Path) -> Result<Loaded, Error> {
    let read_err = |source| Error::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_manifest(p))
        .collect();
    files.sort();
    let mut loaded = Loaded::default();
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in files {
        let (objects, problems) = match std::fs::read_to_string(&file) {
            Ok(text) => parse_file(&file, &text),
            Err(e) => (
                vec![],
                vec![problem(
                    &file,
                    None,
                    None,
                    format!("cannot read: {e}"),
                    true,
                )],
            ),
        };
        loaded.problems.extend(problems);
        for object in objects {
            let id = object.object_ref().to_string();
            if let Some(first) = seen.insert(id.clone(), file.clone()) {
                loaded.problems.push(problem(
                    &file,
                    None,
                    Some(id),
                    format!(
                        "also defined in {}; this later definition wins",
                        first.display()
                    ),
                    false,
                ));
            }
            loaded.objects.push(object);
        }
    }
    Ok(loaded)
}

fn problem(
    file: &Path,
    document: Option<usize>,
    object: Option<String>,
    message: String,
    fatal: bool,
) -> Problem {
    Problem {
        file: file.to_path_buf(),
        document,
        object,
        message,
        fatal,
    }
}

/// Parses one file's text. Documents before a syntax error are kept.
pub fn parse_file(file: &Path, text: &str) -> (Vec<Object>, Vec<Problem>) {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    let is_json = file.extension().and_then(|e| e.to_str()) == Some("json");
    let documents: Vec<Result<Value, String>> = if is_json {
        vec![serde_json::from_str::<Value>(text).map_err(|e| format!("invalid JSON: {e}"))]
    } else {
        let mut docs = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            match <Value as serde::Deserialize>::deserialize(doc) {
                Ok(v) => docs.push(Ok(v)),
                Err(e) => {
                    // The stream cannot be resumed after a syntax error.
                    docs.push(Err(format!("invalid YAML: {e}")));
                    break;
                }
            }
        }
        docs
    };
    for (i, doc) in documents.into_iter().enumerate() {
        let number = Some(i + 1);
        match doc {
            Err(message) => problems.push(problem(file, number, None, message, true)),
            Ok(Value::Null) => {}
            Ok(value) => read_value(value, &mut |result| match result {
                Ok(object) => objects.push(object),
                Err((object, message, fatal)) => {
                    problems.push(problem(file, number, object, message, fatal))
                }
            }),
        }
    }
    (objects, problems)
}

/// An object, or (who, what is wrong, whether the document was unreadable).
type Outcome = Result<Object, (Option<String>, String, bool)>;

fn read_value(value: Value, out: &mut dyn FnMut(Outcome)) {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let kind = text(&value, "kind");
    let api_version = text(&value, "apiVersion");
    let meta = value.get("metadata");
    let name = meta.and_then(|m| text(m, "name")).unwrap_or_default();
    let namespace = meta
        .and_then(|m| text(m, "namespace"))
        .unwrap_or_else(|| "default".into());
    let who = |kind: &str, namespaced: bool| {
        if namespaced {
            format!("{kind} {namespace}/{name}")
        } else {
            format!("{kind} {name}")
        }
    };
    match (kind.as_deref(), api_version.as_deref()) {
        (Some("List"), _) => match value.get("items").and_then(Value::as_sequence) {
            Some(items) => items.iter().for_each(|item| read_value(item.clone(), out)),
            None => out(Err((None, "List without items".to_string(), true))),
        },
        (Some("Namespace"), Some("v1")) => {
            out(typed::<core::Namespace>(value, who("Namespace", false)).map(Object::Namespace))
        }
        (Some("Node"), Some("v1")) => {
            out(typed::<core::Node>(value, who("Node", false)).map(Object::Node))
        }
        (Some("Pod"), Some("v1")) => {
            out(typed::<core::Pod>(value, who("Pod", true)).map(Object::Pod))
        }
        (Some("NetworkPolicy"), Some("networking.k8s.io/v1")) => out(typed::<net::NetworkPolicy>(
            value,
            who("NetworkPolicy", true),
        )
        .map(Object::NetworkPolicy)),
        (Some(k @ ("Namespace" | "Node" | "Pod" | "NetworkPolicy")), v) => out(Err((
            Some(who(k, k == "Pod" || k == "NetworkPolicy")),
            format!(
                "apiVersion {:?} is not read (expected {})",
                v.unwrap_or(""),
                expected_version(k)
            ),
            // A policy whose apiVersion gained a typo must not silently disappear.
            true,
        ))),
        (Some(k), _) => out(Err((
            Some(format!("{k} {name}")),
            "kind not read by kube-nftpol (only Namespace, Node, Pod, NetworkPolicy and List); ignored"
                .to_string(),
            false,
        ))),
        (None, _) => out(Err((None, "document has no kind".to_string(), true))),
    }
}

fn expected_version(kind: &str) -> &'static str {
    match kind {
        "NetworkPolicy" => "networking.k8s.io/v1",
        _ => "v1",
    }
}

/// Deserialises with the path of the failing field in the error.
fn typed<T: DeserializeOwned>(
    value: Value,
    who: String,
) -> Result<T, (Option<String>, String, bool)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        (Some(who), message, true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_lists_and_bad_documents() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: p, namespace: a}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: np, namespace: a}
  spec:
    ingress: [{from: [{ipBlock: {cidr: [10.0.0.0/8]}}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
---
apiVersion: extensions/v1beta1
kind: NetworkPolicy
metadata: {name: old}
---
"#;
        let (objects, problems) = parse_file(Path::new("x.yaml"), text);
        assert_eq!(objects.len(), 2, "namespace and pod");
        let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown.len(), 3, "{shown:#?}");
        assert_eq!(
            shown[0],
            "x.yaml (document 2): NetworkPolicy a/np: spec.ingress[0].from[0].ipBlock.cidr: invalid type: sequence, expected a string"
        );
        assert!(
            shown[1].starts_with("x.yaml (document 3): Deployment d: kind not read"),
            "{}",
            shown[1]
        );
        assert!(shown[2].starts_with("x.yaml (document 4): NetworkPolicy default/old: apiVersion \"extensions/v1beta1\" is not read"), "{}", shown[2]);
    }

    #[test]
    fn syntax_error_keeps_earlier_documents() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [unclosed\n";
        let (objects, problems) = parse_file(Path::new("bad.yml"), text);
        assert_eq!(objects.len(), 1);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .to_string()
                .starts_with("bad.yml (document 2): invalid YAML"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn json_and_wrong_types() {
        let text = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","ports":[{"containerPort":"eighty"}]}]}}"#;
        let (objects, problems) = parse_file(Path::new("p.json"), text);
        assert!(objects.is_empty());
        assert_eq!(problems.len(), 1);
        let shown = problems[0].to_string();
        assert!(shown.starts_with("p.json (document 1): Pod default/p: spec.containers[0].ports[0].containerPort: invalid type"), "{shown}");
    }

    #[test]
    fn only_manifest_files_are_read() {
        assert!(is_manifest(Path::new("/d/a.yaml")));
        assert!(is_manifest(Path::new("/d/a.yml")));
        assert!(is_manifest(Path::new("/d/a.json")));
        assert!(!is_manifest(Path::new("/d/.a.yaml.swp")));
        assert!(!is_manifest(Path::new("/d/.hidden.yaml")));
        assert!(!is_manifest(Path::new("/d/README.md")));
    }
}
