//! Integration tests: the gitopsd binary against real git repositories and directory targets.
// Test and benchmark code drives files and processes directly: the I/O boundary is for the
// daemon's async code.
#![allow(clippy::disallowed_methods)]

mod api;
mod apiserver;
mod architecture;
mod bad_input;
mod blue_green;
mod browser;
mod crash;
mod daemon;
mod diff;
mod e2e;
mod e2e_blue_green;
mod e2e_cache;
mod e2e_first_contact;
mod e2e_ha;
mod e2e_hooks;
mod e2e_mixed;
mod e2e_pages;
mod e2e_rollout;
mod e2e_watch;
mod forge_out;
mod helpers;
mod hooks;
mod http_git;
mod init;
mod kubernetes;
mod package_files;
mod pages;
mod prometheus;
mod properties;
mod receivers;
mod reconcile;
mod render;
mod rollout;
mod scale;
mod secrets;
mod sops;
mod ssh;
mod systemd;
mod validate;
mod verify;
mod webhook;
