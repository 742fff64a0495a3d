use super::*;

const ID: &str = "3f9a1c6b2d8e4f7a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a";
const INNER: &str = "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999";
const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";

fn container(runtime: Option<Runtime>, id: &str) -> Option<Container> {
    Some(Container {
        runtime,
        id: id.to_owned(),
    })
}

fn pod(qos: Qos) -> Option<Pod> {
    Some(Pod {
        uid: UID.to_owned(),
        qos,
    })
}

fn unit(name: &str) -> CgroupPath {
    CgroupPath {
        unit: Some(name.to_owned()),
        ..CgroupPath::default()
    }
}

fn in_container(runtime: Option<Runtime>, id: &str) -> CgroupPath {
    CgroupPath {
        container: container(runtime, id),
        ..CgroupPath::default()
    }
}

fn in_pod(qos: Qos, runtime: Option<Runtime>) -> CgroupPath {
    CgroupPath {
        unit: None,
        container: container(runtime, ID),
        pod: pod(qos),
    }
}

fn underscored() -> String {
    UID.replace('-', "_")
}

#[test]
fn systemd_units_are_named() {
    assert_eq!(parse("/system.slice/nginx.service"), unit("nginx.service"));
    assert_eq!(
        parse("/user.slice/user-1000.slice/session-3.scope"),
        unit("session-3.scope")
    );
    // The innermost unit: a service of a user's own manager.
    assert_eq!(
        parse("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service"),
        unit("foo.service")
    );
    // Slices only group units.
    assert_eq!(parse("/system.slice"), CgroupPath::default());
}

#[test]
fn docker_containers_are_named() {
    let docker = in_container(Some(Runtime::Docker), ID);
    assert_eq!(parse(&format!("/system.slice/docker-{ID}.scope")), docker);
    assert_eq!(parse(&format!("/docker/{ID}")), docker);
}

#[test]
fn the_innermost_container_of_nested_ones_wins() {
    assert_eq!(
        parse(&format!("/docker/{ID}/docker/{INNER}")),
        in_container(Some(Runtime::Docker), INNER)
    );
    assert_eq!(
        parse(&format!("/system.slice/docker-{ID}.scope/docker/{INNER}")),
        in_container(Some(Runtime::Docker), INNER)
    );
    // kind: a node is a docker container, its pods' containers inside it.
    let kind = format!(
        "/system.slice/docker-{INNER}.scope/kubelet.slice/kubelet-kubepods.slice/\
         kubelet-kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
        underscored()
    );
    assert_eq!(
        parse(&kind),
        in_pod(Qos::BestEffort, Some(Runtime::Containerd))
    );
}

#[test]
fn pods_under_the_systemd_driver_are_named() {
    let uid = underscored();
    assert_eq!(
        parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope"
        )),
        in_pod(Qos::Burstable, Some(Runtime::Containerd))
    );
    assert_eq!(
        parse(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/crio-{ID}.scope"
        )),
        in_pod(Qos::BestEffort, Some(Runtime::Crio))
    );
    assert_eq!(
        parse(&format!(
            "/kubepods.slice/kubepods-pod{uid}.slice/docker-{ID}.scope"
        )),
        in_pod(Qos::Guaranteed, Some(Runtime::Docker))
    );
}

#[test]
fn a_runtime_monitor_is_not_its_container() {
    let uid = underscored();
    assert_eq!(
        parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/crio-conmon-{ID}.scope"
        )),
        CgroupPath {
            pod: pod(Qos::Burstable),
            ..CgroupPath::default()
        }
    );
    // Its scope is a unit like any other.
    assert_eq!(
        parse(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
        unit(&format!("libpod-conmon-{ID}.scope"))
    );
}

#[test]
fn pods_under_the_cgroupfs_driver_are_named() {
    assert_eq!(
        parse(&format!("/kubepods/besteffort/pod{UID}/{ID}")),
        in_pod(Qos::BestEffort, None)
    );
    assert_eq!(
        parse(&format!("/kubepods/burstable/pod{UID}/crio-{ID}")),
        in_pod(Qos::Burstable, Some(Runtime::Crio))
    );
    assert_eq!(
        parse(&format!("/kubepods/pod{UID}/{ID}")),
        in_pod(Qos::Guaranteed, None)
    );
}

#[test]
fn pods_under_containerd_service_are_named() {
    let uid = underscored();
    assert_eq!(
        parse(&format!(
            "/system.slice/containerd.service/kubepods-burstable-pod{uid}.slice:cri-containerd:{ID}"
        )),
        in_pod(Qos::Burstable, Some(Runtime::Containerd))
    );
}

#[test]
fn containerd_namespaces_are_named() {
    assert_eq!(
        parse(&format!("0::/k8s.io/{ID}")),
        in_container(Some(Runtime::Containerd), ID)
    );
}

#[test]
fn podman_containers_are_named() {
    let podman = in_container(Some(Runtime::Podman), ID);
    assert_eq!(
        parse(&format!("/machine.slice/libpod-{ID}.scope/container")),
        podman
    );
    assert_eq!(parse(&format!("/machine.slice/libpod-{ID}.scope")), podman);
    assert_eq!(parse(&format!("/libpod_parent/libpod-{ID}")), podman);
    // Under a service that runs podman: both.
    assert_eq!(
        parse(&format!("/system.slice/myapp.service/libpod-payload-{ID}")),
        unit("myapp.service")
    );
    assert_eq!(
        parse(&format!("/system.slice/myapp.service/libpod-{ID}.scope")),
        CgroupPath {
            unit: Some("myapp.service".to_owned()),
            ..podman
        }
    );
}

#[test]
fn lines_of_proc_cgroup_are_read_for_their_path() {
    assert_eq!(
        path_of_line("0::/system.slice/nginx.service\n"),
        "/system.slice/nginx.service"
    );
    assert_eq!(path_of_line("4:pids:/docker/x"), "/docker/x");
    assert_eq!(path_of_line("1:name=systemd:/a:b"), "/a:b");
    assert_eq!(path_of_line("/plain/path"), "/plain/path");
    // cgroup v1 lines, as a hybrid host's processes have them.
    assert_eq!(
        parse(&format!("12:pids:/docker/{ID}")),
        in_container(Some(Runtime::Docker), ID)
    );
    assert_eq!(
        parse("1:name=systemd:/system.slice/nginx.service"),
        unit("nginx.service")
    );
    assert_eq!(
        parse(&format!("3:cpu,cpuacct:/libpod_parent/libpod-{ID}")),
        in_container(Some(Runtime::Podman), ID)
    );
}

#[test]
fn garbage_names_nothing() {
    for path in [
        "",
        "/",
        "0::/",
        "garbage",
        "/docker/not-an-id",
        &format!("/docker/{}", &ID[..63]),
        &format!("/docker/{}", ID.to_uppercase()),
        &format!("/somewhere/{ID}"),
        "/kubepods/besteffort/pod1234/abc",
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podxyz.slice",
        "/kubepods/besteffort/podzzzzzzzz-2fa1-11d2-883f-0016d3cca427",
        "/system.slice/.service",
        "/x/a:b:c",
        "::::",
        "/system.slice/docker-.scope",
        "\u{0}\u{1}/é/ü.service/../..",
    ] {
        let parsed = parse(path);
        assert_eq!(
            (parsed.container, parsed.pod),
            (None, None),
            "{path:?} named something"
        );
    }
    assert_eq!(parse("/x/a:b:c").unit, None);
}
