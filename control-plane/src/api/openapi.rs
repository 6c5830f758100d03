//! The OpenAPI 3.1 document (`/api/openapi.json`) and its browsable docs (`/api/docs`, served
//! from the binary, so they work offline).
//!
//! Paths come from the handlers themselves (`#[utoipa::path]`, registered with
//! `utoipa_axum::routes!`), so a route cannot exist without being documented. This module adds
//! what every operation shares: the bearer security scheme and the error answer.

use utoipa::Modify;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder};

use super::AppState;
use super::error::ErrorBody;

pub const SECURITY_SCHEME: &str = "bearer";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "WindFlow API",
        description = "Deploy containers and VMs onto many machines from one place.\n\n\
            Authenticate with `Authorization: Bearer <token>`: an access token from `POST /api/v1/auth/login`, \
            or an API token (`wft_…`) whose scope (read, deploy, admin) limits what it may do. \
            A request acts in one organisation: the one named by the `X-WindFlow-Org` header (id or name), \
            else the API token's, else the user's oldest. Objects of other organisations answer 404.\n\n\
            Every error has the same shape, `{\"error\": {\"code\", \"message\", \"field\"?, \"details\"?}}`, \
            with the codes listed under the `Code` schema. Lists take `page` and `per_page`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody)),
    modifiers(&Shared),
    tags(
        (name = "auth", description = "Sign-in, sessions, two-factor authentication, single sign-on and API tokens"),
        (name = "targets", description = "Hosts running an agent, and the join tokens that add them"),
        (name = "stacks", description = "Compose stacks and their immutable versions"),
        (name = "templates", description = "The marketplace: certified and private templates, reviews, one-click deploy"),
        (name = "deployments", description = "A stack version on a target: desired state, observed state, events and logs"),
        (name = "ai", description = "AI assistance: an organisation's language model, generating stacks, diagnosing deployments"),
        (name = "orgs", description = "Organisations (tenants) and their members"),
        (name = "users", description = "Accounts of the installation"),
        (name = "audit", description = "The tamper-evident audit trail"),
        (name = "agents", description = "Agent enrollment (the join token is the credential)"),
    )
)]
pub struct ApiDoc;

/// The bearer security scheme.
struct Shared;

impl Modify for Shared {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An access token (JWT) from /auth/login, or an API token `wft_…`"))
                    .build(),
            ),
        );
    }
}

/// What the modifier cannot do, applied once every path is in the document (modifiers run
/// before `routes!` adds the paths): the error answer as every operation's `default` response,
/// and bearer authentication on every operation that does not declare itself public.
pub fn finish(mut openapi: OpenApi) -> OpenApi {
    let error = ResponseBuilder::new()
        .description("An error; `error.code` says which (see the `Code` schema)")
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
        .build();
    for item in openapi.paths.paths.values_mut() {
        for operation in operations(item) {
            operation.responses.responses.entry("default".into()).or_insert_with(|| error.clone().into());
            if operation.security.is_none() {
                operation.security = Some(vec![SecurityRequirement::new(SECURITY_SCHEME, Vec::<String>::new())]);
            }
            // Handler names repeat across modules (`list`, `show`); with the tag they are unique.
            if let (Some(tag), Some(id)) = (operation.tags.as_ref().and_then(|t| t.first()), &operation.operation_id) {
                operation.operation_id = Some(format!("{tag}_{id}"));
            }
            // OpenAPI requires a description on every response.
            for (status, response) in &mut operation.responses.responses {
                if let utoipa::openapi::RefOr::T(response) = response
                    && response.description.is_empty()
                {
                    response.description = status
                        .parse::<u16>()
                        .ok()
                        .and_then(|s| axum::http::StatusCode::from_u16(s).ok())
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("Success")
                        .to_owned();
                }
            }
        }
    }
    openapi
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head]
        .into_iter()
        .filter_map(Option::as_mut)
}

/// `/api/openapi.json` and the Swagger UI at `/api/docs`.
pub fn docs(document: OpenApi) -> axum::Router<AppState> {
    utoipa_swagger_ui::SwaggerUi::new("/api/docs").url("/api/openapi.json", document).into()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn every_operation_has_a_unique_id_a_tag_and_described_responses() {
        let mut document = super::super::openapi();
        let mut ids = HashSet::new();
        for (path, item) in &mut document.paths.paths {
            for operation in super::operations(item) {
                let id = operation.operation_id.clone().unwrap_or_default();
                assert!(ids.insert(id.clone()), "{path}: operation id {id:?} repeats");
                assert!(operation.tags.as_ref().is_some_and(|t| t.len() == 1), "{path}: one tag");
                assert!(operation.responses.responses.contains_key("default"), "{path}: the error answer");
                for (status, response) in &operation.responses.responses {
                    if let utoipa::openapi::RefOr::T(response) = response {
                        assert!(!response.description.is_empty(), "{path} {status}: a description");
                    }
                }
            }
        }
        assert!(ids.len() >= 45, "{} operations", ids.len());
    }

    #[test]
    fn only_sign_in_single_sign_on_refresh_and_enrollment_are_public() {
        let mut document = super::super::openapi();
        let mut public: Vec<String> = document
            .paths
            .paths
            .iter_mut()
            .flat_map(|(path, item)| {
                let path = path.clone();
                super::operations(item)
                    .filter(|op| op.security.as_ref().is_some_and(|s| s.iter().all(|r| r == &Default::default())))
                    .map(move |_| path.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        public.sort();
        let expected = [
            "/api/v1/agents/enroll",
            "/api/v1/auth/login",
            "/api/v1/auth/login/totp",
            "/api/v1/auth/refresh",
            "/api/v1/auth/sso/callback",
            "/api/v1/auth/sso/exchange",
            "/api/v1/auth/sso/providers",
            "/api/v1/auth/sso/{org}/start",
        ];
        assert_eq!(public, expected);
    }
}
