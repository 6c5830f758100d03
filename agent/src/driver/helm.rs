//! Helm stacks: the `helm` CLI where the agent runs installs or upgrades the release
//! (`--atomic`: Helm rolls a failed upgrade back itself), with this agent as its post-renderer
//! so that every object of the chart carries WindFlow's labels; removal uninstalls it. Helm
//! reaches the cluster as the agent does (in-cluster account or kubeconfig).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use uuid::Uuid;
use windflow_platforms::kubernetes::helm_upgrade_args;
use windflow_protocol::stack::HelmChart;

use super::{DriverError, ProgressSender, report};

/// Longer than the `--timeout` given to Helm, so that Helm reports its own timeout.
const HELM_DEADLINE: Duration = Duration::from_secs(11 * 60);

#[derive(Debug, Clone)]
pub struct HelmDriver {
    binary: PathBuf,
}

/// The `helm` on this host: `WINDFLOW_HELM`, else the first on `PATH`.
fn find() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("WINDFLOW_HELM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join("helm")).find(|p| p.is_file())
}

/// `v3.14.0+g…`, or `None` when no helm runs here.
pub async fn version() -> Option<String> {
    let output = Command::new(find()?).args(["version", "--short"]).output().await.ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

impl HelmDriver {
    pub fn locate() -> Result<Self, DriverError> {
        find().map(|binary| Self { binary }).ok_or_else(|| {
            DriverError::Failed(
                "this stack is a Helm release, and no helm CLI is installed where the agent runs \
                 (install helm, or set WINDFLOW_HELM to its path)"
                    .into(),
            )
        })
    }

    /// Installs or upgrades the release and waits until it is ready, reporting Helm's lines.
    pub async fn apply(
        &self,
        deployment_id: Uuid,
        project: &str,
        namespace: &str,
        chart: &HelmChart,
        progress: &ProgressSender,
    ) -> Result<(), DriverError> {
        // The values can hold secrets: a private file, gone when this returns.
        let dir = tempfile_dir()?;
        let values = dir.join("values.yaml");
        write_private(&values, chart.values_yaml.as_bytes())?;
        let me = std::env::current_exe().map_err(|e| DriverError::Failed(format!("finding the agent binary: {e}")))?;
        let mut args = helm_upgrade_args(project, namespace, chart, &values.to_string_lossy());
        args.extend(["--post-renderer".to_owned(), me.to_string_lossy().into_owned()]);
        for arg in
            ["helm-post-render".to_owned(), format!("--project={project}"), format!("--deployment={deployment_id}")]
        {
            args.extend(["--post-renderer-args".to_owned(), arg]);
        }
        report(progress, format!("helm upgrade --install {project} {}", chart.chart), Some(5));
        let result = self.run(&args, progress).await;
        let _ = std::fs::remove_dir_all(&dir);
        result.map_err(|output| DriverError::Failed(format!("helm could not release {project}: {output}")))
    }

    /// Uninstalls the release if there is one; true when there was.
    pub async fn uninstall(
        &self,
        project: &str,
        namespace: &str,
        progress: &ProgressSender,
    ) -> Result<bool, DriverError> {
        let status = Command::new(&self.binary)
            .args(["status", project, "--namespace", namespace])
            .output()
            .await
            .map_err(|e| DriverError::Failed(format!("running helm: {e}")))?;
        if !status.status.success() {
            return Ok(false);
        }
        report(progress, format!("helm uninstall {project}"), Some(20));
        let args = ["uninstall", project, "--namespace", namespace, "--wait"].map(str::to_owned);
        self.run(&args, progress)
            .await
            .map(|()| true)
            .map_err(|output| DriverError::Failed(format!("helm could not uninstall {project}: {output}")))
    }

    /// Runs helm, passing its lines on as progress; on failure, its last lines.
    async fn run(&self, args: &[String], progress: &ProgressSender) -> Result<(), String> {
        let mut child = Command::new(&self.binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("running {}: {e}", self.binary.display()))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err("helm's output could not be read".into());
        };
        let mut stdout = BufReader::new(stdout).lines();
        let mut stderr = BufReader::new(stderr).lines();
        let mut last = std::collections::VecDeque::with_capacity(8);
        let deadline = tokio::time::sleep(HELM_DEADLINE);
        tokio::pin!(deadline);
        let (mut out_done, mut err_done) = (false, false);
        while !(out_done && err_done) {
            let line = tokio::select! {
                line = stdout.next_line(), if !out_done => line.ok().flatten().or_else(|| { out_done = true; None }),
                line = stderr.next_line(), if !err_done => line.ok().flatten().or_else(|| { err_done = true; None }),
                () = &mut deadline => return Err(format!("helm did not finish within {} s", HELM_DEADLINE.as_secs())),
            };
            if let Some(line) = line.filter(|l| !l.trim().is_empty()) {
                report(progress, format!("helm: {line}"), None);
                if last.len() == 8 {
                    last.pop_front();
                }
                last.push_back(line);
            }
        }
        let status = child.wait().await.map_err(|e| format!("waiting for helm: {e}"))?;
        if status.success() { Ok(()) } else { Err(Vec::from(last).join(" / ")) }
    }
}

fn tempfile_dir() -> Result<PathBuf, DriverError> {
    let dir = std::env::temp_dir().join(format!("windflow-helm-{}", Uuid::new_v4().simple()));
    std::fs::create_dir(&dir).map_err(|e| DriverError::Failed(format!("creating {}: {e}", dir.display())))?;
    set_private(&dir, 0o700)?;
    Ok(dir)
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), DriverError> {
    std::fs::write(path, bytes).map_err(|e| DriverError::Failed(format!("writing {}: {e}", path.display())))?;
    set_private(path, 0o600)
}

fn set_private(path: &std::path::Path, mode: u32) -> Result<(), DriverError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| DriverError::Failed(format!("protecting {}: {e}", path.display())))
}
