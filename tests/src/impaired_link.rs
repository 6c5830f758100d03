//! A slow, lossy UDP link between an agent and the control plane, made in user space: every
//! datagram either way is dropped with a given probability or delivered after a given delay.
//!
//! `tc netem` is the usual tool, but the kernels this project's tests run on are built without
//! it (`CONFIG_NET_SCH_NETEM` is not set), so the agent's traffic crosses its namespace's veth
//! link and then this relay, which does what netem's `delay` and `loss` would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;

#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// Added to every datagram, each way.
    pub delay: Duration,
    /// Share of datagrams dropped, each way (0.05 is 5 %).
    pub loss: f64,
}

/// Relays datagrams from clients at `address` to `upstream` and back, impaired. Stops when dropped.
#[derive(Debug)]
pub struct ImpairedLink {
    pub address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ImpairedLink {
    pub async fn start(listen: SocketAddr, upstream: SocketAddr, impairment: Impairment) -> std::io::Result<Self> {
        let downstream = Arc::new(UdpSocket::bind(listen).await?);
        let address = downstream.local_addr()?;
        let task = tokio::spawn(relay(downstream, upstream, impairment));
        Ok(Self { address, task })
    }
}

impl Drop for ImpairedLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(downstream: Arc<UdpSocket>, upstream: SocketAddr, impairment: Impairment) {
    // One upstream socket per client, so that the server sees each client as its own peer.
    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut replies = tokio::task::JoinSet::new();
    let mut buffer = vec![0u8; 65_536];
    loop {
        let Ok((len, client)) = downstream.recv_from(&mut buffer).await else { return };
        let socket = match clients.get(&client) {
            Some(socket) => socket.clone(),
            None => {
                let Ok(socket) = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await else { continue };
                if socket.connect(upstream).await.is_err() {
                    continue;
                }
                let socket = Arc::new(socket);
                replies.spawn(back_to(client, socket.clone(), downstream.clone(), impairment));
                clients.insert(client, socket.clone());
                socket
            }
        };
        let datagram = buffer[..len].to_vec();
        impaired(impairment, async move {
            let _ = socket.send(&datagram).await;
        });
    }
}

/// Carries the server's datagrams for `client` back to it.
async fn back_to(client: SocketAddr, upstream: Arc<UdpSocket>, downstream: Arc<UdpSocket>, impairment: Impairment) {
    let mut buffer = vec![0u8; 65_536];
    while let Ok(len) = upstream.recv(&mut buffer).await {
        let (downstream, datagram) = (downstream.clone(), buffer[..len].to_vec());
        impaired(impairment, async move {
            let _ = downstream.send_to(&datagram, client).await;
        });
    }
}

/// Drops the delivery with the impairment's probability, else runs it after its delay.
fn impaired(impairment: Impairment, deliver: impl std::future::Future<Output = ()> + Send + 'static) {
    if rand::random::<f64>() < impairment.loss {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(impairment.delay).await;
        deliver.await;
    });
}
