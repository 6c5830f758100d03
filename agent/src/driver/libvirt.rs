//! The libvirt driver: a stack's VMs (`x-vms`) as domains of the hypervisor at
//! `WINDFLOW_LIBVIRT_URI` (default `qemu:///system`; the tests use `test:///default`). Each VM
//! gets a qcow2 overlay on its template's base image (made with `qemu-img`), a `cidata` seed disk
//! with its first-boot configuration (made with `genisoimage`), and a domain defined from
//! `windflow_platforms::libvirt::domain_xml`, carrying WindFlow's metadata so that status, the
//! console and removal find it again. Files live in `WINDFLOW_VM_DIR` (default
//! `/var/lib/windflow-agent/vms`; base images in its `templates/`).
//!
//! libvirt itself is linked only with the cargo feature `libvirt` (Debian `libvirt-dev`);
//! without it the agent reports the platform absent and says why.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use uuid::Uuid;
use windflow_platforms::libvirt::{VmPaths, domain_name, domain_xml, meta_data, spec_hash, user_data};
use windflow_protocol::messages::{
    Capability, ContainerState, ContainerStatus, LogChunk, LogStream, ServiceStatus, StackStatus,
};
use windflow_protocol::stack::VmSpec;
use windflow_protocol::{Platform, VmAction};

use super::{DriverError, ProgressSender, report};

/// A domain WindFlow made, as the hypervisor lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    pub uuid: String,
    pub running: bool,
    /// The hypervisor's word for its state: `running`, `shut off`, `paused`…
    pub state: String,
    pub project: String,
    pub deployment: Option<Uuid>,
    pub vm: String,
    pub spec_hash: String,
}

#[derive(Debug, Clone)]
pub struct LibvirtDriver {
    uri: String,
    dir: PathBuf,
}

impl LibvirtDriver {
    pub fn from_env() -> Self {
        let uri = std::env::var("WINDFLOW_LIBVIRT_URI").ok().filter(|u| !u.is_empty());
        let dir = std::env::var_os("WINDFLOW_VM_DIR").filter(|d| !d.is_empty());
        Self {
            uri: uri.unwrap_or_else(|| "qemu:///system".to_owned()),
            dir: dir.map_or_else(|| PathBuf::from("/var/lib/windflow-agent/vms"), PathBuf::from),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&str) -> Result<T, String> + Send + 'static,
    ) -> Result<T, DriverError> {
        let uri = self.uri.clone();
        tokio::task::spawn_blocking(move || work(&uri))
            .await
            .map_err(|e| DriverError::Failed(format!("the libvirt call did not finish: {e}")))?
            .map_err(|message| DriverError::Engine { context: format!("libvirt at {}", self.uri), message })
    }

    /// Whether this agent can drive the hypervisor, and which.
    pub async fn probe(&self) -> Capability {
        let found = tokio::time::timeout(Duration::from_secs(3), self.blocking(hypervisor::describe)).await;
        let (available, detail) = match found {
            Ok(Ok(detail)) => (true, detail),
            Ok(Err(error)) => (false, error.to_string()),
            Err(_) => (false, format!("libvirt at {} did not answer within 3 s", self.uri)),
        };
        Capability { platform: Platform::Libvirt, available, detail }
    }

    fn paths(&self, project: &str, vm: &VmSpec) -> VmPaths {
        VmPaths::new(&self.dir.to_string_lossy(), project, vm)
    }

    /// Makes every VM of the stack exist and run as specified; VMs no longer in it are removed
    /// (their disks kept).
    pub async fn apply(
        &self,
        deployment_id: Uuid,
        project: &str,
        vms: &[VmSpec],
        progress: &ProgressSender,
    ) -> Result<StackStatus, DriverError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| DriverError::Failed(format!("creating {}: {e}", self.dir.display())))?;
        let existing = self.domains(Some(project)).await?;
        for gone in existing.iter().filter(|d| !vms.iter().any(|vm| vm.name == d.vm)) {
            report(progress, format!("{}: no longer in the stack, removing it (its disk is kept)", gone.vm), None);
            let name = gone.name.clone();
            self.blocking(move |uri| hypervisor::remove(uri, &name)).await?;
        }
        let domain_type = self.blocking(hypervisor::domain_type).await?;
        let total = vms.len().max(1);
        for (index, vm) in vms.iter().enumerate() {
            let percent = u8::try_from(index * 90 / total).ok();
            let current = existing.iter().find(|d| d.vm == vm.name);
            if current.is_some_and(|d| d.spec_hash == spec_hash(vm) && d.running) {
                report(progress, format!("{}: unchanged and running", vm.name), percent);
                continue;
            }
            let paths = self.paths(project, vm);
            self.prepare_disks(project, vm, &paths, current.is_some(), progress, percent).await?;
            let xml = domain_xml(project, deployment_id, vm, &paths, &domain_type);
            let name = domain_name(project, &vm.name);
            let restart = current.is_some_and(|d| d.running && d.spec_hash != spec_hash(vm));
            report(
                progress,
                format!("{}: {}", vm.name, if current.is_some() { "redefining" } else { "defining" }),
                percent,
            );
            self.blocking(move |uri| hypervisor::define_and_start(uri, &name, &xml, restart)).await?;
            report(progress, format!("{}: running", vm.name), percent);
        }
        report(progress, "done", Some(100));
        self.status(deployment_id, project).await
    }

    /// The overlay disk (once; anew when the template changed) and the seed disk (always, so
    /// a new configuration reaches the next first boot).
    async fn prepare_disks(
        &self,
        project: &str,
        vm: &VmSpec,
        paths: &VmPaths,
        defined: bool,
        progress: &ProgressSender,
        percent: Option<u8>,
    ) -> Result<(), DriverError> {
        if !Path::new(&paths.base_image).is_file() {
            return Err(DriverError::Failed(format!(
                "{}: the base image of {} is not on this host: put its cloud image (qcow2) at {}",
                vm.name,
                vm.template.slug(),
                paths.base_image
            )));
        }
        let backing = backing_file(&paths.disk).await;
        if backing.as_deref() != Some(paths.base_image.as_str()) {
            if defined && backing.is_some() {
                report(progress, format!("{}: the template changed, its disk is made anew", vm.name), percent);
            }
            report(
                progress,
                format!("{}: creating its {} GiB disk on {}", vm.name, vm.disk_gib, vm.template.slug()),
                percent,
            );
            let _ = tokio::fs::remove_file(&paths.disk).await;
            let size = format!("{}G", vm.disk_gib);
            let args = ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &paths.base_image, &paths.disk, &size];
            run("qemu-img", args).await?;
        }
        report(progress, format!("{}: writing its first-boot configuration", vm.name), percent);
        let seed_dir = self.dir.join(format!(".seed-{}", Uuid::new_v4().simple()));
        tokio::fs::create_dir(&seed_dir).await.map_err(|e| DriverError::Failed(format!("seed directory: {e}")))?;
        let (user, meta) = (seed_dir.join("user-data"), seed_dir.join("meta-data"));
        let written = async {
            write_private(&user, user_data(project, vm).as_bytes()).await?;
            write_private(&meta, meta_data(project, vm).as_bytes()).await?;
            let output = Path::new(&paths.seed);
            let args = [Path::new("-quiet"), Path::new("-output"), output, Path::new("-volid"), Path::new("cidata")];
            let args = args.into_iter().chain([Path::new("-joliet"), Path::new("-rock"), &user, &meta]);
            run("genisoimage", args).await?;
            set_private(output).await
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&seed_dir).await;
        written?;
        if !Path::new(&paths.console_log).exists() {
            write_private(Path::new(&paths.console_log), b"").await?;
        }
        Ok(())
    }

    /// WindFlow's domains on the hypervisor, of one project or all.
    pub async fn domains(&self, project: Option<&str>) -> Result<Vec<Domain>, DriverError> {
        let all = self.blocking(hypervisor::domains).await?;
        Ok(all.into_iter().filter(|d| project.is_none_or(|p| d.project == p)).collect())
    }

    pub async fn status(&self, deployment_id: Uuid, project: &str) -> Result<StackStatus, DriverError> {
        let domains = self.domains(Some(project)).await?;
        let services = domains
            .into_iter()
            .map(|d| ServiceStatus {
                service: d.vm.clone(),
                containers: vec![ContainerStatus {
                    name: d.name,
                    id: d.uuid,
                    state: if d.running { ContainerState::Running } else { ContainerState::Other(d.state) },
                    health: None,
                    restart_count: 0,
                    config_hash: d.spec_hash,
                }],
            })
            .collect();
        Ok(StackStatus { deployment_id, project: project.to_owned(), services })
    }

    /// The deployments whose VMs are on this hypervisor (after an agent restart).
    pub async fn managed(&self) -> Result<HashMap<Uuid, String>, DriverError> {
        let domains = self.domains(None).await?;
        Ok(domains.into_iter().filter_map(|d| Some((d.deployment?, d.project))).collect())
    }

    pub async fn act(&self, project: &str, vm: &str, action: VmAction) -> Result<(), DriverError> {
        let domain = self
            .domains(Some(project))
            .await?
            .into_iter()
            .find(|d| d.vm == vm)
            .ok_or_else(|| DriverError::Failed(format!("the stack has no VM named {vm} on this hypervisor")))?;
        self.blocking(move |uri| hypervisor::act(uri, &domain.name, action)).await
    }

    /// The VMs' serial consoles, as logs: the last `tail` lines, then (with `follow`) what is
    /// written next.
    pub async fn logs(
        &self,
        project: &str,
        vm: Option<&str>,
        tail: Option<u32>,
        follow: bool,
    ) -> Result<mpsc::Receiver<LogChunk>, DriverError> {
        let domains = self.domains(Some(project)).await?;
        let (tx, rx) = mpsc::channel(256);
        for domain in domains.into_iter().filter(|d| vm.is_none_or(|v| v == d.vm)) {
            let path = self.dir.join(format!("{}-console.log", domain.name));
            // Named as containers are, `<project>-<vm>-<n>`, so lines carry their VM.
            let source = format!("{}-1", domain.name);
            let tx = tx.clone();
            tokio::spawn(console(path, source, tail, follow, tx));
        }
        Ok(rx)
    }

    /// Removes the project's domains; their disks and seeds too with `remove_volumes`.
    pub async fn remove(
        &self,
        project: &str,
        remove_volumes: bool,
        progress: &ProgressSender,
    ) -> Result<(), DriverError> {
        for domain in self.domains(Some(project)).await? {
            report(progress, format!("{}: powering off and undefining", domain.vm), None);
            let name = domain.name.clone();
            self.blocking(move |uri| hypervisor::remove(uri, &name)).await?;
            if remove_volumes {
                for suffix in [".qcow2", "-seed.iso", "-console.log"] {
                    let _ = tokio::fs::remove_file(self.dir.join(format!("{}{suffix}", domain.name))).await;
                }
            }
        }
        report(progress, "removed", Some(100));
        Ok(())
    }
}

/// Follows one console log file.
async fn console(path: PathBuf, source: String, tail: Option<u32>, follow: bool, tx: mpsc::Sender<LogChunk>) {
    let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = tail.map_or(0, |t| lines.len().saturating_sub(t as usize));
    let now = || u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    for line in &lines[start..] {
        let chunk = LogChunk {
            source: source.clone(),
            stream: LogStream::Stdout,
            timestamp_unix_ms: now(),
            data: format!("{line}\n").into_bytes(),
        };
        if tx.send(chunk).await.is_err() {
            return;
        }
    }
    if !follow {
        return;
    }
    let mut offset = text.len() as u64;
    let mut pending = String::new();
    while !tx.is_closed() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(mut file) = tokio::fs::File::open(&path).await else { continue };
        if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
            continue;
        }
        let mut more = String::new();
        let Ok(read) = file.read_to_string(&mut more).await else { continue };
        offset += read as u64;
        pending.push_str(&more);
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let chunk = LogChunk {
                source: source.clone(),
                stream: LogStream::Stdout,
                timestamp_unix_ms: now(),
                data: line.into_bytes(),
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    }
}

/// The backing file of a qcow2 image, if it is an overlay.
async fn backing_file(image: &str) -> Option<String> {
    let output = Command::new("qemu-img").args(["info", "--output=json", "-U", image]).output().await.ok()?;
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    info["backing-filename"].as_str().map(str::to_owned)
}

async fn run<S: AsRef<std::ffi::OsStr>>(program: &str, args: impl IntoIterator<Item = S>) -> Result<(), DriverError> {
    let output = Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| DriverError::Failed(format!("running {program}: {e} (is it installed?)")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(DriverError::Failed(format!("{program} failed: {}", String::from_utf8_lossy(&output.stderr).trim())))
    }
}

async fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DriverError> {
    tokio::fs::write(path, bytes).await.map_err(|e| DriverError::Failed(format!("writing {}: {e}", path.display())))?;
    set_private(path).await
}

/// VM files hold first-boot secrets (a Windows password) and guest output: owner only.
async fn set_private(path: &Path) -> Result<(), DriverError> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .await
        .map_err(|e| DriverError::Failed(format!("protecting {}: {e}", path.display())))
}

/// WindFlow's metadata of a domain, read from its XML.
#[cfg_attr(not(feature = "libvirt"), allow(dead_code, reason = "domains are listed through libvirt only"))]
fn read_metadata(xml: &str) -> Option<(String, Option<Uuid>, String, String)> {
    let field = |name: &str| {
        let open = format!("<{}:{name}>", windflow_platforms::libvirt::METADATA_PREFIX);
        let close = format!("</{}:{name}>", windflow_platforms::libvirt::METADATA_PREFIX);
        let start = xml.find(&open)? + open.len();
        let end = xml[start..].find(&close)? + start;
        Some(xml[start..end].to_owned())
    };
    Some((
        field("project")?,
        field("deployment").and_then(|d| Uuid::try_parse(&d).ok()),
        field("name")?,
        field("spec-hash").unwrap_or_default(),
    ))
}

#[cfg(feature = "libvirt")]
mod hypervisor {
    use virt::connect::Connect;
    use virt::domain::{Domain as VirtDomain, DomainState};
    use windflow_protocol::VmAction;

    use super::{Domain, read_metadata};

    /// One connection per hypervisor for the agent's life, opened again when it died (a
    /// restarted libvirtd). Besides saving a handshake per call, this keeps `test:///default`'s
    /// state, which lives only while a connection to it is open.
    fn open(uri: &str) -> Result<Connect, String> {
        static OPEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, Connect>>> =
            std::sync::OnceLock::new();
        let mut open = OPEN.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(connection) = open.get(uri)
            && connection.is_alive().unwrap_or(false)
        {
            return Ok(connection.clone());
        }
        let connection = Connect::open(Some(uri)).map_err(|e| e.to_string())?;
        open.insert(uri.to_owned(), connection.clone());
        Ok(connection)
    }

    fn version(v: u32) -> String {
        format!("{}.{}.{}", v / 1_000_000, v / 1000 % 1000, v % 1000)
    }

    pub fn describe(uri: &str) -> Result<String, String> {
        let connection = open(uri)?;
        let library = connection.lib_version().map_err(|e| e.to_string())?;
        let hypervisor = connection.hyp_version().map(version).unwrap_or_else(|_| "?".into());
        Ok(format!("libvirt {} at {uri} (hypervisor {hypervisor})", version(library)))
    }

    /// `kvm` where the host has it, else `qemu` (emulation); the test driver takes either.
    pub fn domain_type(uri: &str) -> Result<String, String> {
        let kvm = std::path::Path::new("/dev/kvm").exists() || uri.starts_with("test:");
        Ok(if kvm { "kvm" } else { "qemu" }.to_owned())
    }

    fn state_word(state: DomainState) -> &'static str {
        match state {
            DomainState::Running => "running",
            DomainState::Blocked => "blocked",
            DomainState::Paused => "paused",
            DomainState::Shutdown => "shutting down",
            DomainState::Shutoff => "shut off",
            DomainState::Crashed => "crashed",
            DomainState::PMSuspended => "suspended",
            DomainState::NoState => "no state",
        }
    }

    pub fn domains(uri: &str) -> Result<Vec<Domain>, String> {
        let connection = open(uri)?;
        let all = connection.list_all_domains(0).map_err(|e| e.to_string())?;
        Ok(all
            .iter()
            .filter_map(|domain| {
                let xml = domain.xml_desc(0).ok()?;
                let (project, deployment, vm, spec_hash) = read_metadata(&xml)?;
                let state = domain.state().ok().and_then(|(s, _)| s.known()).unwrap_or(DomainState::NoState);
                Some(Domain {
                    name: domain.name().ok()?,
                    uuid: domain.uuid_string().unwrap_or_default(),
                    running: state == DomainState::Running,
                    state: state_word(state).to_owned(),
                    project,
                    deployment,
                    vm,
                    spec_hash,
                })
            })
            .collect())
    }

    fn lookup(connection: &Connect, name: &str) -> Result<VirtDomain, String> {
        connection.lookup_domain_by_name(name).map_err(|e| e.to_string())
    }

    /// Defines (or redefines) the domain and starts it; a running one whose definition changed
    /// is powered off first so that the new one takes effect.
    pub fn define_and_start(uri: &str, name: &str, xml: &str, restart: bool) -> Result<(), String> {
        let connection = open(uri)?;
        if restart && let Ok(domain) = lookup(&connection, name) {
            domain.destroy().map_err(|e| e.to_string())?;
        }
        let domain = connection.define_domain_xml(xml).map_err(|e| e.to_string())?;
        if !domain.is_active().map_err(|e| e.to_string())? {
            domain.create().map_err(|e| e.to_string())?;
        }
        // Autostart is a convenience: a hypervisor that cannot set it is no failure.
        let _ = domain.set_autostart(true);
        Ok(())
    }

    pub fn act(uri: &str, name: &str, action: VmAction) -> Result<(), String> {
        let connection = open(uri)?;
        let domain = lookup(&connection, name)?;
        let active = domain.is_active().map_err(|e| e.to_string())?;
        let done = match action {
            VmAction::Start if active => Ok(()),
            VmAction::Start => domain.create(),
            VmAction::Stop | VmAction::Reboot | VmAction::PowerOff if !active => {
                return Err(format!("{name} is not running"));
            }
            VmAction::Stop => domain.shutdown(),
            VmAction::Reboot => domain.reboot(0),
            VmAction::PowerOff => domain.destroy(),
        };
        done.map_err(|e| e.to_string())
    }

    pub fn remove(uri: &str, name: &str) -> Result<(), String> {
        let connection = open(uri)?;
        let Ok(domain) = lookup(&connection, name) else { return Ok(()) };
        if domain.is_active().unwrap_or(false) {
            domain.destroy().map_err(|e| e.to_string())?;
        }
        domain.undefine().map_err(|e| e.to_string())
    }
}

/// Without the `libvirt` feature every call says so; the capability reports it.
#[cfg(not(feature = "libvirt"))]
mod hypervisor {
    use windflow_protocol::VmAction;

    use super::Domain;

    const ABSENT: &str = "this agent was built without libvirt (cargo feature `libvirt`)";

    pub fn describe(_: &str) -> Result<String, String> {
        Err(ABSENT.into())
    }
    pub fn domain_type(_: &str) -> Result<String, String> {
        Err(ABSENT.into())
    }
    pub fn domains(_: &str) -> Result<Vec<Domain>, String> {
        Err(ABSENT.into())
    }
    pub fn define_and_start(_: &str, _: &str, _: &str, _: bool) -> Result<(), String> {
        Err(ABSENT.into())
    }
    pub fn act(_: &str, _: &str, _: VmAction) -> Result<(), String> {
        Err(ABSENT.into())
    }
    pub fn remove(_: &str, _: &str) -> Result<(), String> {
        Err(ABSENT.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windflows_metadata_is_read_back_from_a_domains_xml() {
        let vm = VmSpec {
            name: "web".into(),
            template: windflow_protocol::stack::VmTemplate::Debian12,
            cpus: 1,
            memory_mib: 512,
            disk_gib: 10,
            network: "default".into(),
            ssh_authorized_keys: vec![],
            packages: vec![],
            run_commands: vec![],
            admin_password: None,
        };
        let id = Uuid::from_u128(42);
        let xml = domain_xml("shop", id, &vm, &VmPaths::new("/vms", "shop", &vm), "kvm");
        assert_eq!(read_metadata(&xml), Some(("shop".into(), Some(id), "web".into(), spec_hash(&vm))));
        assert_eq!(read_metadata("<domain><name>someone-elses</name></domain>"), None);
    }
}
