//! What the sagas over deployments (migrations, rollouts) share. Each is a pure `advance`
//! function and a pass, run here every half second until shutdown, that stores each decision and
//! carries it out by changing what deployments desire (never their state, the reconciler's).

use std::time::Duration;

use uuid::Uuid;

use crate::deployments::{self, Desired};
use crate::store::{Store, StoreError};

const PASS: Duration = Duration::from_millis(500);

/// Runs `pass` every half second until `shutdown`; a failed pass is logged and tried again.
pub async fn run(
    saga: &'static str,
    shutdown: impl std::future::Future<Output = ()>,
    mut pass: impl FnMut() -> Result<(), StoreError>,
) {
    tokio::pin!(shutdown);
    loop {
        if let Err(error) = pass() {
            tracing::error!(%error, saga, "saga pass failed");
        }
        tokio::select! {
            () = tokio::time::sleep(PASS) => {}
            () = &mut shutdown => return,
        }
    }
}

/// Asks for a deployment's removal (once).
pub fn remove(store: &dyn Store, id: Uuid, volumes: bool) -> Result<(), StoreError> {
    deployments::modify(store, id, |d| {
        if !matches!(d.desired, Desired::Removed { .. }) {
            d.desired = Desired::Removed { volumes };
            d.generation += 1;
        }
    })
    .map(drop)
}

/// Asks for a deployment to run `version`.
pub fn deploy(store: &dyn Store, id: Uuid, version: u32) -> Result<(), StoreError> {
    deployments::modify(store, id, |d| {
        d.version = version;
        d.desired = Desired::Running;
        d.generation += 1;
    })
    .map(drop)
}
