//! Virtual machines on libvirt: the domain XML and first-boot configuration of every template,
//! checked by libvirt's own schema (`virt-xml-validate`) and cloud-init's (`cloud-init schema`);
//! and VM stacks through the API onto the real driver against libvirt's `test:///default`
//! hypervisor — define, start, status, stop, start, reboot, power off, console, destroy,
//! undefine — with real qcow2 overlays (`qemu-img`) and seed disks (`genisoimage`).

use std::path::Path;
use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;
use windflow_platforms::libvirt::{VmPaths, domain_xml, user_data};
use windflow_protocol::stack::{VmSpec, VmTemplate};
use windflow_tests::*;

fn vm(template: VmTemplate) -> VmSpec {
    VmSpec {
        name: "web".into(),
        template,
        cpus: 2,
        memory_mib: 2048,
        disk_gib: 20,
        network: "default".into(),
        ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIWindFlowTestKey admin@example".into()],
        packages: vec!["nginx".into()],
        run_commands: vec!["systemctl enable --now nginx".into()],
        admin_password: template.is_windows().then(|| "Windfl0w-Admin!".into()),
    }
}

fn validates(program: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn every_templates_domain_and_first_boot_configuration_pass_their_schemas() {
    let dir = tempfile::tempdir().expect("tempdir");
    for template in VmTemplate::ALL {
        let vm = vm(template);
        let paths = VmPaths::new("/var/lib/windflow-agent/vms", "shop", &vm);
        let xml = dir.path().join(format!("{}.xml", template.slug()));
        std::fs::write(&xml, domain_xml("shop", Uuid::new_v4(), &vm, &paths, "kvm")).expect("write");
        let (ok, said) = validates("virt-xml-validate", &[xml.to_str().expect("utf-8"), "domain"]);
        assert!(ok, "{}: {said}", template.slug());
        let data = dir.path().join(format!("{}.user-data", template.slug()));
        std::fs::write(&data, user_data("shop", &vm)).expect("write");
        let (ok, said) = validates("cloud-init", &["schema", "--config-file", data.to_str().expect("utf-8")]);
        assert!(ok && said.contains("Valid cloud-config"), "{}: {said}", template.slug());
    }
    // The validators do refuse what is wrong.
    let broken = dir.path().join("broken.xml");
    std::fs::write(&broken, "<domain type='kvm'><name>x</name><vcpu>two</vcpu></domain>").expect("write");
    assert!(!validates("virt-xml-validate", &[broken.to_str().expect("utf-8"), "domain"]).0);
    let bad = dir.path().join("bad.user-data");
    std::fs::write(&bad, "#cloud-config\npackages: 5\n").expect("write");
    assert!(!validates("cloud-init", &["schema", "--config-file", bad.to_str().expect("utf-8")]).0);
}

const VMS: &str = r#"
services: {}
x-vms:
  web:
    template: debian-12
    cpus: 2
    memory: 1g
    disk: 8g
    ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIWindFlowTestKey admin@example"]
    packages: [nginx]
  db:
    template: debian-12
    memory: 512m
"#;

fn vm_state(deployment: &Value, vm: &str) -> String {
    let services = deployment["services"].as_array().expect("services");
    let service = services.iter().find(|s| s["name"] == vm).unwrap_or_else(|| panic!("{vm} in {deployment:#}"));
    service["containers"][0]["state"].as_str().unwrap_or("none").to_owned()
}

fn backing_file(image: &Path) -> Option<String> {
    let output = Command::new("qemu-img").args(["info", "--output=json"]).arg(image).output().ok()?;
    let info: Value = serde_json::from_slice(&output.stdout).ok()?;
    info["backing-filename"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread")]
async fn vms_are_made_from_templates_driven_through_the_api_and_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vms = dir.path().join("vms");
    std::fs::create_dir_all(vms.join("templates")).expect("vm dir");
    let base = vms.join("templates/debian-12.qcow2");
    assert!(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("64M")
            .status()
            .expect("qemu-img")
            .success()
    );
    let mut cp = ControlPlane::start(dir.path()).await;
    let vm_dir = vms.to_str().expect("utf-8").to_owned();
    let env = [
        ("WINDFLOW_LIBVIRT_URI", "test:///default"),
        ("WINDFLOW_VM_DIR", vm_dir.as_str()),
        ("KUBECONFIG", "/nonexistent"),
    ];
    let agent = cp.start_agent_with(dir.path(), "hypervisor", &env).await;
    let target = agent.id();
    let libvirt = cp.capability(&target, "libvirt").await;
    assert_eq!(libvirt["available"], true, "{libvirt}");
    assert!(libvirt["detail"].as_str().is_some_and(|d| d.contains("test:///default")), "{libvirt}");

    let (status, stack) = cp.api(Method::POST, "/stacks", Some(json!({"name": "vms", "compose": VMS}))).await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    let stack_id = stack["id"].as_str().expect("id").to_owned();
    let (_, rendering) = cp.api(Method::GET, &format!("/stacks/{stack_id}/render?to=libvirt"), None).await;
    let yaml = rendering["yaml"].as_str().expect("rendering");
    assert!(yaml.contains("<name>vms-web</name>") && yaml.contains("#cloud-config"), "{yaml}");

    // Not on containers: refused with the path.
    let (status, refused) =
        cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{target}?platform=docker"), None).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("incompatible_stack"))
    );
    assert_eq!(refused["error"]["details"]["findings"][0]["path"], "x-vms");

    // A VM stack goes to the hypervisor without being told.
    let (status, accepted) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{target}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["platform"], "libvirt");
    let id = accepted["id"].as_str().expect("id").to_owned();
    let deployment = cp.settled(&accepted).await;
    assert_eq!(deployment["state"], "running", "{deployment:#}");
    assert_eq!((vm_state(&deployment, "web"), vm_state(&deployment, "db")), ("running".into(), "running".into()));
    let web =
        deployment["services"].as_array().expect("services").iter().find(|s| s["name"] == "web").cloned().expect("web");
    assert_eq!(web["image"], "debian-12 (2 CPU, 1024 MiB, 8 GiB)");

    // Its disk is an overlay on the template, its seed a cidata disk, both private.
    let disk = vms.join("vms-web.qcow2");
    assert_eq!(backing_file(&disk).as_deref(), Some(base.to_str().expect("utf-8")));
    let seed = vms.join("vms-web-seed.iso");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&seed).expect("seed").permissions().mode() & 0o777, 0o600);
    let label = Command::new("isoinfo").args(["-d", "-i"]).arg(&seed).output();
    if let Ok(label) = label {
        assert!(String::from_utf8_lossy(&label.stdout).contains("Volume id: cidata"));
    }

    // Stop, start, reboot and power off, each answered with the state after.
    for (action, after) in [
        ("stop", "shut off"),
        ("start", "running"),
        ("reboot", "running"),
        ("power-off", "shut off"),
        ("start", "running"),
    ] {
        let (status, deployment) = cp.api(Method::POST, &format!("/deployments/{id}/vms/db/{action}"), None).await;
        assert_eq!(status, StatusCode::OK, "{action}: {deployment}");
        assert_eq!(vm_state(&deployment, "db"), after, "after {action}");
    }
    let (status, refused) = cp.api(Method::POST, &format!("/deployments/{id}/vms/nope/stop"), None).await;
    assert_eq!((status, refused["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("vm")));
    let (status, _) = cp.api(Method::POST, &format!("/deployments/{id}/vms/db/explode"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // The serial console is the VM's log.
    std::fs::write(vms.join("vms-web-console.log"), "Debian GNU/Linux 12 vms-web ttyS0\nvms-web login: \n")
        .expect("console");
    let (_, lines) = cp.api(Method::GET, &format!("/deployments/{id}/logs?service=web&tail=2"), None).await;
    let lines = lines["items"].as_array().cloned().unwrap_or_default();
    assert!(
        lines.iter().any(|l| l["line"] == "Debian GNU/Linux 12 vms-web ttyS0" && l["service"] == "web"),
        "{lines:#?}"
    );

    // A template whose base image is not on the host fails with where to put it.
    let rocky = "services: {}\nx-vms:\n  app:\n    template: rocky-9\n";
    let (_, other) = cp.api(Method::POST, "/stacks", Some(json!({"name": "rocky", "compose": rocky}))).await;
    let other_id = other["id"].as_str().expect("id");
    let (_, accepted) = cp.api(Method::POST, &format!("/stacks/{other_id}/deploy/{target}"), None).await;
    let failed = cp.settled(&accepted).await;
    assert_eq!(failed["state"], "failed");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("templates/rocky-9.qcow2"), "{reason}");

    // Removal with volumes: the domains and their files go.
    let (status, accepted) = cp.api(Method::DELETE, &format!("/deployments/{id}?volumes=true"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(cp.settled(&accepted).await["state"], "removed");
    for file in ["vms-web.qcow2", "vms-web-seed.iso", "vms-web-console.log", "vms-db.qcow2"] {
        assert!(!vms.join(file).exists(), "{file} left behind");
    }
    assert!(base.exists(), "the template's base image stays");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_vm_section_is_refused_where_it_is_wrong_and_a_host_without_libvirt_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    let compose = "services: {}\nx-vms:\n  Web:\n    template: plan9\n    memory: lots\n    cpus: 0\n  win:\n    template: windows-server-2022\n";
    let (status, refused) = cp.api(Method::POST, "/stacks", Some(json!({"name": "bad-vms", "compose": compose}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let mut paths: Vec<&str> = refused["error"]["details"]["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        ["x-vms.Web", "x-vms.Web.cpus", "x-vms.Web.memory", "x-vms.Web.template", "x-vms.win.admin_password"]
    );

    // No hypervisor at that address: the target says so, and VM deploys are refused with it.
    let agent = cp
        .start_agent_with(
            dir.path(),
            "no-hypervisor",
            &[("WINDFLOW_LIBVIRT_URI", "qemu+unix:///system?socket=/nonexistent/libvirt-sock")],
        )
        .await;
    let target = agent.id();
    assert_eq!(cp.capability(&target, "libvirt").await["available"], false);
    let good = "services: {}\nx-vms:\n  web:\n    template: debian-12\n";
    let (_, stack) = cp.api(Method::POST, "/stacks", Some(json!({"name": "good-vms", "compose": good}))).await;
    let stack_id = stack["id"].as_str().expect("id");
    let (status, refused) = cp.api(Method::POST, &format!("/stacks/{stack_id}/deploy/{target}"), None).await;
    let code = refused["error"]["code"].as_str();
    assert_eq!((status, code), (StatusCode::UNPROCESSABLE_ENTITY, Some("platform_unavailable")), "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cannot run libvirt workloads") && message.contains("/nonexistent/libvirt-sock"),
        "{message}"
    );
}
