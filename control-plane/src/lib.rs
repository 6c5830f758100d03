//! The WindFlow control plane: holds the desired state, enrolls agents, and talks to them over
//! mutual-TLS QUIC. The binary `windflow` is both this server (`windflow serve`) and a CLI client
//! of its REST API.
//!
//! It must never hold a secret in a log line, never trust an agent beyond what its certificate
//! proves, and never write anything half: every multi-record change is one store transaction.

pub mod agents;
pub mod ai;
pub mod analyzer;
pub mod api;
pub mod api_tokens;
pub mod audit;
pub mod auth;
pub mod breaker;
pub mod cli;
pub mod compose;
pub mod deployments;
pub mod fsutil;
pub mod hub;
pub mod join_tokens;
pub mod labels;
pub mod login_guard;
pub mod logs;
pub mod metrics;
pub mod migrations;
pub mod orgs;
pub mod passwords;
pub mod pki;
pub mod rollouts;
pub mod saga;
pub mod sealing;
pub mod secrets;
pub mod server;
pub mod sso;
pub mod stacks;
pub mod store;
pub mod templates;
pub mod totp;
pub mod workflows;
