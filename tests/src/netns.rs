//! A network namespace joined to this one by a veth pair whose link a test controls: cut it and
//! heal it. Everything it made is removed on drop, also when the test fails. (Slow and lossy
//! links: [`crate::impaired_link`].)

use std::process::Command;

/// A namespace `wfp<tag>` with `10.232.<a>.<b+2>` inside, reached at `10.232.<a>.<b+1>` here.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    /// The host's end of the pair: the link the test cuts.
    pub host_link: String,
    inner_link: String,
    /// This side's address, which servers for the namespace bind to.
    pub host_ip: String,
    pub inner_ip: String,
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(args[0]).args(&args[1..]).output()?;
    anyhow::ensure!(
        output.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

impl Netns {
    /// Makes the namespace and its link, up and clean. Needs root (CAP_NET_ADMIN).
    pub fn create() -> anyhow::Result<Self> {
        // A /30 per namespace from a random place in 10.232.0.0/16, so parallel tests do not meet.
        let slot: u16 = rand::random::<u16>() & 0x3fff;
        let (a, b) = (slot >> 6, (slot & 0x3f) * 4);
        let tag = format!("{slot:04x}");
        let netns = Self {
            name: format!("wfp{tag}"),
            host_link: format!("wfp{tag}h"),
            inner_link: format!("wfp{tag}n"),
            host_ip: format!("10.232.{a}.{}", b + 1),
            inner_ip: format!("10.232.{a}.{}", b + 2),
        };
        run(&["ip", "netns", "add", &netns.name])?;
        run(&["ip", "link", "add", &netns.host_link, "type", "veth", "peer", "name", &netns.inner_link])?;
        run(&["ip", "link", "set", &netns.inner_link, "netns", &netns.name])?;
        run(&["ip", "addr", "add", &format!("{}/30", netns.host_ip), "dev", &netns.host_link])?;
        run(&["ip", "link", "set", &netns.host_link, "up"])?;
        netns.exec(&["ip", "addr", "add", &format!("{}/30", netns.inner_ip), "dev", &netns.inner_link])?;
        netns.exec(&["ip", "link", "set", &netns.inner_link, "up"])?;
        netns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    fn exec(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// A command that runs `program` inside the namespace (the same process: `ip netns exec`
    /// execs it, so killing the child kills the program).
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Cuts the link: nothing passes either way until [`heal`](Self::heal).
    pub fn cut(&self) -> anyhow::Result<()> {
        run(&["ip", "link", "set", &self.host_link, "down"])
    }

    pub fn heal(&self) -> anyhow::Result<()> {
        run(&["ip", "link", "set", &self.host_link, "up"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both; the namespace goes with its last process.
        let _ = run(&["ip", "link", "del", &self.host_link]);
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}
