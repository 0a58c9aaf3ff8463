//! systemd integration: readiness, status, reload and stopping notices, and watchdog pings that
//! go out only while every loop keeps beating. Without `NOTIFY_SOCKET` it does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::heartbeat::Heartbeats;

pub struct Systemd {
    /// Set when systemd asked for watchdog pings (`WatchdogSec=`).
    watchdog: Option<Duration>,
    last_status: String,
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "sd_notify failed");
    }
}

impl Systemd {
    pub fn from_env() -> Self {
        Self {
            watchdog: sd_notify::watchdog_enabled(),
            last_status: String::new(),
        }
    }

    /// How often the main loop must wake to keep the watchdog fed.
    pub fn tick(&self) -> Option<Duration> {
        self.watchdog.map(|interval| interval / 2)
    }

    pub fn ready(&self) {
        send(&[NotifyState::Ready]);
    }

    pub fn reloading(&self) {
        match sd_notify::NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        send(&[NotifyState::Stopping]);
    }

    /// Sends `STATUS=` when the text changed.
    pub fn status(&mut self, text: &str) {
        if text != self.last_status {
            send(&[NotifyState::Status(text)]);
            self.last_status = text.to_string();
        }
    }

    /// Pings the watchdog if every loop beat within the watchdog interval; otherwise stays
    /// silent so systemd restarts the stuck process.
    pub fn ping_if_alive(&self, heartbeats: &Heartbeats) {
        let Some(interval) = self.watchdog else {
            return;
        };
        let stale = heartbeats.stale(interval);
        if stale.is_empty() {
            send(&[NotifyState::Watchdog]);
        } else {
            tracing::warn!(loops = ?stale, "not pinging the watchdog: these loops are stuck");
        }
    }
}
