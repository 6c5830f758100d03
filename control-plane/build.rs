//! Embeds the dashboard (`dashboard/dist`, built by `npm run build`) into the binary, compressed.
//! Without a build of it (a plain `cargo build` on a fresh clone) a one-page stand-in that says
//! how to build it is embedded instead, so the control plane still builds and runs.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let dist = manifest.join("../dashboard/dist");
    println!("cargo::rerun-if-changed={}", dist.display());
    let assets = if dist.join("index.html").exists() {
        dist
    } else {
        let stand_in = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("dashboard-stand-in");
        std::fs::create_dir_all(&stand_in).expect("a directory in OUT_DIR");
        std::fs::write(stand_in.join("index.html"), STAND_IN).expect("the stand-in page");
        stand_in
    };
    println!("cargo::rustc-env=WINDFLOW_DASHBOARD_BUILT={}", assets.ends_with("dist"));
    memory_serve::load_directory_with_embed(assets, true);
}

const STAND_IN: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>WindFlow</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 4rem auto">
<h1>WindFlow</h1>
<p>This build of the control plane has no dashboard: it was built before the dashboard was.
Build it with <code>npm ci &amp;&amp; npm run build</code> in <code>dashboard/</code> (or run
<code>scripts/run</code>), then build <code>windflow</code> again.</p>
<p>The API is at <a href="/api/docs">/api/docs</a>.</p>
</body></html>
"#;
