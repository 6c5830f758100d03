//! `/templates`: the marketplace. The certified templates shipped with WindFlow (named by their
//! slug) and the organisation's private ones (named by their id): search, filters and sorting,
//! details with versions and changelog, one review per person, a deploy counter, private
//! templates made from a file or from a stack and versioned, and one-click deploy.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::deployments::{DeploymentView, PlatformName, deploy_stack};
use super::error::{ApiError, ApiJson, ApiQuery, Code};
use super::{AppState, Page, rfc3339_s};
use crate::auth::{Caller, now_unix_s};
use crate::store::RecordStore;
use crate::templates::records::{self, PrivateTemplate, Review};
use crate::templates::{self, Category, Template, catalog};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, new_version, remove))
        .routes(routes!(from_stack))
        .routes(routes!(reviews, review))
        .routes(routes!(edit_review))
        .routes(routes!(deploy))
        .routes(routes!(certify))
        .routes(routes!(import))
}

/// A template found by its API id: shipped (by slug) or the organisation's own.
enum Found {
    Certified(Box<Template>),
    Private(PrivateTemplate),
}

impl Found {
    fn id(&self) -> String {
        match self {
            Found::Certified(t) => t.slug.clone(),
            Found::Private(p) => p.id.to_string(),
        }
    }

    fn latest(&self) -> &Template {
        match self {
            Found::Certified(t) => t,
            Found::Private(p) => p.latest(),
        }
    }
}

fn load(state: &AppState, caller: &Caller, id: &str) -> Result<Found, ApiError> {
    if let Ok(uuid) = Uuid::try_parse(id) {
        let found = state.store.load::<PrivateTemplate>(uuid.as_bytes())?.filter(|t| t.org_id == caller.org_id);
        return found.map(Found::Private).ok_or_else(|| ApiError::not_found("template"));
    }
    catalog::certified()
        .iter()
        .find(|t| t.slug == id)
        .map(|t| Found::Certified(Box::new(t.clone())))
        .ok_or_else(|| ApiError::not_found("template"))
}

/// What a card of the marketplace shows.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateSummary {
    /// The slug of a certified template, the id of a private one.
    id: String,
    slug: String,
    name: String,
    description: String,
    category: Category,
    tags: Vec<String>,
    logo: String,
    version: String,
    certified: bool,
    /// The organisation's own template.
    private: bool,
    rating: Rating,
    deployments: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Rating {
    /// Average stars, 0 when there is no review.
    average: f64,
    count: usize,
}

fn summary(state: &AppState, found: &Found) -> Result<TemplateSummary, ApiError> {
    let id = found.id();
    let t = found.latest();
    let (average, count) = records::rating(state.store.as_ref(), &id)?;
    Ok(TemplateSummary {
        slug: t.slug.clone(),
        name: t.name.clone(),
        description: t.description.clone(),
        category: t.category,
        tags: t.tags.clone(),
        logo: t.logo.clone(),
        version: t.version.clone(),
        certified: match found {
            Found::Certified(_) => true,
            Found::Private(p) => p.certified,
        },
        private: matches!(found, Found::Private(_)),
        rating: Rating { average: (average * 10.0).round() / 10.0, count },
        deployments: records::deploys(state.store.as_ref(), &id)?,
        id,
    })
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum SortBy {
    Rating,
    Deployments,
    Newest,
    Name,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Words that must all appear in the name, description or tags (any case).
    q: Option<String>,
    #[param(inline)]
    category: Option<Category>,
    /// Templates with this tag.
    tag: Option<String>,
    /// Only certified ones (`true`) or only others (`false`).
    certified: Option<bool>,
    /// `rating`, `deployments`, `newest` or `name` (the default).
    #[param(inline)]
    sort: Option<SortBy>,
    #[param(minimum = 1, maximum = 1000000)]
    page: Option<usize>,
    #[param(minimum = 1, maximum = 500)]
    per_page: Option<usize>,
}

/// The marketplace: certified templates and the organisation's own, searched and sorted.
#[utoipa::path(get, path = "/templates", tag = "templates", params(ListQuery),
    responses((status = 200, body = Page<TemplateSummary>)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<TemplateSummary>>, ApiError> {
    let mut found: Vec<Found> = catalog::certified().iter().map(|t| Found::Certified(Box::new(t.clone()))).collect();
    found.extend(records::private_in(state.store.as_ref(), caller.org_id)?.into_iter().map(Found::Private));
    let words: Vec<String> = query.q.as_deref().unwrap_or_default().split_whitespace().map(str::to_lowercase).collect();
    let mut items = Vec::new();
    let mut newest = BTreeMap::new();
    for f in &found {
        let t = f.latest();
        let text = format!("{} {} {}", t.name, t.description, t.tags.join(" ")).to_lowercase();
        let wanted = words.iter().all(|w| text.contains(w.as_str()))
            && query.category.is_none_or(|c| c == t.category)
            && query.tag.as_ref().is_none_or(|tag| t.tags.iter().any(|x| x == tag));
        if !wanted {
            continue;
        }
        let item = summary(&state, f)?;
        if query.certified.is_some_and(|c| c != item.certified) {
            continue;
        }
        newest.insert(item.id.clone(), t.changelog.first().map(|c| c.date.clone()).unwrap_or_default());
        items.push(item);
    }
    match query.sort.unwrap_or(SortBy::Name) {
        SortBy::Name => items.sort_by_key(|a| a.name.to_lowercase()),
        SortBy::Rating => items.sort_by(|a, b| {
            b.rating
                .average
                .total_cmp(&a.rating.average)
                .then(b.rating.count.cmp(&a.rating.count))
                .then(a.name.cmp(&b.name))
        }),
        SortBy::Deployments => items.sort_by(|a, b| b.deployments.cmp(&a.deployments).then(a.name.cmp(&b.name))),
        SortBy::Newest => items.sort_by(|a, b| newest[&b.id].cmp(&newest[&a.id]).then(a.name.cmp(&b.name))),
    }
    let paging = super::PageQuery { page: query.page, per_page: query.per_page };
    Ok(Json(paging.apply(items)?))
}

/// A template page: everything about it, its versions and what deploying it asks for.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateDetail {
    #[serde(flatten)]
    summary: TemplateSummary,
    /// The template itself, as its file says (latest version).
    template: Template,
    /// Every version, newest first.
    versions: Vec<String>,
    /// The template written as its file: where the next version's file starts from.
    file: String,
}

/// One template, certified (by slug) or the organisation's own (by id).
#[utoipa::path(get, path = "/templates/{id}", tag = "templates", params(("id" = String, Path)),
    responses((status = 200, body = TemplateDetail)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TemplateDetail>, ApiError> {
    let found = load(&state, &caller, &id)?;
    Ok(Json(detail(&state, &found)?))
}

fn detail(state: &AppState, found: &Found) -> Result<TemplateDetail, ApiError> {
    let versions = match found {
        Found::Certified(t) => vec![t.version.clone()],
        Found::Private(p) => p.versions.iter().rev().map(|t| t.version.clone()).collect(),
    };
    let template = found.latest().clone();
    let file = serde_yaml::to_string(&template)
        .map_err(|e| ApiError::internal(format!("writing template {} as YAML: {e}", template.slug)))?;
    Ok(TemplateDetail { summary: summary(state, found)?, template, versions, file })
}

/// A template file, as `docs/templates.md` describes it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateFile {
    /// The template's YAML.
    template: String,
}

/// Refuses a template with every problem by path (422 `invalid_template`).
fn checked(yaml: &str) -> Result<Template, ApiError> {
    let template = templates::parse(yaml).map_err(invalid_template)?;
    let problems = templates::check(&template);
    if problems.is_empty() { Ok(template) } else { Err(invalid_template(problems)) }
}

fn invalid_template(problems: Vec<crate::compose::Diagnostic>) -> ApiError {
    let summary: Vec<String> = problems.iter().map(ToString::to_string).collect();
    ApiError::new(Code::InvalidTemplate, format!("the template is not valid: {}", summary.join("; ")))
        .on("template")
        .with_details(serde_json::json!({ "errors": problems }))
}

fn slug_taken(state: &AppState, caller: &Caller, slug: &str, except: Option<Uuid>) -> Result<bool, ApiError> {
    let private = records::private_in(state.store.as_ref(), caller.org_id)?;
    Ok(catalog::certified().iter().any(|t| t.slug == slug)
        || private.iter().any(|p| p.latest().slug == slug && Some(p.id) != except))
}

fn store_new(
    state: &AppState,
    caller: &Caller,
    template: Template,
) -> Result<(StatusCode, Json<TemplateDetail>), ApiError> {
    if slug_taken(state, caller, &template.slug, None)? {
        return Err(ApiError::new(Code::NameTaken, format!("a template named {} exists", template.slug)).on("slug"));
    }
    let now = now_unix_s();
    let record = PrivateTemplate {
        id: Uuid::now_v7(),
        org_id: caller.org_id,
        versions: vec![template],
        certified: false,
        created_by: caller.username.clone(),
        created_at_unix_s: now,
        updated_at_unix_s: now,
    };
    state.store.save(&record)?;
    Ok((StatusCode::CREATED, Json(detail(state, &Found::Private(record))?)))
}

/// Adds a private template to the organisation from its file.
#[utoipa::path(post, path = "/templates", tag = "templates", request_body = TemplateFile,
    responses((status = 201, body = TemplateDetail),
        (status = 422, description = "Every problem with its path (`invalid_template`)", body = super::error::ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<TemplateFile>,
) -> Result<(StatusCode, Json<TemplateDetail>), ApiError> {
    store_new(&state, &caller, checked(&body.template)?)
}

/// What a private template made from a stack is called and says.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FromStack {
    slug: String,
    name: String,
    description: String,
    #[schema(inline)]
    category: Category,
    #[serde(default)]
    tags: Vec<String>,
}

/// Makes a private template of a stack's current version: its variables become string
/// variables with their values as defaults, its secrets password variables (values not kept).
#[utoipa::path(post, path = "/templates/from-stack/{stack_id}", tag = "templates", params(("stack_id" = String, Path)),
    request_body = FromStack, responses((status = 201, body = TemplateDetail)))]
async fn from_stack(
    State(state): State<AppState>,
    caller: Caller,
    Path(stack_id): Path<String>,
    ApiJson(body): ApiJson<FromStack>,
) -> Result<(StatusCode, Json<TemplateDetail>), ApiError> {
    let stack = super::stacks::load(&state, &caller, &stack_id)?;
    let version = crate::stacks::version(state.store.as_ref(), stack.id, stack.current_version)?
        .ok_or_else(|| ApiError::not_found("stack version"))?;
    let used = crate::compose::interpolate::referenced_names(&version.compose);
    let mut variables: Vec<templates::Variable> = version
        .variables
        .iter()
        .filter(|(name, _)| used.contains(name))
        .map(|(name, value)| templates::Variable {
            name: name.clone(),
            kind: templates::VariableKind::String,
            label: name.clone(),
            description: None,
            default: Some(value.clone()),
            required: false,
            secret: false,
            pattern: None,
            options: vec![],
        })
        .collect();
    variables.extend(version.secrets.keys().filter(|name| used.contains(name)).map(|name| templates::Variable {
        name: name.clone(),
        kind: templates::VariableKind::Password,
        label: name.clone(),
        description: None,
        default: None,
        required: false,
        secret: true,
        pattern: None,
        options: vec![],
    }));
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let template = Template {
        format: templates::FORMAT,
        slug: body.slug,
        name: body.name,
        version: "1.0.0".into(),
        description: body.description,
        category: body.category,
        tags: body.tags,
        author: caller.username.clone(),
        licence: "NOASSERTION".into(),
        logo: "https://windflow.dev/template.svg".into(),
        documentation: "https://windflow.dev/docs/templates".into(),
        screenshots: vec![],
        requirements: templates::Requirements::default(),
        variables,
        changelog: vec![templates::ChangelogEntry {
            version: "1.0.0".into(),
            date: today,
            changes: vec![format!("Made from version {} of the stack {}.", version.version, stack.name)],
        }],
        compose: version.compose.clone(),
    };
    let problems = templates::check(&template);
    if !problems.is_empty() {
        return Err(invalid_template(problems));
    }
    store_new(&state, &caller, template)
}

/// Saves a new version of a private template (its version must be higher).
#[utoipa::path(put, path = "/templates/{id}", tag = "templates", params(("id" = String, Path)),
    request_body = TemplateFile, responses((status = 200, body = TemplateDetail)))]
async fn new_version(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TemplateFile>,
) -> Result<Json<TemplateDetail>, ApiError> {
    let Found::Private(current) = load(&state, &caller, &id)? else {
        return Err(ApiError::forbidden("certified templates ship with WindFlow and cannot be edited"));
    };
    let template = checked(&body.template)?;
    let newer = match (semver::Version::parse(&template.version), semver::Version::parse(&current.latest().version)) {
        (Ok(new), Ok(old)) => new > old,
        _ => false,
    };
    if !newer {
        return Err(ApiError::invalid(
            "template",
            format!("version {} must be higher than {}", template.version, current.latest().version),
        ));
    }
    if slug_taken(&state, &caller, &template.slug, Some(current.id))? {
        return Err(ApiError::new(Code::NameTaken, format!("a template named {} exists", template.slug)).on("slug"));
    }
    let mut next = current.clone();
    next.versions.push(template);
    next.updated_at_unix_s = now_unix_s();
    if !state.store.replace(&current, &next)? {
        return Err(ApiError::new(Code::Conflict, "the template changed meanwhile; try again"));
    }
    Ok(Json(detail(&state, &Found::Private(next))?))
}

/// Deletes a private template and its reviews.
#[utoipa::path(delete, path = "/templates/{id}", tag = "templates", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted")))]
async fn remove(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let Found::Private(template) = load(&state, &caller, &id)? else {
        return Err(ApiError::forbidden("certified templates ship with WindFlow and cannot be deleted"));
    };
    let key = template.id.to_string();
    let mut writes = vec![crate::store::Write {
        table: crate::store::Table::Templates,
        key: crate::store::Record::key(&template),
        value: None,
    }];
    for review in records::reviews(state.store.as_ref(), &key)? {
        let key = crate::store::Record::key(&review);
        writes.push(crate::store::Write { table: crate::store::Table::TemplateReviews, key, value: None });
    }
    state.store.atomic(&[], &writes)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Certify {
    certified: bool,
}

/// Marks a private template certified, or not: installation administrators only.
#[utoipa::path(put, path = "/templates/{id}/certified", tag = "templates", params(("id" = String, Path)),
    request_body = Certify, responses((status = 200, body = TemplateDetail)))]
async fn certify(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Certify>,
) -> Result<Json<TemplateDetail>, ApiError> {
    if !caller.is_admin {
        return Err(ApiError::forbidden("only an installation administrator certifies templates"));
    }
    let Found::Private(current) = load(&state, &caller, &id)? else {
        return Err(ApiError::invalid("id", "shipped templates are certified already"));
    };
    let next = PrivateTemplate { certified: body.certified, ..current.clone() };
    if !state.store.replace(&current, &next)? {
        return Err(ApiError::new(Code::Conflict, "the template changed meanwhile; try again"));
    }
    Ok(Json(detail(&state, &Found::Private(next))?))
}

/// A review as the template page shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReviewView {
    username: String,
    stars: u8,
    text: String,
    created_at: String,
    updated_at: String,
}

impl From<Review> for ReviewView {
    fn from(r: Review) -> Self {
        Self {
            username: r.username,
            stars: r.stars,
            text: r.text,
            created_at: rfc3339_s(r.created_at_unix_s),
            updated_at: rfc3339_s(r.updated_at_unix_s),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    /// 1 to 5.
    #[schema(minimum = 1, maximum = 5)]
    stars: u8,
    #[serde(default)]
    #[schema(max_length = 4000)]
    text: String,
}

fn check_review(body: &ReviewBody) -> Result<(), ApiError> {
    if !(1..=5).contains(&body.stars) {
        return Err(ApiError::invalid("stars", "a review gives 1 to 5 stars"));
    }
    if body.text.chars().count() > 4000 {
        return Err(ApiError::invalid("text", "a review is at most 4000 characters"));
    }
    Ok(())
}

/// A template's reviews, newest first.
#[utoipa::path(get, path = "/templates/{id}/reviews", tag = "templates", params(("id" = String, Path)),
    responses((status = 200, body = super::Items<ReviewView>)))]
async fn reviews(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<super::Items<ReviewView>>, ApiError> {
    let found = load(&state, &caller, &id)?;
    let mut all = records::reviews(state.store.as_ref(), &found.id())?;
    all.sort_by_key(|r| std::cmp::Reverse(r.updated_at_unix_s));
    Ok(Json(super::Items { items: all.into_iter().map(ReviewView::from).collect() }))
}

/// Reviews a template: one review per person (409 for a second; edit it instead).
#[utoipa::path(post, path = "/templates/{id}/reviews", tag = "templates", params(("id" = String, Path)),
    request_body = ReviewBody, responses((status = 201, body = ReviewView),
        (status = 409, description = "Already reviewed", body = super::error::ErrorBody)))]
async fn review(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ReviewBody>,
) -> Result<(StatusCode, Json<ReviewView>), ApiError> {
    let found = load(&state, &caller, &id)?;
    check_review(&body)?;
    let template = found.id();
    let now = now_unix_s();
    let review = Review {
        template,
        user_id: caller.user_id,
        username: caller.username.clone(),
        stars: body.stars,
        text: body.text,
        created_at_unix_s: now,
        updated_at_unix_s: now,
    };
    let key = crate::store::Record::key(&review);
    let created = state.store.atomic(
        &[crate::store::Check { table: crate::store::Table::TemplateReviews, key: key.clone(), expected: None }],
        &[crate::store::Write {
            table: crate::store::Table::TemplateReviews,
            key,
            value: Some(crate::store::Record::encode(&review)),
        }],
    )?;
    if !created {
        return Err(ApiError::new(Code::Conflict, "you reviewed this template already; edit your review instead"));
    }
    Ok((StatusCode::CREATED, Json(review.into())))
}

/// Edits the caller's review of a template.
#[utoipa::path(put, path = "/templates/{id}/reviews/mine", tag = "templates", params(("id" = String, Path)),
    request_body = ReviewBody, responses((status = 200, body = ReviewView)))]
async fn edit_review(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ReviewBody>,
) -> Result<Json<ReviewView>, ApiError> {
    let found = load(&state, &caller, &id)?;
    check_review(&body)?;
    let current = records::review_of(state.store.as_ref(), &found.id(), caller.user_id)?
        .ok_or_else(|| ApiError::not_found("review"))?;
    let next = Review { stars: body.stars, text: body.text, updated_at_unix_s: now_unix_s(), ..current.clone() };
    if !state.store.replace(&current, &next)? {
        return Err(ApiError::new(Code::Conflict, "the review changed meanwhile; try again"));
    }
    Ok(Json(next.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployTemplate {
    target_id: String,
    /// Values by variable name; what is left out takes its default (passwords are generated).
    #[serde(default)]
    variables: BTreeMap<String, String>,
    /// The new stack's name (the template's slug by default).
    stack_name: Option<String>,
    #[schema(inline)]
    platform: Option<PlatformName>,
}

/// What a one-click deploy made.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateDeployment {
    stack_id: Uuid,
    deployment: DeploymentView,
}

/// Deploys a template in one go: every value is checked first (422 naming the variable), the
/// target's CPUs and memory against the template's requirements, then a stack is made of it and
/// deployed to the target.
#[utoipa::path(post, path = "/templates/{id}/deploy", tag = "templates", params(("id" = String, Path)),
    request_body = DeployTemplate, responses((status = 201, body = TemplateDeployment),
        (status = 422, description = "A variable or a requirement (`field` names it)", body = super::error::ErrorBody)))]
async fn deploy(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DeployTemplate>,
) -> Result<(StatusCode, Json<TemplateDeployment>), ApiError> {
    let found = load(&state, &caller, &id)?;
    let template = found.latest().clone();
    let target = super::targets::load(&state, &caller, &body.target_id)?;
    let resolved = templates::resolve(&template, &body.variables).map_err(|refusals| {
        let (first, _) = refusals.first().cloned().unwrap_or_default();
        let said: Vec<String> = refusals.iter().map(|(name, why)| format!("{name}: {why}")).collect();
        let details: BTreeMap<String, String> = refusals.into_iter().collect();
        ApiError::new(Code::InvalidField, said.join("; "))
            .on(&format!("variables.{first}"))
            .with_details(serde_json::json!({ "variables": details }))
    })?;
    check_requirements(&state, &template, &target)?;
    let name = body.stack_name.clone().unwrap_or_else(|| template.slug.clone());
    let content = crate::stacks::Content {
        compose: template.compose.clone(),
        variables: resolved.variables,
        secrets: resolved.secrets,
    };
    if let Ok(parsed) = crate::stacks::validate(&name, &content) {
        check_ports_free(&state, &template, &content, &parsed.spec, &target)?;
    }
    let saved = crate::stacks::create(
        state.store.as_ref(),
        &state.master_key,
        caller.org_id,
        &name,
        content,
        &caller.username,
    )?;
    let platform = body.platform.map(windflow_protocol::Platform::from);
    let deployment = match deploy_stack(&state, &caller, &saved.stack, &target, None, platform) {
        Ok((_, Json(deployment))) => deployment,
        Err(refused) => {
            // Refused before anything ran (platform, compatibility): the stack made for it goes too.
            crate::stacks::delete(state.store.as_ref(), &saved.stack)?;
            return Err(refused);
        }
    };
    records::count_deploy(state.store.as_ref(), &found.id())?;
    tracing::info!(template = %found.id(), stack = %saved.stack.name, by = %caller.username, "template deployed");
    Ok((StatusCode::CREATED, Json(TemplateDeployment { stack_id: saved.stack.id, deployment })))
}

/// Refuses a target that does not have what the template needs (when its facts are known).
fn check_requirements(state: &AppState, template: &Template, target: &crate::agents::Agent) -> Result<(), ApiError> {
    let facts = state.hub.status(target.id).map(|l| l.facts).or_else(|| target.facts.clone());
    let Some(facts) = facts else { return Ok(()) };
    if let Some(cpus) = template.requirements.cpus
        && facts.cpus < cpus
    {
        return Err(ApiError::invalid(
            "requirements.cpus",
            format!("{} needs {cpus} CPUs and the target has {}", template.name, facts.cpus),
        ));
    }
    if let Some(memory) = &template.requirements.memory
        && let Some(mib) = windflow_platforms::libvirt::parse_mib(memory)
        && facts.memory_bytes < mib * 1024 * 1024
    {
        return Err(ApiError::invalid(
            "requirements.memory",
            format!(
                "{} needs {memory} of memory and the target has {} MiB",
                template.name,
                facts.memory_bytes / (1024 * 1024)
            ),
        ));
    }
    Ok(())
}

/// Refuses host ports that another deployment on the target already publishes (on Docker and
/// Swarm, where a host port is the host's), naming the variable that chose the port when one did.
fn check_ports_free(
    state: &AppState,
    template: &Template,
    content: &crate::stacks::Content,
    spec: &windflow_protocol::stack::StackSpec,
    target: &crate::agents::Agent,
) -> Result<(), ApiError> {
    let wanted = published_ports(spec);
    if wanted.is_empty() {
        return Ok(());
    }
    let neighbours = crate::deployments::list_in(state.store.as_ref(), target.org_id)?;
    let running = neighbours.iter().filter(|d| {
        d.target_id == target.id
            && d.desired == crate::deployments::Desired::Running
            && matches!(d.platform, windflow_protocol::Platform::Docker | windflow_protocol::Platform::Swarm)
    });
    for other in running {
        let version = other.running_version.unwrap_or(other.version);
        let Ok(parsed) = crate::deployments::desired_spec(state.store.as_ref(), &state.master_key, other, version)
        else {
            continue;
        };
        let taken = published_ports(&parsed.spec);
        if let Some((port, protocol)) = wanted.iter().find(|p| taken.contains(p)) {
            let chooser = template.variables.iter().find(|v| {
                v.kind == templates::VariableKind::Port
                    && content.variables.get(&v.name).is_some_and(|value| value == &port.to_string())
            });
            let field = chooser.map_or("requirements.ports".to_string(), |v| format!("variables.{}", v.name));
            let advice = chooser.map_or(String::new(), |v| format!("; choose another {}", v.name));
            return Err(ApiError::invalid(
                &field,
                format!(
                    "port {port}/{protocol} is already published on this target by project {}{advice}",
                    other.project
                ),
            ));
        }
    }
    Ok(())
}

fn published_ports(spec: &windflow_protocol::stack::StackSpec) -> Vec<(u16, &'static str)> {
    spec.services
        .iter()
        .flat_map(|s| &s.ports)
        .filter_map(|p| {
            let protocol = match p.protocol {
                windflow_protocol::stack::Protocol::Tcp => "tcp",
                windflow_protocol::stack::Protocol::Udp => "udp",
            };
            Some((p.host_port?, protocol))
        })
        .collect()
}

/// A Portainer app-template file to import: its content (an uploaded file), or where to fetch it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// The file's JSON.
    content: Option<String>,
    /// An http(s) URL of the file.
    url: Option<String>,
}

/// What an import did, entry by entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportReport {
    imported: Vec<ImportedTemplate>,
    skipped: Vec<SkippedEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportedTemplate {
    id: Uuid,
    slug: String,
    name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SkippedEntry {
    /// The entry's place in the file, from 0.
    index: usize,
    title: String,
    reason: String,
}

/// How long fetching a file may take, and how large it may be.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
const FETCH_LIMIT: usize = 5 * 1024 * 1024;

fn fetcher() -> Result<reqwest::Client, ApiError> {
    super::outbound_http(FETCH_TIMEOUT).map_err(ApiError::internal)
}

/// The body at `url`, up to FETCH_LIMIT bytes, or why not.
async fn fetch(client: &reqwest::Client, url: &str) -> Result<String, String> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!("{url} is not an http(s) URL"));
    }
    let mut response = client.get(url).send().await.map_err(|e| format!("fetching {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("fetching {url}: {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("reading {url}: {e}"))? {
        body.extend_from_slice(&chunk);
        if body.len() > FETCH_LIMIT {
            return Err(format!("{url} is over {FETCH_LIMIT} bytes"));
        }
    }
    String::from_utf8(body).map_err(|_| format!("{url} is not text"))
}

/// Imports a Portainer app-template file (formats 2 and 3) into the organisation's private
/// templates: container entries become a Compose file, stack entries take the Compose file of
/// their repository. Each entry is imported whole or skipped with the reason.
#[utoipa::path(post, path = "/templates/import", tag = "templates", request_body = ImportRequest,
    responses((status = 200, body = ImportReport),
        (status = 422, description = "Not a Portainer template file, or neither content nor url", body = super::error::ErrorBody)))]
async fn import(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ImportRequest>,
) -> Result<Json<ImportReport>, ApiError> {
    let client = fetcher()?;
    let (json, source) = match (body.content, body.url) {
        (Some(content), None) => (content, "an uploaded Portainer file".to_owned()),
        (None, Some(url)) => (fetch(&client, &url).await.map_err(|e| ApiError::invalid("url", e))?, url),
        _ => return Err(ApiError::invalid("content", "give the file's content or its url, one of them")),
    };
    let file = templates::portainer::read(&json).map_err(|e| ApiError::invalid("content", e))?;
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let mut report = ImportReport { imported: vec![], skipped: vec![] };
    for (index, entry) in file.templates.iter().enumerate() {
        let title = entry.title.clone();
        let stack_file = match &entry.repository {
            Some(repository) if entry.kind != 1 => {
                Some(fetch(&client, &templates::portainer::stack_file_url(repository)).await)
            }
            _ => None,
        };
        let converted = match stack_file {
            Some(Err(why)) => Err(why),
            Some(Ok(file)) => templates::portainer::convert(entry, Some(&file), &source, &today),
            None => templates::portainer::convert(entry, None, &source, &today),
        };
        let checked = converted.and_then(|template| {
            let problems = templates::check(&template);
            if problems.is_empty() {
                Ok(template)
            } else {
                Err(problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
            }
        });
        let template = match checked {
            Ok(template) => template,
            Err(reason) => {
                report.skipped.push(SkippedEntry { index, title, reason });
                continue;
            }
        };
        if slug_taken(&state, &caller, &template.slug, None)? {
            let reason = format!("a template named {} exists", template.slug);
            report.skipped.push(SkippedEntry { index, title, reason });
            continue;
        }
        let (slug, name) = (template.slug.clone(), template.name.clone());
        let (_, Json(created)) = store_new(&state, &caller, template)?;
        let id = Uuid::try_parse(&created.summary.id).map_err(ApiError::internal)?;
        report.imported.push(ImportedTemplate { id, slug, name });
    }
    tracing::info!(imported = report.imported.len(), skipped = report.skipped.len(), by = %caller.username, "Portainer templates imported");
    Ok(Json(report))
}
