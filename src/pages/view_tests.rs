//! Tests of the pages' decisions: badges, the strip, check dots, timeline pages, weeks.

use super::*;
use crate::journal::records::ChangeRecord;
use chrono::TimeZone;

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + seconds, 0)
        .single()
        .expect("valid timestamp")
}

fn revision(c: char) -> Revision {
    Revision(c.to_string().repeat(40))
}

fn record(seq: u64, seconds: i64, event: Event) -> Record {
    Record {
        seq,
        time: at(seconds),
        environment: "staging".into(),
        by: None,
        event,
    }
}

fn started(rev: char, previous: char) -> Event {
    Event::RolloutStarted {
        revision: revision(rev),
        previous: Some(revision(previous)),
        steps: vec![25, 50, 100],
        changes: vec![ChangeRecord {
            action: crate::plan::Action::Update,
            object: "Deployment.apps shop/web".into(),
            hash: Some("h".into()),
        }],
        canaries: vec!["Deployment.apps shop/web".into()],
        baseline: Vec::new(),
    }
}

fn step(rev: char, step: usize, weight: u8) -> Event {
    Event::StepStarted {
        revision: revision(rev),
        step,
        weight,
    }
}

#[test]
fn a_canary_shows_its_step_of_all_and_weight_then_healthy() {
    let mut records = vec![
        record(
            1,
            0,
            Event::Healthy {
                revision: revision('a'),
            },
        ),
        record(2, 10, started('b', 'a')),
        record(3, 11, step('b', 0, 25)),
        record(
            4,
            20,
            Event::StepPassed {
                revision: revision('b'),
                step: 0,
                weight: 25,
            },
        ),
        record(5, 21, step('b', 1, 50)),
    ];
    let history = History::from_records(&records);
    let situation = Situation {
        tip: Some(&revision('b')),
        ..Default::default()
    };
    let badge = badge(&history, &situation);
    assert_eq!(
        badge,
        Badge::RollingOut {
            step: 2,
            of: 3,
            weight: 50
        }
    );
    assert_eq!(badge.text(), "rolling out step 2 of 3 (50%)");
    let strip = strip(
        &history,
        &records,
        Duration::from_secs(30),
        Duration::from_secs(60),
        at(31),
    )
    .expect("in flight");
    let states: Vec<_> = strip.steps.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        [StepState::Passed, StepState::Current, StepState::Pending]
    );
    assert_eq!(strip.bake_left, Some(Duration::from_secs(20)));
    assert_eq!(strip.verify_left, None);
    records.push(record(6, 40, step('b', 2, 100)));
    records.push(record(
        7,
        41,
        Event::Promoted {
            revision: revision('b'),
        },
    ));
    let history = History::from_records(&records);
    let strip = strip_of(&history, &records, at(51));
    assert_eq!(strip.verify_left, Some(Duration::from_secs(50)));
    assert_eq!(strip.bake_left, None);
    records.push(record(
        8,
        100,
        Event::Healthy {
            revision: revision('b'),
        },
    ));
    let history = History::from_records(&records);
    assert_eq!(super::badge(&history, &situation), Badge::Healthy);
}

fn strip_of(history: &History, records: &[Record], now: DateTime<Utc>) -> Strip {
    strip(
        history,
        records,
        Duration::from_secs(30),
        Duration::from_secs(60),
        now,
    )
    .expect("in flight")
}

/// `a` healthy, then `b` rolled out, failed its `errors` check and is being reverted to `a`.
fn failed_tip_records() -> Vec<Record> {
    vec![
        record(
            1,
            0,
            Event::Healthy {
                revision: revision('a'),
            },
        ),
        record(2, 1, started('b', 'a')),
        record(
            3,
            2,
            Event::CheckFailed {
                revision: revision('b'),
                check: "errors".into(),
                detail: "error rate 0.4 > 0.1".into(),
            },
        ),
        record(
            4,
            3,
            Event::RolloutFailed {
                revision: revision('b'),
                reason: "check".into(),
                cause: None,
            },
        ),
        record(
            5,
            4,
            Event::RevertStarted {
                revision: revision('b'),
                to: revision('a'),
                reason: "check".into(),
                failed: true,
            },
        ),
    ]
}

#[test]
fn a_failed_tip_is_reverted_and_held() {
    let records = failed_tip_records();
    let tip = revision('b');
    let reverting = History::from_records(&records[..5]);
    let situation = Situation {
        tip: Some(&tip),
        ..Default::default()
    };
    assert_eq!(
        badge(&reverting, &situation),
        Badge::Reverting { to: revision('a') }
    );
    let mut all = records.to_vec();
    all.push(record(
        6,
        5,
        Event::Reverted {
            revision: revision('b'),
            to: revision('a'),
        },
    ));
    let held = History::from_records(&all);
    let badge_now = badge(&held, &situation);
    assert_eq!(
        badge_now,
        Badge::RevertedHeld {
            failed: tip.clone()
        }
    );
    assert!(badge_now.text().starts_with("reverted and held"));
    let dots = check_dots(&["errors".into(), "latency".into()], &all, 10);
    assert_eq!(
        dots[0].1[0].failure.as_deref(),
        Some("error rate 0.4 > 0.1")
    );
    assert_eq!(dots[1].1[0].failure, None);
}

#[test]
fn gates_a_syncing_cache_a_pause_and_a_block_name_their_badge() {
    let healthy = History::from_records(&failed_tip_records()[..1]);
    let newer = revision('c');
    for (reason, expected) in [
        (
            "waiting for approval: gitopsd approve --env <env> ccc",
            "waiting for approval",
        ),
        (
            "outside the change window; it opens at 2026-12-07T02:00:00Z",
            "outside its window",
        ),
        (
            "waiting for ccc to be healthy in staging (after = \"staging\")",
            "waiting for upstream",
        ),
    ] {
        let waiting = (newer.clone(), reason.to_string());
        let situation = Situation {
            tip: Some(&newer),
            waiting: Some(&waiting),
            cache_syncing: false,
        };
        assert_eq!(badge(&healthy, &situation).text(), expected);
    }
    let syncing = Situation {
        tip: Some(&revision('a')),
        waiting: None,
        cache_syncing: true,
    };
    assert_eq!(badge(&healthy, &syncing), Badge::CacheSyncing);
    let mut paused = healthy.clone();
    paused.paused = true;
    assert_eq!(badge(&paused, &syncing), Badge::Paused);
    let mut blocked = healthy;
    blocked.blocked = Some((newer, "connection refused".into()));
    assert_eq!(
        badge(&blocked, &syncing).detail(),
        Some("connection refused")
    );
}

#[test]
fn the_timeline_pages_newest_first() {
    let records: Vec<Record> = (1..=120)
        .map(|seq| {
            record(
                seq,
                seq as i64,
                Event::Healthy {
                    revision: revision('a'),
                },
            )
        })
        .collect();
    let (first, pages) = timeline_page(&records, 1);
    assert_eq!(pages, 3);
    assert_eq!(first.last().map(|r| r.seq), Some(120));
    assert_eq!(first.len(), TIMELINE_PAGE);
    let (last, _) = timeline_page(&records, 9);
    assert_eq!(last.first().map(|r| r.seq), Some(1));
    assert_eq!(last.len(), 20);
    assert_eq!(timeline_page(&[], 1).1, 1);
}

#[test]
fn weeks_bucket_deployments_failures_and_restores() {
    let week = 7 * 86_400;
    let records = [
        record(1, 0, started('b', 'a')),
        record(
            2,
            100,
            Event::Healthy {
                revision: revision('b'),
            },
        ),
        record(3, week, started('c', 'b')),
        record(
            4,
            week + 10,
            Event::RolloutFailed {
                revision: revision('c'),
                reason: "x".into(),
                cause: None,
            },
        ),
        record(
            5,
            week + 70,
            Event::Reverted {
                revision: revision('c'),
                to: revision('b'),
            },
        ),
    ];
    let stats = DeliveryStats::compute(&records, |_| Some(at(-50)));
    let weeks = weeks(&stats, at(week + 100), 4);
    assert_eq!(weeks.len(), 4);
    let last = &weeks[3];
    assert_eq!((last.deployments, last.failures), (0, 1));
    assert_eq!(last.restore, Some(Duration::from_secs(70)));
    assert_eq!(last.failure_rate(), Some(1.0));
    let before = &weeks[2];
    assert_eq!(before.deployments, 1);
    assert_eq!(before.lead, Some(Duration::from_secs(150)));
    assert_eq!(short_duration(Duration::from_secs(3_720)), "1h 2m");
    assert_eq!(short_duration(Duration::from_secs(42)), "42s");
}
