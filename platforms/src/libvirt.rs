//! A stack's virtual machines (`x-vms`) as libvirt domains: the domain XML of each template
//! (Linux on virtio with a serial console and the QEMU guest agent's channel; Windows on SATA and
//! e1000e, which its installer knows, with Hyper-V enlightenments and a local clock), and the
//! first-boot configuration — cloud-init user data and meta data for the Linux templates,
//! cloudbase-init's (which reads the same NoCloud seed) for Windows — put on a `cidata` seed disk.
//! The disk is a qcow2 overlay on the template's base image, so a VM costs only what it writes.

use sha2::{Digest, Sha256};
use uuid::Uuid;
use windflow_protocol::Platform;
use windflow_protocol::stack::{VmSpec, VmTemplate};

use crate::Finding;

/// The XML namespace of WindFlow's metadata element in a domain.
pub const METADATA_NAMESPACE: &str = "https://windflow.dev/xmlns/vm/1";
/// The prefix of that element (`<windflow:vm>`).
pub const METADATA_PREFIX: &str = "windflow";

/// The domain's name: one hypervisor holds the VMs of many stacks.
pub fn domain_name(project: &str, vm: &str) -> String {
    format!("{project}-{vm}")
}

/// Where a VM's files live on the hypervisor host, under the agent's VM directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    /// The template's base image, which the host keeps (`<dir>/templates/<slug>.qcow2`).
    pub base_image: String,
    /// The VM's own disk: an overlay backed by the base image.
    pub disk: String,
    /// The `cidata` seed disk with the first-boot configuration.
    pub seed: String,
    /// What the guest writes on its serial console.
    pub console_log: String,
}

impl VmPaths {
    pub fn new(dir: &str, project: &str, vm: &VmSpec) -> Self {
        let dir = dir.trim_end_matches('/');
        let name = domain_name(project, &vm.name);
        Self {
            base_image: format!("{dir}/templates/{}.qcow2", vm.template.slug()),
            disk: format!("{dir}/{name}.qcow2"),
            seed: format!("{dir}/{name}-seed.iso"),
            console_log: format!("{dir}/{name}-console.log"),
        }
    }
}

/// What stands in the way of the stack on a platform: VMs run on libvirt only, and libvirt
/// runs VMs only.
pub fn check(vms: &[VmSpec], services: usize, platform: Platform) -> Vec<Finding> {
    match (platform, vms.is_empty()) {
        (Platform::Libvirt, true) => vec![Finding::blocking(
            "x-vms".into(),
            "a libvirt target runs virtual machines: declare them under x-vms".to_owned(),
        )],
        (Platform::Libvirt, false) if services > 0 => vec![Finding::blocking(
            "services".into(),
            "a VM stack has no container services of its own: leave `services: {}`".to_owned(),
        )],
        (Platform::Libvirt, false) => vms
            .iter()
            .filter(|vm| vm.template.is_windows() && !vm.ssh_authorized_keys.is_empty())
            .map(|vm| {
                Finding::note(
                    format!("x-vms.{}.ssh_authorized_keys", vm.name),
                    "Windows Server does not take SSH keys from cloudbase-init; use admin_password",
                )
            })
            .collect(),
        (other, false) => vec![Finding::blocking(
            "x-vms".into(),
            format!("virtual machines run on a libvirt hypervisor, not on {}", other.as_str()),
        )],
        (_, true) => vec![],
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;").replace('"', "&quot;")
}

/// A hash of everything the domain is made of, kept in its metadata: a VM whose spec changed
/// is redefined (and its seed rebuilt), others are left alone.
pub fn spec_hash(vm: &VmSpec) -> String {
    let bytes = serde_json::to_vec(vm).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))[..16].to_owned()
}

/// The domain XML of `vm`. `domain_type` is the hypervisor's (`kvm`, or `qemu` without
/// hardware virtualisation).
pub fn domain_xml(project: &str, deployment_id: Uuid, vm: &VmSpec, paths: &VmPaths, domain_type: &str) -> String {
    let name = escape(&domain_name(project, &vm.name));
    let windows = vm.template.is_windows();
    let (disk_bus, disk_dev, seed_dev, nic) =
        if windows { ("sata", "sda", "sdb", "e1000e") } else { ("virtio", "vda", "sdb", "virtio") };
    let features = if windows {
        "<acpi/><apic/><hyperv mode='custom'><relaxed state='on'/><vapic state='on'/><spinlocks state='on' retries='8191'/></hyperv>"
    } else {
        "<acpi/><apic/>"
    };
    let clock = if windows {
        "<clock offset='localtime'><timer name='hypervclock' present='yes'/></clock>"
    } else {
        "<clock offset='utc'/>"
    };
    // Linux speaks on the serial console and has the guest agent; Windows is seen on VNC, bound
    // to the host's loopback only.
    let guest_devices = if windows {
        "<graphics type='vnc' autoport='yes' listen='127.0.0.1'><listen type='address' address='127.0.0.1'/></graphics><video><model type='vga'/></video><input type='tablet' bus='usb'/>".to_owned()
    } else {
        "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel><rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>".to_owned()
    };
    let console = escape(&paths.console_log);
    format!(
        r#"<domain type='{domain_type}'>
  <name>{name}</name>
  <metadata>
    <{METADATA_PREFIX}:vm xmlns:{METADATA_PREFIX}='{METADATA_NAMESPACE}'>
      <{METADATA_PREFIX}:project>{project}</{METADATA_PREFIX}:project>
      <{METADATA_PREFIX}:deployment>{deployment_id}</{METADATA_PREFIX}:deployment>
      <{METADATA_PREFIX}:name>{vm_name}</{METADATA_PREFIX}:name>
      <{METADATA_PREFIX}:template>{template}</{METADATA_PREFIX}:template>
      <{METADATA_PREFIX}:spec-hash>{hash}</{METADATA_PREFIX}:spec-hash>
    </{METADATA_PREFIX}:vm>
  </metadata>
  <memory unit='MiB'>{memory}</memory>
  <currentMemory unit='MiB'>{memory}</currentMemory>
  <vcpu placement='static'>{cpus}</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>{features}</features>
  <cpu mode='host-model'/>
  {clock}
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>restart</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='{disk}'/>
      <target dev='{disk_dev}' bus='{disk_bus}'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{seed}'/>
      <target dev='{seed_dev}' bus='sata'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <source network='{network}'/>
      <model type='{nic}'/>
    </interface>
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='{console}'/>
      <target type='serial' port='0'/>
    </console>
    {guest_devices}
  </devices>
</domain>
"#,
        project = escape(project),
        vm_name = escape(&vm.name),
        template = vm.template.slug(),
        hash = spec_hash(vm),
        memory = vm.memory_mib,
        cpus = vm.cpus,
        disk = escape(&paths.disk),
        seed = escape(&paths.seed),
        network = escape(&vm.network),
    )
}

/// cloud-init's (or cloudbase-init's) meta data: the instance's identity and host name.
pub fn meta_data(project: &str, vm: &VmSpec) -> String {
    let name = domain_name(project, &vm.name);
    format!("instance-id: {name}-{}\nlocal-hostname: {name}\n", spec_hash(vm))
}

/// The user data of the first boot, as `#cloud-config`.
pub fn user_data(project: &str, vm: &VmSpec) -> String {
    let mut config = serde_json::Map::new();
    let name = domain_name(project, &vm.name);
    config.insert("hostname".into(), name.clone().into());
    if vm.template.is_windows() {
        // cloudbase-init's cloud-config plugins: an administrator and first-boot commands.
        if let Some(password) = &vm.admin_password {
            config.insert(
                "users".into(),
                serde_json::json!([{ "name": "windflow", "groups": ["Administrators"], "passwd": password }]),
            );
        }
    } else {
        config.insert("fqdn".into(), name.into());
        config.insert(
            "users".into(),
            serde_json::json!([{
                "name": "windflow",
                "groups": [match vm.template { VmTemplate::Rocky9 => "wheel", _ => "sudo" }],
                "shell": "/bin/bash",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": true,
                "ssh_authorized_keys": vm.ssh_authorized_keys,
            }]),
        );
        config.insert("ssh_pwauth".into(), false.into());
        let mut packages = vm.packages.clone();
        packages.push("qemu-guest-agent".into());
        config.insert("package_update".into(), true.into());
        config.insert("packages".into(), packages.into());
    }
    let mut commands: Vec<serde_json::Value> = Vec::new();
    if !vm.template.is_windows() {
        commands.push("systemctl enable --now qemu-guest-agent".into());
    }
    commands.extend(vm.run_commands.iter().cloned().map(serde_json::Value::from));
    if !commands.is_empty() {
        config.insert("runcmd".into(), commands.into());
    }
    format!("#cloud-config\n{}", crate::sorted_yaml(&serde_json::Value::Object(config)))
}

/// `2g`, `2GiB`, `512m`, `512MiB` or a number of MiB, as MiB.
pub fn parse_mib(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit.trim() {
        "" | "m" | "mb" | "mib" => Some(number),
        "g" | "gb" | "gib" => number.checked_mul(1024),
        "t" | "tb" | "tib" => number.checked_mul(1024 * 1024),
        _ => None,
    }
}

/// What a VM stack becomes on a hypervisor: each domain's XML and first-boot configuration.
pub fn render(project: &str, vms: &[VmSpec]) -> String {
    vms.iter()
        .map(|vm| {
            let paths = VmPaths::new("/var/lib/windflow-agent/vms", project, vm);
            let mut shown = vm.clone();
            shown.admin_password = shown.admin_password.map(|p| format!("<{} characters, not shown>", p.len()));
            format!(
                "# {name}: disk {disk} GiB on {base}\n{xml}# user-data\n{user_data}# meta-data\n{meta}",
                name = domain_name(project, &vm.name),
                disk = vm.disk_gib,
                base = paths.base_image,
                xml = domain_xml(project, Uuid::nil(), vm, &paths, "kvm"),
                user_data = user_data(project, &shown),
                meta = meta_data(project, vm),
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests;
