//! gitopsd: a GitOps reconciler daemon. Git → desired objects → plan → target, journaled.

pub mod canary;
pub mod cli;
pub mod commands;
pub mod config;
pub mod config_watch;
pub mod daemon;
pub mod diff;
pub mod executor;
pub mod gates;
pub mod health;
pub mod heartbeat;
pub mod journal;
pub mod journal_view;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod probe;
pub mod report;
pub mod rollout;
pub mod server;
pub mod source;
pub mod stats;
pub mod systemd;
pub mod target;
pub mod webhook;
