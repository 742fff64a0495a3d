//! Who runs a listener: the systemd unit, container and Kubernetes pod its cgroup names.

pub mod cgroup_path;
