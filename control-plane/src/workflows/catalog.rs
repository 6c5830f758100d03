//! The workflow templates shipped with WindFlow (`workflow-templates/`), ready to save as a
//! workflow of one's own: the plan's five.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::graph::Graph;

/// Each file, by slug.
pub const FILES: [(&str, &str); 5] = [
    ("deploy-to-production", include_str!("../../../workflow-templates/deploy-to-production.json")),
    ("auto-scaling", include_str!("../../../workflow-templates/auto-scaling.json")),
    ("backup-and-restore", include_str!("../../../workflow-templates/backup-and-restore.json")),
    ("security-scan", include_str!("../../../workflow-templates/security-scan.json")),
    ("health-monitoring", include_str!("../../../workflow-templates/health-monitoring.json")),
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowTemplate {
    pub slug: String,
    pub name: String,
    pub description: String,
    pub graph: Graph,
}

static TEMPLATES: LazyLock<Vec<WorkflowTemplate>> = LazyLock::new(|| {
    FILES
        .iter()
        .filter_map(|(slug, text)| match serde_json::from_str(text) {
            Ok(template) => Some(template),
            Err(e) => {
                // The catalogue's test keeps this from happening in a release.
                tracing::error!(slug, error = %e, "a shipped workflow template does not read");
                None
            }
        })
        .collect()
});

pub fn templates() -> &'static [WorkflowTemplate] {
    &TEMPLATES
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflows::graph::{Action, check};

    #[test]
    fn every_shipped_template_reads_passes_every_check_and_is_named_after_its_file() {
        assert_eq!(templates().len(), FILES.len(), "every file reads");
        for (template, (slug, _)) in templates().iter().zip(FILES) {
            assert_eq!(template.slug, slug);
            assert_eq!(check(&template.graph), [], "{slug}");
            assert!(template.graph.nodes.iter().all(|n| !matches!(n.action, Action::Llm { .. })), "{slug}");
        }
    }
}
