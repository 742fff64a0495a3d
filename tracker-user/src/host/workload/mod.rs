//! Who runs a listener: the systemd unit, container and Kubernetes pod its cgroup names.
//!
//! The kernel stamps a listener's appearance with the cgroup v2 id of the process that called
//! `listen()`; [`Cgroups`] finds the directory of that id in the cgroup2 hierarchy, or else
//! reads `/proc/<pid>/cgroup`. [`Workloads`] parses the path ([`cgroup_path`]) and names a
//! pod from the kubelet's log directories, with no Kubernetes API, credentials or network.

pub mod cgroup_path;
mod cgroupfs;
mod pods;

pub use cgroupfs::{Cgroups, proc_cgroup};
pub use pods::PodNames;

use std::collections::HashMap;

use cgroup_path::{CgroupPath, Container, Qos};

/// A Kubernetes pod as reported: its uid, QoS class, and the namespace and name the kubelet's
/// log directory gives (None where there is none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    pub qos: Qos,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// Who runs a listener, from its cgroup; every field None for a path of no known shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    pub unit: Option<String>,
    pub container: Option<Container>,
    pub pod: Option<Pod>,
}

impl Workload {
    /// The shortest name an operator knows it by: the pod (`namespace/name`, or its uid), the
    /// container (runtime and the id's first 12 digits, as `docker ps` shows it), the unit.
    pub fn short_name(&self) -> Option<String> {
        if let Some(pod) = &self.pod {
            return Some(match (&pod.namespace, &pod.name) {
                (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
                _ => format!("pod:{}", pod.uid),
            });
        }
        if let Some(container) = &self.container {
            let id = &container.id[..container.id.len().min(12)];
            return Some(match container.runtime {
                Some(runtime) => format!("{}:{id}", runtime.name()),
                None => id.to_owned(),
            });
        }
        self.unit.clone()
    }
}

/// The cgroups of listeners, and who runs in them: each path parsed once.
#[derive(Debug, Default)]
pub struct Workloads {
    cgroups: Cgroups,
    by_path: HashMap<String, Workload>,
    pods: PodNames,
}

impl Workloads {
    /// Cgroups found in `cgroups`, pod names read from `pods` (the kubelet's `/var/log/pods`).
    pub fn new(cgroups: Cgroups, pods: PodNames) -> Self {
        Self {
            cgroups,
            by_path: HashMap::new(),
            pods,
        }
    }

    /// The cgroup of a listener that process `pid`, in cgroup v2 `id`, opened.
    pub fn cgroup_of_listener(&mut self, id: u64, pid: u32) -> Option<String> {
        self.cgroups.of_listener(id, pid)
    }

    /// Who runs in cgroup `path`.
    pub fn of(&mut self, path: &str) -> Workload {
        if let Some(known) = self.by_path.get(path) {
            return known.clone();
        }
        let CgroupPath {
            unit,
            container,
            pod,
        } = cgroup_path::parse(path);
        let pod = pod.map(|pod| {
            let (namespace, name) = self.pods.name_of(&pod.uid).unzip();
            Pod {
                uid: pod.uid,
                qos: pod.qos,
                namespace,
                name,
            }
        });
        let workload = Workload {
            unit,
            container,
            pod,
        };
        self.by_path.insert(path.to_owned(), workload.clone());
        workload
    }

    /// Forgets the paths of cgroups no listener is in any more (cgroups come and go with
    /// containers): `in_use` holds each listener's cgroup.
    pub fn forget_unused(&mut self, in_use: &[Option<&str>]) {
        if self.by_path.len() > in_use.len() {
            self.by_path
                .retain(|path, _| in_use.contains(&Some(path.as_str())));
        }
    }
}
