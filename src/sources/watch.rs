//! Watching a manifests directory: each [`Watcher::scan`] re-reads the files whose metadata
//! changed and reports what changed since the previous scan, object by object.
//!
//! Polling (the daemon scans every 250 ms) rather than inotify: it works the same on every
//! filesystem, with ConfigMap mounts that swap a `..data` symlink, and with editors that
//! replace files; a scan that finds nothing new costs one `stat` per file.
//!
//! Fail closed: a file that stops parsing keeps its last good objects (a syntax error in an
//! edit must not delete the policies the file held) until it parses again or is deleted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::manifests::{is_manifest, parse_file, Error, Problem};
use crate::model::{Object, ObjectRef};

pub use super::Change;

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    pub changes: Vec<Change>,
    /// Problems of the files (re)read by this scan.
    pub problems: Vec<Problem>,
    /// Files that did not parse and whose previous objects are kept, with how many.
    pub kept: Vec<(PathBuf, usize)>,
    /// How many files were (re)read.
    pub files_read: usize,
}

/// Enough of a file's metadata to notice that it changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

struct FileState {
    stamp: Stamp,
    objects: BTreeMap<ObjectRef, Object>,
}

pub struct Watcher {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// The state last reported, merged over all files.
    reported: BTreeMap<ObjectRef, Object>,
}

impl Watcher {
    pub fn new(dir: &Path) -> Watcher {
        Watcher {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            reported: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads what changed. An unreadable directory is an error and changes nothing (the
    /// last known state stays in force).
    pub fn scan(&mut self) -> Result<Scan, Error> {
        use std::os::unix::fs::MetadataExt;
        let read_err = |source| Error::ReadDir {
            path: self.dir.clone(),
            source,
        };
        let mut present: BTreeMap<PathBuf, Stamp> = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir).map_err(read_err)? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            if !is_manifest(&path) {
                continue;
            }
            // Follows symlinks, so a ConfigMap's `..data` swap shows as a new inode.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_file() {
                present.insert(
                    path,
                    Stamp {
                        modified: meta.modified().ok(),
                        len: meta.len(),
                        inode: meta.ino(),
                    },
                );
            }
        }

        let mut scan = Scan::default();
        self.files.retain(|path, _| present.contains_key(path));
        for (path, stamp) in present {
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            scan.files_read += 1;
            let (objects, problems) = match std::fs::read_to_string(&path) {
                Ok(text) => parse_file(&path, &text),
                Err(e) => (
                    vec![],
                    vec![Problem {
                        file: path.clone(),
                        document: None,
                        object: None,
                        message: format!("cannot read: {e}"),
                        fatal: true,
                    }],
                ),
            };
            let unreadable = problems.iter().any(|p| p.fatal);
            scan.problems.extend(problems);
            let mut fresh: BTreeMap<ObjectRef, Object> =
                objects.into_iter().map(|o| (o.object_ref(), o)).collect();
            if unreadable {
                if let Some(old) = self.files.get(&path) {
                    let mut kept = 0;
                    for (id, object) in &old.objects {
                        if !fresh.contains_key(id) {
                            fresh.insert(id.clone(), object.clone());
                            kept += 1;
                        }
                    }
                    if kept > 0 {
                        scan.kept.push((path.clone(), kept));
                    }
                }
            }
            self.files.insert(
                path,
                FileState {
                    stamp,
                    objects: fresh,
                },
            );
        }

        // Later files win over earlier ones for the same object, as in `load_dir`.
        let mut merged: BTreeMap<ObjectRef, &Object> = BTreeMap::new();
        for file in self.files.values() {
            for (id, object) in &file.objects {
                merged.insert(id.clone(), object);
            }
        }
        for (id, object) in &merged {
            if self.reported.get(id) != Some(*object) {
                scan.changes
                    .push(Change::Apply(Box::new((*object).clone())));
            }
        }
        for id in self.reported.keys() {
            if !merged.contains_key(id) {
                scan.changes.push(Change::Delete(id.clone()));
            }
        }
        self.reported = merged.into_iter().map(|(id, o)| (id, o.clone())).collect();
        Ok(scan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";
    const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec: {podSelector: {}}\n";

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("knp-watch-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("temp dir");
            TempDir(p)
        }
        fn write(&self, name: &str, text: &str) {
            // Write a new file and rename it over the old one: a new inode, as editors and
            // ConfigMap updates produce, so the change is seen even within one mtime tick.
            let tmp = self.0.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, self.0.join(name)).expect("rename");
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn names(scan: &Scan) -> Vec<String> {
        scan.changes
            .iter()
            .map(|c| match c {
                Change::Apply(o) => format!("apply {}", o.object_ref()),
                Change::Delete(r) => format!("delete {r}"),
                Change::Reset(k, objects) => format!("reset {k} ({})", objects.len()),
            })
            .collect()
    }

    #[test]
    fn reports_additions_edits_and_deletions_object_by_object() {
        let dir = TempDir::new("changes");
        let mut w = Watcher::new(&dir.0);
        dir.write("a.yaml", NS);
        dir.write("b.yaml", POLICY);
        assert_eq!(
            names(&w.scan().expect("scan")),
            vec!["apply Namespace a", "apply NetworkPolicy a/p"]
        );
        let idle = w.scan().expect("scan");
        assert!(
            idle.changes.is_empty() && idle.files_read == 0,
            "nothing changed, nothing read"
        );
        dir.write(
            "b.yaml",
            &POLICY.replace("podSelector: {}", "podSelector: {matchLabels: {x: y}}"),
        );
        assert_eq!(
            names(&w.scan().expect("scan")),
            vec!["apply NetworkPolicy a/p"]
        );
        std::fs::remove_file(dir.0.join("b.yaml")).expect("rm");
        assert_eq!(
            names(&w.scan().expect("scan")),
            vec!["delete NetworkPolicy a/p"]
        );
    }

    #[test]
    fn a_file_that_stops_parsing_keeps_its_last_good_objects() {
        let dir = TempDir::new("broken");
        let mut w = Watcher::new(&dir.0);
        dir.write("p.yaml", &format!("{NS}---\n{POLICY}"));
        assert_eq!(w.scan().expect("scan").changes.len(), 2);
        dir.write("p.yaml", &format!("{NS}---\nkind: [unclosed\n"));
        let scan = w.scan().expect("scan");
        assert!(
            scan.changes.is_empty(),
            "nothing deleted: {:?}",
            names(&scan)
        );
        assert_eq!(scan.kept, vec![(dir.0.join("p.yaml"), 1)]);
        assert!(scan.problems.iter().any(|p| p.fatal));
        // Once it parses again, what it says counts.
        dir.write("p.yaml", NS);
        assert_eq!(
            names(&w.scan().expect("scan")),
            vec!["delete NetworkPolicy a/p"]
        );
    }

    #[test]
    fn ignored_kinds_do_not_keep_stale_objects() {
        let dir = TempDir::new("ignored");
        let mut w = Watcher::new(&dir.0);
        dir.write("p.yaml", POLICY);
        w.scan().expect("scan");
        dir.write(
            "p.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
        );
        let scan = w.scan().expect("scan");
        assert_eq!(
            names(&scan),
            vec!["delete NetworkPolicy a/p"],
            "a readable file is taken at its word"
        );
        assert!(scan.problems.iter().all(|p| !p.fatal));
    }

    #[test]
    fn later_files_win_and_the_earlier_definition_returns_when_the_later_goes() {
        let dir = TempDir::new("dupes");
        let mut w = Watcher::new(&dir.0);
        dir.write("a.yaml", POLICY);
        dir.write(
            "b.yaml",
            &POLICY.replace("podSelector: {}", "podSelector: {matchLabels: {b: b}}"),
        );
        let scan = w.scan().expect("scan");
        assert_eq!(names(&scan), vec!["apply NetworkPolicy a/p"]);
        std::fs::remove_file(dir.0.join("b.yaml")).expect("rm");
        let scan = w.scan().expect("scan");
        assert_eq!(
            names(&scan),
            vec!["apply NetworkPolicy a/p"],
            "a.yaml's definition is back"
        );
    }

    #[test]
    fn an_unreadable_directory_is_an_error() {
        let mut w = Watcher::new(Path::new("/nonexistent/knp"));
        assert!(w.scan().is_err());
    }
}
