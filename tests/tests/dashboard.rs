//! The dashboard in a real browser: `dashboard/tests/e2e/run.mjs` (playwright-core driving
//! Debian's chromium, axe-core on every page) against this real control plane, a real agent and
//! the real Docker engine. Screenshots land in `dashboard/test-results/`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use windflow_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn people_sign_in_add_a_server_write_deploy_watch_roll_back_and_delete_a_stack() {
    let dashboard = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboard");
    assert!(dashboard.join("node_modules/playwright-core").exists(), "scripts/bootstrap runs npm ci in dashboard/");
    let image = busybox_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path()).await;
    // Named by its join token, as the bulk onboarding names servers.
    let (_, token) = cp
        .api(Method::POST, "/targets/join-tokens", Some(json!({"uses": 1, "ttl_seconds": 600, "name": "e2e-host"})))
        .await;
    let mut agent =
        Agent::enroll(&cp, &dir.path().join("agent"), token["token"].as_str().expect("token")).expect("enrolls");
    // The host's hypervisor is libvirt's test driver, with a Debian base image for the VM step.
    let vms = dir.path().join("vms");
    std::fs::create_dir_all(vms.join("templates")).expect("vm dir");
    let base = vms.join("templates/debian-12.qcow2");
    let made = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("64M").status();
    assert!(made.is_ok_and(|s| s.success()), "qemu-img makes the base image");
    agent.env = vec![
        ("WINDFLOW_LIBVIRT_URI".into(), "test:///default".into()),
        ("WINDFLOW_VM_DIR".into(), vms.to_string_lossy().into_owned()),
    ];
    agent.start();
    let id = agent.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !cp.is_connected(&id).await {
        assert!(std::time::Instant::now() < deadline, "the agent connects: {}", agent.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The organisation's language model, for the AI steps: a test answer, then a file the
    // pipeline refuses, then one it accepts.
    let model = windflow_tests::model_server::ModelServer::start().await;
    model.text("OK");
    model.text("```yaml\nservices:\n  web: [oops\n```");
    model.text("```yaml\nservices:\n  web:\n    image: nginx:1.27\n    environment:\n      ADMIN_PASSWORD: ${ADMIN_PASSWORD}\n    restart: unless-stopped\n```");

    // The browser in a network namespace of its own: the containers this test starts and stops
    // change the host's interfaces, which would abort the browser's requests.
    let browser =
        windflow_tests::isolated_browser::IsolatedBrowser::relaying(cp.api_port).expect("the browser's namespace");
    let output = browser
        .command("node")
        .arg("tests/e2e/run.mjs")
        .current_dir(&dashboard)
        .env("WINDFLOW_URL", cp.url(""))
        .env("WINDFLOW_PASSWORD", ADMIN_PASSWORD)
        .env("WINDFLOW_IMAGE", &image)
        .env("WINDFLOW_TARGET", "e2e-host")
        .env("WINDFLOW_MODEL_URL", model.url(""))
        .env("WINDFLOW_RESULTS", dashboard.join("test-results"))
        .output()
        .expect("node runs");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    eprintln!("{report}");
    assert!(output.status.success(), "the browser run failed:\n{report}\ncontrol plane:\n{}", cp.process.logs());
}
