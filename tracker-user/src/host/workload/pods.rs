//! Pod names without the Kubernetes API: the kubelet keeps each pod's logs in
//! `/var/log/pods/<namespace>_<name>_<uid>/`, read when a pod's uid is first seen.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

/// Where the kubelet keeps pods' logs.
pub const KUBELET_PODS_LOG_DIR: &str = "/var/log/pods";

/// Namespace and name of pods by uid, from the kubelet's log directories.
#[derive(Debug)]
pub struct PodNames {
    dir: PathBuf,
    by_uid: HashMap<String, Option<(String, String)>>,
}

impl Default for PodNames {
    fn default() -> Self {
        Self::at(PathBuf::from(KUBELET_PODS_LOG_DIR))
    }
}

impl PodNames {
    /// Names from the log directories under `dir`.
    pub fn at(dir: PathBuf) -> Self {
        Self {
            dir,
            by_uid: HashMap::new(),
        }
    }

    /// (namespace, name) of pod `uid`, None where no directory names it. Looked up once per
    /// uid: a pod's name never changes, and a pod without logs (no kubelet here) stays so.
    pub fn name_of(&mut self, uid: &str) -> Option<(String, String)> {
        if let Some(known) = self.by_uid.get(uid) {
            return known.clone();
        }
        let found = fs::read_dir(&self.dir).ok().and_then(|entries| {
            entries.flatten().find_map(|entry| {
                let file_name = entry.file_name();
                split_dir_name(file_name.to_str()?, uid)
            })
        });
        self.by_uid.insert(uid.to_owned(), found.clone());
        found
    }
}

/// (namespace, name) from a directory name `<namespace>_<name>_<uid>` of pod `uid`. Neither
/// a namespace nor a pod name can hold `_` (both are DNS names).
fn split_dir_name(dir_name: &str, uid: &str) -> Option<(String, String)> {
    let rest = dir_name.strip_suffix(uid)?.strip_suffix('_')?;
    let (namespace, name) = rest.split_once('_')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains('_'))
        .then(|| (namespace.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";

    #[test]
    fn a_log_directory_names_its_pod() {
        assert_eq!(
            split_dir_name(&format!("kube-system_coredns-5d78c9869d-x7k2p_{UID}"), UID),
            Some((
                "kube-system".to_owned(),
                "coredns-5d78c9869d-x7k2p".to_owned()
            ))
        );
        assert_eq!(split_dir_name(&format!("default_web_{UID}x"), UID), None);
        assert_eq!(split_dir_name(&format!("_web_{UID}"), UID), None);
        assert_eq!(split_dir_name(&format!("web_{UID}"), UID), None);
        assert_eq!(split_dir_name(&format!("a_b_c_{UID}"), UID), None);
    }

    #[test]
    fn pods_are_looked_up_in_the_kubelets_directories() {
        let dir = std::env::temp_dir().join(format!("tracker-pods-{}", std::process::id()));
        fs::create_dir_all(dir.join(format!("shop_cart-7f9_{UID}/app"))).unwrap();
        fs::create_dir_all(dir.join("shop_other_00000000-0000-0000-0000-000000000000")).unwrap();
        let mut names = PodNames::at(dir.clone());
        assert_eq!(
            names.name_of(UID),
            Some(("shop".to_owned(), "cart-7f9".to_owned()))
        );
        assert_eq!(names.name_of("11111111-2222-3333-4444-555555555555"), None);
        fs::remove_dir_all(&dir).unwrap();
        // Known once seen.
        assert!(names.name_of(UID).is_some());
    }
}
