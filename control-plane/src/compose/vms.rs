//! `x-vms`: a stack of virtual machines for a libvirt target, each made from a template.
//!
//! ```yaml
//! services: {}
//! x-vms:
//!   web:
//!     template: debian-12          # ubuntu-22.04, debian-12, rocky-9, windows-server-2022
//!     cpus: 2                      # default 1
//!     memory: 2g                   # default 1g
//!     disk: 20g                    # default 20g
//!     network: default             # a libvirt network; default `default`
//!     ssh_authorized_keys: ["ssh-ed25519 AAAA… me@laptop"]
//!     packages: [nginx]
//!     run: ["systemctl enable --now nginx"]
//!     admin_password: "${WINDOWS_PASSWORD}"   # Windows only, from the stack's secrets
//! ```

use serde_yaml::Value;
use windflow_platforms::libvirt::parse_mib;
use windflow_protocol::stack::{VmSpec, VmTemplate};

use super::Diagnostic;

const KEYS: &[&str] =
    &["template", "cpus", "memory", "disk", "network", "ssh_authorized_keys", "packages", "run", "admin_password"];

/// The stack's VMs, if it has an `x-vms` section; problems go to `errors` by path.
pub fn extract(value: &Value, errors: &mut Vec<Diagnostic>) -> Vec<VmSpec> {
    let Some(section) = value.get("x-vms") else { return vec![] };
    let Some(section) = section.as_mapping().filter(|m| !m.is_empty()) else {
        errors.push(Diagnostic::at_str("x-vms", "must map each VM's name to its settings"));
        return vec![];
    };
    if value.get("services").and_then(Value::as_mapping).is_some_and(|s| !s.is_empty()) {
        errors.push(Diagnostic::at_str(
            "services",
            "a VM stack has no container services of its own: leave `services: {}`",
        ));
    }
    let mut vms = Vec::new();
    for (name, settings) in section {
        let name = name.as_str().unwrap_or_default().to_owned();
        let at = |key: &str| format!("x-vms.{name}.{key}");
        let valid_name = !name.is_empty()
            && name.len() <= 40
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_name {
            errors.push(Diagnostic::at_str(
                &format!("x-vms.{name}"),
                "a VM name is up to 40 lowercase letters, digits and '-', starting with a letter",
            ));
        }
        let Some(settings) = settings.as_mapping() else {
            errors.push(Diagnostic::at_str(&format!("x-vms.{name}"), "must be a mapping with at least `template`"));
            continue;
        };
        for key in settings.keys() {
            if !key.as_str().is_some_and(|k| KEYS.contains(&k)) {
                let key = key.as_str().unwrap_or("?");
                errors.push(Diagnostic::at_str(&at(key), format!("unknown key; a VM takes {}", KEYS.join(", "))));
            }
        }
        let text = |key: &str| {
            settings.get(key).and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        };
        let list = |key: &str, errors: &mut Vec<Diagnostic>| match settings.get(key) {
            None | Some(Value::Null) => vec![],
            Some(Value::Sequence(items)) if items.iter().all(Value::is_string) => {
                items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect()
            }
            Some(_) => {
                errors.push(Diagnostic::at_str(&at(key), "must be a list of strings"));
                vec![]
            }
        };
        let template = match text("template").as_deref().map(VmTemplate::from_slug) {
            Some(Some(template)) => Some(template),
            found => {
                let known: Vec<&str> = VmTemplate::ALL.iter().map(|t| t.slug()).collect();
                let what = if found.is_some() { "unknown template" } else { "a template is required" };
                errors.push(Diagnostic::at_str(&at("template"), format!("{what}; one of {}", known.join(", "))));
                None
            }
        };
        let size = |key: &str, default: u64, min: u64, max: u64, errors: &mut Vec<Diagnostic>| -> u64 {
            let Some(written) = text(key) else {
                if settings.contains_key(key) {
                    errors.push(Diagnostic::at_str(&at(key), "must be a size such as 2g or 512m"));
                }
                return default;
            };
            match parse_mib(&written) {
                Some(mib) if (min..=max).contains(&mib) => mib,
                Some(_) => {
                    errors.push(Diagnostic::at_str(&at(key), format!("must be between {min} MiB and {max} MiB")));
                    default
                }
                None => {
                    errors.push(Diagnostic::at_str(&at(key), format!("{written:?} is not a size such as 2g or 512m")));
                    default
                }
            }
        };
        let memory_mib = size("memory", 1024, 256, 1024 * 1024, errors);
        let disk_gib = size("disk", 20 * 1024, 1024, 4096 * 1024, errors).div_ceil(1024);
        let cpus = match settings.get("cpus") {
            None => 1,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|c| (1..=64).contains(&c)) => {
                u32::try_from(n.as_u64().unwrap_or(1)).unwrap_or(1)
            }
            Some(_) => {
                errors.push(Diagnostic::at_str(&at("cpus"), "must be a whole number from 1 to 64"));
                1
            }
        };
        let admin_password = text("admin_password").filter(|p| !p.is_empty());
        if template.is_some_and(VmTemplate::is_windows) && admin_password.as_ref().is_none_or(|p| p.len() < 8) {
            errors.push(Diagnostic::at_str(
                &at("admin_password"),
                "Windows needs an administrator password of 8 characters or more (put it in the stack's secrets)",
            ));
        }
        let vm = VmSpec {
            name: name.clone(),
            template: template.unwrap_or(VmTemplate::Debian12),
            cpus,
            memory_mib,
            disk_gib,
            network: text("network").unwrap_or_else(|| "default".to_owned()),
            ssh_authorized_keys: list("ssh_authorized_keys", errors),
            packages: list("packages", errors),
            run_commands: list("run", errors),
            admin_password,
        };
        vms.push(vm);
    }
    vms
}
