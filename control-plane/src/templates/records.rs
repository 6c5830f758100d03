//! What the marketplace stores: organisations' private templates (every version kept), one
//! review per person per template, and how often each template was deployed. Shipped templates
//! are identified by their slug, private ones by their id.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Template;
use crate::store::{Record, RecordStore, Store, StoreError, Table};

/// A template of one organisation, with all its versions, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateTemplate {
    pub id: Uuid,
    pub org_id: Uuid,
    pub versions: Vec<Template>,
    /// Set by an installation administrator only.
    pub certified: bool,
    pub created_by: String,
    pub created_at_unix_s: i64,
    pub updated_at_unix_s: i64,
}

impl PrivateTemplate {
    pub fn latest(&self) -> &Template {
        // A private template is created with one version and never loses it.
        self.versions.last().unwrap_or_else(|| unreachable!("a private template has a version"))
    }
}

impl Record for PrivateTemplate {
    const TABLE: Table = Table::Templates;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
}

/// One person's stars and words about a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// The template's id as the API names it (a slug or a private template's id).
    pub template: String,
    pub user_id: Uuid,
    pub username: String,
    pub stars: u8,
    pub text: String,
    pub created_at_unix_s: i64,
    pub updated_at_unix_s: i64,
}

fn review_key(template: &str, user_id: Uuid) -> Vec<u8> {
    let mut key = template.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(user_id.as_bytes());
    key
}

fn reviews_prefix(template: &str) -> Vec<u8> {
    let mut key = template.as_bytes().to_vec();
    key.push(0);
    key
}

impl Record for Review {
    const TABLE: Table = Table::TemplateReviews;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        review_key(&self.template, self.user_id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub template: String,
    pub deploys: u64,
}

impl Record for Stats {
    const TABLE: Table = Table::TemplateStats;
    const VERSION: u64 = 1;
    fn key(&self) -> Vec<u8> {
        self.template.as_bytes().to_vec()
    }
}

pub fn reviews(store: &dyn Store, template: &str) -> Result<Vec<Review>, StoreError> {
    store.load_prefix::<Review>(&reviews_prefix(template))
}

pub fn review_of(store: &dyn Store, template: &str, user_id: Uuid) -> Result<Option<Review>, StoreError> {
    store.load::<Review>(&review_key(template, user_id))
}

/// (average stars, count) of a template's reviews.
pub fn rating(store: &dyn Store, template: &str) -> Result<(f64, usize), StoreError> {
    let reviews = reviews(store, template)?;
    let count = reviews.len();
    let total: u32 = reviews.iter().map(|r| u32::from(r.stars)).sum();
    Ok((if count == 0 { 0.0 } else { f64::from(total) / count as f64 }, count))
}

pub fn deploys(store: &dyn Store, template: &str) -> Result<u64, StoreError> {
    Ok(store.load::<Stats>(template.as_bytes())?.map_or(0, |s| s.deploys))
}

/// Counts one deploy, without losing one to a concurrent deploy.
pub fn count_deploy(store: &dyn Store, template: &str) -> Result<(), StoreError> {
    loop {
        let current = store.load::<Stats>(template.as_bytes())?;
        let next = Stats { template: template.to_owned(), deploys: current.as_ref().map_or(0, |s| s.deploys) + 1 };
        let done = match &current {
            Some(current) => store.replace(current, &next)?,
            None => store.atomic(
                &[crate::store::Check { table: Table::TemplateStats, key: next.key(), expected: None }],
                &[crate::store::Write { table: Table::TemplateStats, key: next.key(), value: Some(next.encode()) }],
            )?,
        };
        if done {
            return Ok(());
        }
    }
}

pub fn private_in(store: &dyn Store, org_id: Uuid) -> Result<Vec<PrivateTemplate>, StoreError> {
    Ok(store.load_all::<PrivateTemplate>()?.into_iter().filter(|t| t.org_id == org_id).collect())
}
