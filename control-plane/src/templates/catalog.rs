//! The certified templates shipped with WindFlow: the files of `templates/`, built into the
//! binary. Each is checked by the tests like any template (`templates::check`), and more.

use super::{Template, parse};

/// (slug, file) of every shipped template.
pub const FILES: &[(&str, &str)] = &[
    ("elasticsearch-kibana", include_str!("../../../templates/elasticsearch-kibana.yaml")),
    ("ghost", include_str!("../../../templates/ghost.yaml")),
    ("gitea", include_str!("../../../templates/gitea.yaml")),
    ("gitlab-ce", include_str!("../../../templates/gitlab-ce.yaml")),
    ("keycloak", include_str!("../../../templates/keycloak.yaml")),
    ("lamp", include_str!("../../../templates/lamp.yaml")),
    ("mattermost", include_str!("../../../templates/mattermost.yaml")),
    ("mean", include_str!("../../../templates/mean.yaml")),
    ("mern", include_str!("../../../templates/mern.yaml")),
    ("minio", include_str!("../../../templates/minio.yaml")),
    ("n8n", include_str!("../../../templates/n8n.yaml")),
    ("nextcloud", include_str!("../../../templates/nextcloud.yaml")),
    ("postgresql-pgadmin", include_str!("../../../templates/postgresql-pgadmin.yaml")),
    ("prometheus-grafana", include_str!("../../../templates/prometheus-grafana.yaml")),
    ("rabbitmq", include_str!("../../../templates/rabbitmq.yaml")),
    ("redis-cluster", include_str!("../../../templates/redis-cluster.yaml")),
    ("traefik", include_str!("../../../templates/traefik.yaml")),
    ("uptime-kuma", include_str!("../../../templates/uptime-kuma.yaml")),
    ("vaultwarden", include_str!("../../../templates/vaultwarden.yaml")),
    ("wordpress", include_str!("../../../templates/wordpress.yaml")),
];

/// The shipped templates, read once. A file that does not read is a build that must not ship:
/// the tests read every one.
pub fn certified() -> &'static [Template] {
    static READ: std::sync::LazyLock<Vec<Template>> =
        std::sync::LazyLock::new(|| FILES.iter().filter_map(|(_, file)| parse(file).ok()).collect());
    &READ
}
