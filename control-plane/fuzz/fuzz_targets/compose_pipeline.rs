//! Arbitrary text through the whole stack pipeline: parsing, interpolation, validation, the rule
//! analyser and the renderings for Swarm, Kubernetes, Helm and libvirt. An invalid file must be
//! refused with diagnostics, never panic.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use windflow_control_plane::{analyzer, compose};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let variables = BTreeMap::from([("TAG".to_owned(), "1.2".to_owned()), ("PORT".to_owned(), "8080".to_owned())]);
    match compose::parse(text, "fuzz", &variables) {
        Ok(parsed) => {
            let _ = analyzer::analyze(text, &parsed.spec);
            let _ = windflow_platforms::swarm::render(&parsed.spec, &parsed.swarm);
            let _ = windflow_platforms::kubernetes::render(&parsed.spec, &parsed.swarm, Some("fuzz"));
            if let Some(chart) = &parsed.helm {
                let _ = windflow_platforms::kubernetes::render_helm("fuzz", chart);
            }
            let _ = windflow_platforms::libvirt::render("fuzz", &parsed.vms);
        }
        Err(invalid) => assert!(!invalid.errors.is_empty(), "a refused file says why"),
    }
});
