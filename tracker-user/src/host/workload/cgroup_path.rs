//! What a cgroup path says about who runs in it: a systemd unit, a container, a Kubernetes
//! pod. Read innermost first, so that a container nested in another (docker inside docker, a
//! kind node) is the inner one. A shape not recognised yields nothing: the raw path is all
//! that is reported then, never a guess.

/// A container runtime, as its cgroup names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    Podman,
}

impl Runtime {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::Crio => "cri-o",
            Self::Podman => "podman",
        }
    }
}

/// A container: its runtime (None where the path does not tell, as under kubelet's cgroupfs
/// driver) and its id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Container {
    pub runtime: Option<Runtime>,
    pub id: String,
}

/// A Kubernetes pod's quality-of-service class, which names its parent cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn name(self) -> &'static str {
        match self {
            Self::Guaranteed => "guaranteed",
            Self::Burstable => "burstable",
            Self::BestEffort => "besteffort",
        }
    }
}

/// A Kubernetes pod, by uid (with dashes, as the API and `/var/log/pods` spell it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pod {
    pub uid: String,
    pub qos: Qos,
}

/// What a cgroup path names; every field None for a shape not recognised.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct CgroupPath {
    /// The innermost systemd unit that is not a container's or a pod's own (`nginx.service`,
    /// `session-3.scope`); None inside a pod, whose units are the kubelet's bookkeeping.
    pub unit: Option<String>,
    pub container: Option<Container>,
    pub pod: Option<Pod>,
}

/// The path of a line of `/proc/<pid>/cgroup` (`0::/path`, `4:pids:/path`, `1:name=systemd:/path`);
/// anything else is taken as a path already.
pub fn path_of_line(line: &str) -> &str {
    let line = line.trim();
    let mut parts = line.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(hierarchy), Some(_), Some(path))
            if !hierarchy.is_empty() && hierarchy.bytes().all(|b| b.is_ascii_digit()) =>
        {
            path
        }
        _ => line,
    }
}

/// Parses a cgroup path, or a line of `/proc/<pid>/cgroup`.
pub fn parse(path_or_line: &str) -> CgroupPath {
    let path = path_of_line(path_or_line);
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut parsed = CgroupPath::default();
    // Innermost first; each field is the innermost match.
    for (depth, component) in components.iter().enumerate().rev() {
        let parent = depth.checked_sub(1).map(|d| components[d]);
        // A container's own scope is reported as the container (an outer one, as in docker
        // inside docker, not at all); the unit is one around it (a service that runs podman)
        // or one with no container at all.
        let container = container_of(component, parent);
        let is_container = container.is_some();
        if parsed.container.is_none() {
            parsed.container = container;
        }
        if parsed.pod.is_none() {
            parsed.pod = pod_of(component, parent);
        }
        if parsed.unit.is_none() && !is_container && is_unit(component) {
            parsed.unit = Some((*component).to_owned());
        }
    }
    if parsed.pod.is_some() {
        parsed.unit = None;
    }
    parsed
}

/// A container's id: 64 lowercase hex digits, as every runtime here makes them.
fn container_id(text: &str) -> Option<String> {
    (text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| text.to_owned())
}

/// The container a path component names, `parent` being the component above it.
fn container_of(component: &str, parent: Option<&str>) -> Option<Container> {
    let with = |runtime, id| {
        container_id(id).map(|id| Container {
            runtime: Some(runtime),
            id,
        })
    };
    // The systemd driver of a kubelet under containerd.service: `<pod slice>:<prefix>:<id>`.
    if let [_, prefix, id] = component.split(':').collect::<Vec<_>>()[..] {
        let runtime = match prefix {
            "cri-containerd" => Runtime::Containerd,
            "crio" => Runtime::Crio,
            "docker" => Runtime::Docker,
            "libpod" => Runtime::Podman,
            _ => return None,
        };
        return with(runtime, id);
    }
    let scope = component.strip_suffix(".scope").unwrap_or(component);
    // A runtime's monitor process (conmon) has a scope of its own beside the container's.
    if scope.starts_with("crio-conmon-") || scope.starts_with("libpod-conmon-") {
        return None;
    }
    let prefixed = [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::Crio),
        ("libpod-", Runtime::Podman),
    ];
    for (prefix, runtime) in prefixed {
        if let Some(id) = scope.strip_prefix(prefix) {
            return with(runtime, id);
        }
    }
    let id = container_id(component)?;
    let runtime = match parent {
        Some("docker") => Some(Runtime::Docker),
        // containerd's namespace for the containers the kubelet asks it for.
        Some("k8s.io") => Some(Runtime::Containerd),
        Some("libpod_parent") => Some(Runtime::Podman),
        // Under a pod the kubelet's cgroupfs driver does not name the runtime.
        Some(parent) if parent.starts_with("pod") => None,
        _ => return None,
    };
    Some(Container { runtime, id })
}

/// The pod a path component names: `kubepods-<qos>-pod<uid_with_underscores>.slice` or
/// `kubepods-pod<uid>.slice` (systemd driver), `pod<uid>` (cgroupfs driver, QoS from its
/// parent).
fn pod_of(component: &str, parent: Option<&str>) -> Option<Pod> {
    let slice = component.split(':').next().unwrap_or(component);
    if let Some(name) = slice
        .strip_prefix("kubepods-")
        .and_then(|rest| rest.strip_suffix(".slice"))
    {
        let (qos, uid) = match name.split_once("-pod") {
            Some(("burstable", uid)) => (Qos::Burstable, uid),
            Some(("besteffort", uid)) => (Qos::BestEffort, uid),
            _ => (Qos::Guaranteed, name.strip_prefix("pod")?),
        };
        return pod_uid(&uid.replace('_', "-")).map(|uid| Pod { uid, qos });
    }
    let uid = pod_uid(component.strip_prefix("pod")?)?;
    let qos = match parent? {
        "burstable" => Qos::Burstable,
        "besteffort" => Qos::BestEffort,
        "kubepods" => Qos::Guaranteed,
        _ => return None,
    };
    Some(Pod { uid, qos })
}

/// A pod uid: a UUID, 8-4-4-4-12 hex digits.
fn pod_uid(text: &str) -> Option<String> {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let hex = groups
        .iter()
        .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
    (lengths == [8, 4, 4, 4, 12] && hex).then(|| text.to_ascii_lowercase())
}

/// A systemd service or scope (slices only group them).
fn is_unit(component: &str) -> bool {
    let name = component
        .strip_suffix(".service")
        .or_else(|| component.strip_suffix(".scope"));
    name.is_some_and(|name| !name.is_empty() && !name.contains(':'))
}

#[cfg(test)]
mod tests;
