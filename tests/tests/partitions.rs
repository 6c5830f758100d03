//! Partitions: an agent in its own network namespace reaches the control plane over a veth link
//! the test cuts and heals, or over a slow and lossy link. Changes made while the agent is cut off are
//! accepted and wait; after each heal the link is usable again within a bound, and every change
//! is applied exactly once, as the agent's journal and the Docker engine show.
//!
//! `WINDFLOW_PARTITION_CYCLES` sets the number of cut-and-heal cycles (10 here, 100 for the
//! figures in docs/reliability.md) and `WINDFLOW_PARTITION_SEED` replays a run's cut lengths.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::json;
use windflow_tests::impaired_link::{ImpairedLink, Impairment};
use windflow_tests::netns::Netns;
use windflow_tests::*;

/// Longest time the link may take to carry a ping again after it is healed.
const RECOVERY_BOUND: Duration = Duration::from_secs(3);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A control plane whose QUIC endpoint is on the namespace's link, and an agent inside it that
/// reaches it over that link (and through an impaired relay, when one is given).
async fn control_plane_and_agent_across(
    dir: &std::path::Path,
    netns: &Netns,
    impairment: Option<Impairment>,
) -> (ControlPlane, Agent, Option<ImpairedLink>) {
    // The test polls hard (a ping every 100 ms while it waits, every deployment's state after
    // each heal): no rate limits.
    let args = ["--rate-limit", "0", "--token-rate-limit", "0"].map(String::from).to_vec();
    let mut cp = ControlPlane::start_on(dir, &netns.host_ip, args).await;
    let token = cp.join_token(1, 600).await;
    let mut agent = Agent::enroll(&cp, &dir.join("agent"), token["token"].as_str().expect("token")).expect("enrolls");
    let endpoint: std::net::SocketAddr = format!("{}:{}", netns.host_ip, cp.quic_port).parse().expect("address");
    let relay = match impairment {
        Some(impairment) => {
            let listen = format!("{}:0", netns.host_ip).parse().expect("address");
            Some(ImpairedLink::start(listen, endpoint, impairment).await.expect("relay"))
        }
        None => None,
    };
    agent.reach_control_plane_at(&relay.as_ref().map_or(endpoint, |r| r.address).to_string());
    agent.start_in(netns);
    let id = agent.id();
    let token = cp.access_token().await;
    let connected = eventually(Duration::from_secs(20), || {
        let (url, http, token) = (cp.url(&format!("/api/v1/targets/{id}/test")), cp.http().clone(), token.clone());
        async move { http.post(url).bearer_auth(token).send().await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    assert!(connected, "the agent never connected:\n{}", agent.logs());
    (cp, agent, relay)
}

/// How long after `healed` a ping first makes the round trip through the agent. Pings go out
/// every 100 ms, each waiting on its own, so one stuck on a dead connection hides nothing.
async fn recovery_after(cp: &mut ControlPlane, target: &str, healed: Instant) -> Duration {
    let token = cp.access_token().await;
    let (url, http) = (cp.url(&format!("/api/v1/targets/{target}/test")), cp.http().clone());
    let mut pings = tokio::task::JoinSet::new();
    let mut every = tokio::time::interval(Duration::from_millis(100));
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = every.tick() => {
                let (url, http, token) = (url.clone(), http.clone(), token.clone());
                pings.spawn(async move { http.post(url).bearer_auth(token).send().await.is_ok_and(|r| r.status().is_success()) });
            }
            Some(Ok(true)) = pings.join_next() => return healed.elapsed(),
            () = &mut deadline => panic!("no ping made it through the agent in the 30 s after the link was healed"),
        }
    }
}

async fn create_stack(cp: &mut ControlPlane, name: &str, image: &str) -> String {
    let compose = format!(
        "services:\n  app:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    restart: unless-stopped\n    stop_grace_period: 1s\n"
    );
    let (status, stack) = cp.api(Method::POST, "/stacks", Some(json!({"name": name, "compose": compose}))).await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    stack["id"].as_str().expect("id").to_owned()
}

/// The deployment's state, or "gone" once removal deleted it.
async fn state_of(cp: &mut ControlPlane, id: &str) -> String {
    let (status, deployment) = cp.api(Method::GET, &format!("/deployments/{id}"), None).await;
    if status == StatusCode::NOT_FOUND {
        return "gone".into();
    }
    deployment["state"].as_str().unwrap_or("?").to_owned()
}

fn containers(project: &str) -> usize {
    docker_objects(project).iter().filter(|o| o.starts_with("container:")).count()
}

struct Tracked {
    id: String,
    project: String,
    removed: bool,
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_for_a_cut_off_agent_wait_and_are_applied_exactly_once_after_every_heal() {
    let cycles: usize = env_or("WINDFLOW_PARTITION_CYCLES", 10);
    let seed: u64 = env_or("WINDFLOW_PARTITION_SEED", rand::random());
    println!("partition cycles: {cycles}, seed: {seed} (WINDFLOW_PARTITION_SEED replays the cut lengths)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let image = busybox_image();
    let netns = Netns::create().expect("a namespace (the tests run as root)");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut cp, agent, _) = control_plane_and_agent_across(dir.path(), &netns, None).await;
    let target = agent.id();
    let run = uuid::Uuid::now_v7().simple().to_string();
    let run = &run[run.len() - 6..];
    let mut cleanup = ProjectsCleanup(Vec::new());
    let mut tracked: Vec<Tracked> = Vec::new();
    let (mut cuts, mut recoveries, mut convergences) = (Vec::new(), Vec::new(), Vec::new());
    let mut slow_recoveries = Vec::new();

    for cycle in 0..cycles {
        let name = format!("part-{run}-{cycle}");
        let stack = create_stack(&mut cp, &name, &image).await;
        cleanup.0.push(windflow_control_plane::compose::project_name(&name));
        // Half the cycles cut first, so the changes wait as pending; the others cut just after,
        // while the jobs are on the wire or running, so their answers may be lost.
        let cut_first = cycle % 2 == 0;
        if cut_first {
            netns.cut().expect("cut");
        }
        let (status, deployed) = cp.api(Method::POST, &format!("/stacks/{stack}/deploy/{target}"), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{deployed}");
        tracked.push(Tracked {
            id: deployed["id"].as_str().expect("id").to_owned(),
            project: windflow_control_plane::compose::project_name(&name),
            removed: false,
        });
        if cycle >= 2 {
            let earlier = &mut tracked[cycle - 2];
            let (status, body) = cp.api(Method::DELETE, &format!("/deployments/{}", earlier.id), None).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            earlier.removed = true;
        }
        if !cut_first {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
            netns.cut().expect("cut");
        }
        let cut = Duration::from_millis(rng.random_range(1_000..=8_000));
        tokio::time::sleep(cut).await;
        netns.heal().expect("heal");
        let healed = Instant::now();
        let recovery = recovery_after(&mut cp, &target, healed).await;
        if recovery > RECOVERY_BOUND {
            let tail = |text: String| {
                text.lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
            };
            slow_recoveries.push(format!(
                "cycle {cycle}: cut {cut:?}, back after {recovery:?}\n--- agent\n{}\n--- control plane\n{}",
                tail(agent.logs()),
                tail(cp.process.logs())
            ));
        }

        // Everything asked for so far ends as asked, in a bounded time.
        let deadline = healed + Duration::from_secs(60);
        loop {
            let mut unsettled = Vec::new();
            for t in &tracked {
                let state = state_of(&mut cp, &t.id).await;
                let wanted = if t.removed { state == "gone" || state == "removed" } else { state == "running" };
                assert!(
                    state != "failed",
                    "deployment {} failed in cycle {cycle}: {:?}",
                    t.id,
                    cp.messages(&t.id).await
                );
                if !wanted {
                    unsettled.push(format!("{}: {state}", t.project));
                }
            }
            if unsettled.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "cycle {cycle}: not settled 60 s after the heal: {unsettled:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let converged = healed.elapsed();
        println!(
            "cycle {cycle}: cut {cut:?} ({}), link back after {recovery:?}, all settled after {converged:?}",
            if cut_first { "before the changes" } else { "after the changes" }
        );
        cuts.push(cut);
        recoveries.push(recovery);
        convergences.push(converged);
    }

    // Exactly once, by the agent's journal: one start and one end per job, no job resumed,
    // one deploy per deployment and one removal per removed deployment.
    let journal = agent.journal();
    let mut starts: HashMap<uuid::Uuid, usize> = HashMap::new();
    let mut ends: HashMap<uuid::Uuid, usize> = HashMap::new();
    for line in &journal {
        assert!(!line.resumed, "no job was interrupted by a crash here: {line:?}");
        let count = if line.outcome.is_some() { &mut ends } else { &mut starts };
        *count.entry(line.job_id).or_default() += 1;
    }
    assert!(starts.values().all(|n| *n == 1), "a job started twice: {starts:?}");
    assert_eq!(starts.keys().collect::<std::collections::HashSet<_>>(), ends.keys().collect(), "every job ended once");
    assert!(ends.values().all(|n| *n == 1), "a job ended twice: {ends:?}");
    for t in &tracked {
        let id: uuid::Uuid = t.id.parse().expect("uuid");
        let jobs = |kind: &str| {
            journal.iter().filter(|l| l.deployment_id == Some(id) && l.kind.as_deref() == Some(kind)).count()
        };
        assert_eq!(jobs("deploy_stack"), 1, "{} was deployed {} times", t.project, jobs("deploy_stack"));
        assert_eq!(jobs("remove_stack"), usize::from(t.removed), "{} removals of {}", jobs("remove_stack"), t.project);
        // And by the engine: one container per running deployment, none left by a removed one.
        assert_eq!(containers(&t.project), usize::from(!t.removed), "containers of {}", t.project);
    }
    let redelivered = agent.logs().matches("asked for again").count();

    recoveries.sort();
    convergences.sort();
    let percentile = |sorted: &[Duration], p: usize| sorted[(sorted.len() * p / 100).min(sorted.len() - 1)];
    println!(
        "figures: {cycles} cycles, cuts {:?}..{:?}; link back after p50 {:?} / max {:?}; all settled after p50 {:?} / max {:?}; \
         {} jobs, 0 lost, 0 applied twice; {redelivered} answers lost with the link and given again from the journal",
        cuts.iter().min().expect("a cycle"),
        cuts.iter().max().expect("a cycle"),
        percentile(&recoveries, 50),
        recoveries.last().expect("a cycle"),
        percentile(&convergences, 50),
        convergences.last().expect("a cycle"),
        starts.len(),
    );
    assert!(
        slow_recoveries.is_empty(),
        "the link came back too slowly after a heal:\n{}",
        slow_recoveries.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deploys_succeed_over_a_link_with_200_ms_latency_and_5_percent_loss() {
    let image = busybox_image();
    let netns = Netns::create().expect("a namespace (the tests run as root)");
    let dir = tempfile::tempdir().expect("tempdir");
    let impairment = Impairment { delay: Duration::from_millis(200), loss: 0.05 };
    let (mut cp, agent, _relay) = control_plane_and_agent_across(dir.path(), &netns, Some(impairment)).await;
    let target = agent.id();

    let run = uuid::Uuid::now_v7().simple().to_string();
    let name = format!("lossy-{}", &run[run.len() - 6..]);
    let _cleanup = ProjectsCleanup(vec![windflow_control_plane::compose::project_name(&name)]);
    let compose = three_service_stack(&image, free_tcp_port(), "over a lossy link");
    let (status, stack) = cp.api(Method::POST, "/stacks", Some(json!({"name": name, "compose": compose}))).await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    let started = Instant::now();
    let (status, accepted) =
        cp.api(Method::POST, &format!("/stacks/{}/deploy/{target}", stack["id"].as_str().expect("id")), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let deployment = cp.settled(&accepted).await;
    assert_eq!(
        deployment["state"],
        "running",
        "{deployment:#}\n{:?}",
        cp.messages(accepted["id"].as_str().unwrap_or_default()).await
    );
    let deployed_in = started.elapsed();

    let ping = cp.api(Method::POST, &format!("/targets/{target}/test"), None).await;
    let removal = cp.api(Method::DELETE, &format!("/deployments/{}", accepted["id"].as_str().expect("id")), None).await;
    assert_eq!(removal.0, StatusCode::ACCEPTED, "{}", removal.1);
    let removed = cp.settled(&removal.1).await;
    assert!(removed["state"] == "removed" || removed.is_null() || removed["code"] == "not_found", "{removed:#}");
    println!(
        "over 200 ms each way and 5 % loss: a three-service deploy took {deployed_in:?}; ping {} ms",
        ping.1["latency_ms"]
    );
}
