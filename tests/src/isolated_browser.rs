//! A network namespace for the test browser, with one port of the host's loopback relayed
//! into it.
//!
//! Chromium aborts requests in flight (`ERR_NETWORK_CHANGED`) whenever the host's interfaces
//! change, and every container the tests start or stop adds or removes one. In a namespace of
//! its own the browser sees only its loopback. The port is relayed through a Unix socket (which
//! crosses namespaces) by two socat processes: one listening in the namespace, one connecting
//! on the host.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct IsolatedBrowser {
    name: String,
    relays: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl IsolatedBrowser {
    /// A namespace where `127.0.0.1:port` reaches the host's `127.0.0.1:port`.
    pub fn relaying(port: u16) -> anyhow::Result<Self> {
        let name = format!("wf-browser-{}-{port}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let mut isolated = Self { name, relays: Vec::new(), _dir: tempfile::tempdir()? };
        run(Command::new("ip").args(["-n", &isolated.name, "link", "set", "lo", "up"]))?;
        let socket: PathBuf = isolated._dir.path().join("relay.sock");
        let socket = socket.to_string_lossy().into_owned();
        isolated.relays.push(
            Command::new("socat")
                .arg(format!("UNIX-LISTEN:{socket},fork"))
                .arg(format!("TCP:127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        isolated.relays.push(
            isolated
                .command("socat")
                .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
                .arg(format!("UNIX-CONNECT:{socket}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        // Both ends listen before the browser starts.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let probe = isolated
                .command("socat")
                .args(["-u", "OPEN:/dev/null", &format!("TCP:127.0.0.1:{port}")])
                .stderr(Stdio::null())
                .status();
            if probe.is_ok_and(|s| s.success()) && std::path::Path::new(&socket).exists() {
                return Ok(isolated);
            }
            anyhow::ensure!(Instant::now() < deadline, "the relay into {} did not come up", isolated.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `program`, run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output()?;
    anyhow::ensure!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}

impl Drop for IsolatedBrowser {
    fn drop(&mut self) {
        for relay in &mut self.relays {
            let _ = relay.kill();
            let _ = relay.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
