//! A Docker engine of a test's own: in a network namespace, with its own data root and socket,
//! so that a test may restart it, or use it as a second host, without disturbing the others.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::Process;
use crate::netns::Netns;

/// A Docker engine of the test's own, stopped and its data removed on drop.
pub struct PrivateEngine {
    netns: Netns,
    root: PathBuf,
    process: Option<Process>,
}

impl PrivateEngine {
    pub fn start(root: &Path) -> Self {
        let mut engine = Self { netns: Netns::create().expect("namespace"), root: root.to_owned(), process: None };
        engine.launch();
        engine
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.root.join("docker.sock").display())
    }

    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker").arg("-H").arg(self.host()).args(args).output().expect("docker runs")
    }

    fn launch(&mut self) {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/var/run/netns/{}", self.netns.name))
            .arg("dockerd")
            .arg("--data-root")
            .arg(self.root.join("data"))
            .arg("--exec-root")
            .arg(self.root.join("exec"))
            .arg("--pidfile")
            .arg(self.root.join("docker.pid"))
            .arg("--host")
            .arg(self.host());
        self.process = Some(Process::spawn(&mut command, self.root.join("dockerd.log")).expect("dockerd"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.docker(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "the private engine did not start:\n{}",
                std::fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Copies an image of the main engine into this one (it has no registry either).
    pub fn load_image(&self, image: &str) {
        let load = Command::new("sh")
            .arg("-c")
            .arg(format!("docker save {image} | docker -H {} load", self.host()))
            .status()
            .expect("sh");
        assert!(load.success(), "loading {image} into the private engine");
    }

    /// Stops the engine as a service manager would (SIGTERM, containers stopped), then starts it.
    pub fn restart(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate();
        }
        self.launch();
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout).split_whitespace().map(str::to_owned).collect();
        if !ids.is_empty() {
            let _ = Command::new("docker").arg("-H").arg(self.host()).args(["rm", "-f"]).args(&ids).output();
        }
        if let Some(mut process) = self.process.take() {
            process.terminate();
        }
    }
}
