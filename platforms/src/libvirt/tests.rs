use super::*;

pub fn vm(template: VmTemplate) -> VmSpec {
    VmSpec {
        name: "web".into(),
        template,
        cpus: 2,
        memory_mib: 2048,
        disk_gib: 20,
        network: "default".into(),
        ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3Nza admin@example".into()],
        packages: vec!["nginx".into()],
        run_commands: vec!["systemctl enable --now nginx".into()],
        admin_password: None,
    }
}

#[test]
fn a_vm_is_a_domain_named_after_the_stack_with_windflows_metadata() {
    let vm = vm(VmTemplate::Debian12);
    let paths = VmPaths::new("/srv/vms/", "shop", &vm);
    assert_eq!(paths.base_image, "/srv/vms/templates/debian-12.qcow2");
    assert_eq!(paths.disk, "/srv/vms/shop-web.qcow2");
    let xml = domain_xml("shop", Uuid::from_u128(7), &vm, &paths, "kvm");
    assert!(xml.starts_with("<domain type='kvm'>\n  <name>shop-web</name>"), "{xml}");
    assert!(xml.contains("<windflow:project>shop</windflow:project>"));
    assert!(xml.contains(&format!("<windflow:spec-hash>{}</windflow:spec-hash>", spec_hash(&vm))));
    assert!(xml.contains("<memory unit='MiB'>2048</memory>") && xml.contains(">2</vcpu>"));
    assert!(xml.contains("<source file='/srv/vms/shop-web.qcow2'/>") && xml.contains("bus='virtio'"));
    assert!(xml.contains("org.qemu.guest_agent.0"), "Linux gets the guest agent's channel");
    assert!(!xml.contains("<graphics"), "Linux is seen on its serial console");
}

#[test]
fn windows_gets_devices_its_installer_knows_and_a_local_clock() {
    let mut vm = vm(VmTemplate::Windows2022);
    vm.admin_password = Some("S3cure!pass".into());
    let xml = domain_xml("shop", Uuid::nil(), &vm, &VmPaths::new("/srv", "shop", &vm), "kvm");
    assert!(xml.contains("bus='sata'") && xml.contains("<model type='e1000e'/>"), "{xml}");
    assert!(xml.contains("<hyperv mode='custom'>") && xml.contains("offset='localtime'"));
    assert!(xml.contains("listen='127.0.0.1'"), "VNC only on the host's loopback");
    let data = user_data("shop", &vm);
    assert!(data.contains("passwd: S3cure!pass") && data.contains("Administrators"), "{data}");
    assert!(!data.contains("ssh_authorized_keys"));
    let findings = check(&[vm], 0, Platform::Libvirt);
    assert_eq!(findings[0].path, "x-vms.web.ssh_authorized_keys");
    assert!(!findings[0].blocking);
}

#[test]
fn linux_first_boot_makes_a_sudo_user_with_the_keys_and_installs_the_packages() {
    let data = user_data("shop", &vm(VmTemplate::Rocky9));
    assert!(data.starts_with("#cloud-config\n"), "{data}");
    let config: serde_yaml::Value = serde_yaml::from_str(&data).expect("YAML");
    let user = &config["users"][0];
    assert_eq!(user["name"], "windflow");
    assert_eq!(user["groups"][0], "wheel", "Rocky's sudoers group");
    assert_eq!(user["ssh_authorized_keys"][0], "ssh-ed25519 AAAAC3Nza admin@example");
    assert_eq!(config["ssh_pwauth"], false);
    let packages: Vec<&str> =
        config["packages"].as_sequence().expect("packages").iter().filter_map(|p| p.as_str()).collect();
    assert_eq!(packages, ["nginx", "qemu-guest-agent"]);
    assert_eq!(config["runcmd"][1], "systemctl enable --now nginx");
    assert_eq!(meta_data("shop", &vm(VmTemplate::Rocky9)).lines().nth(1), Some("local-hostname: shop-web"));
}

#[test]
fn a_changed_spec_is_a_new_hash_and_a_new_instance_id() {
    let before = vm(VmTemplate::Ubuntu2204);
    let mut after = before.clone();
    after.memory_mib = 4096;
    assert_ne!(spec_hash(&before), spec_hash(&after));
    assert_ne!(meta_data("shop", &before), meta_data("shop", &after));
}

#[test]
fn vms_run_on_libvirt_only_and_libvirt_runs_vms_only() {
    let vms = [vm(VmTemplate::Debian12)];
    assert!(check(&vms, 0, Platform::Libvirt).is_empty());
    assert_eq!(check(&vms, 0, Platform::Docker)[0].path, "x-vms");
    assert!(check(&vms, 0, Platform::Kubernetes)[0].blocking);
    assert_eq!(check(&vms, 1, Platform::Libvirt)[0].path, "services");
    assert_eq!(check(&[], 1, Platform::Libvirt)[0].path, "x-vms");
    assert!(check(&[], 1, Platform::Docker).is_empty());
}

#[test]
fn sizes_are_read_as_people_write_them() {
    assert_eq!(parse_mib("2g"), Some(2048));
    assert_eq!(parse_mib("2GiB"), Some(2048));
    assert_eq!(parse_mib("512m"), Some(512));
    assert_eq!(parse_mib("768"), Some(768));
    assert_eq!(parse_mib("1t"), Some(1024 * 1024));
    assert_eq!(parse_mib("two gigs"), None);
    assert_eq!(parse_mib("5x"), None);
}

#[test]
fn the_rendering_hides_the_windows_password() {
    let mut vm = vm(VmTemplate::Windows2022);
    vm.admin_password = Some("S3cure!pass".into());
    let rendered = render("shop", &[vm]);
    assert!(!rendered.contains("S3cure!pass") && rendered.contains("<11 characters, not shown>"), "{rendered}");
    assert!(rendered.contains("<name>shop-web</name>"));
}
