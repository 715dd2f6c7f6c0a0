#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;

use super::*;

fn t(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A detection of `label` with a `w` × `h` box.
fn det(label: &str, w: f64, h: f64) -> Detection<'_> {
    Detection {
        label,
        bbox: [10.0, 20.0, 10.0 + w, 20.0 + h],
    }
}

fn tracker(min_hits: u32, end_after_ms: u64, labels: Option<&[&str]>) -> EventTracker {
    EventTracker::new(
        "cam",
        EventSettings {
            min_hits,
            end_after: Duration::from_millis(end_after_ms),
            labels: labels.map(|ls| ls.iter().map(|l| l.to_string()).collect()),
        },
    )
    .unwrap()
}

fn kinds(events: &[Event]) -> Vec<(EventKind, &str)> {
    events.iter().map(|e| (e.kind, e.label.as_str())).collect()
}

#[test]
fn a_label_seen_once_then_gone_makes_no_event() {
    let mut tr = tracker(2, 10_000, None);
    assert!(tr.observe(1, t(0), &[det("person", 10.0, 10.0)]).is_empty());
    assert!(tr.observe(2, t(100), &[]).is_empty());
    // The streak starts again: one more hit is still not two in a row.
    assert!(tr
        .observe(3, t(200), &[det("person", 10.0, 10.0)])
        .is_empty());
    assert!(tr.tick(t(1_000_000)).is_empty());
    assert!(tr.counts().is_empty());
}

#[test]
fn two_results_in_a_row_make_one_new_on_the_second() {
    let mut tr = tracker(2, 10_000, None);
    assert!(tr
        .observe(1, t(1000), &[det("person", 10.0, 10.0)])
        .is_empty());
    let events = tr.observe(2, t(1500), &[det("person", 10.0, 10.0)]);
    assert_eq!(
        events,
        vec![Event {
            kind: EventKind::New,
            id: "cam-person-1000-1".to_string(),
            camera: "cam".to_string(),
            label: "person".to_string(),
            start: t(1000),
            end: None,
            count: 1,
            best: BestResult {
                seq: 1,
                at: t(1000),
                area: 100.0,
                count: 1
            },
        }]
    );
    // The same picture again changes nothing.
    assert!(tr
        .observe(3, t(2000), &[det("person", 10.0, 10.0)])
        .is_empty());
    assert_eq!(tr.counts(), BTreeMap::from([("person".to_string(), 1)]));
}

#[test]
fn min_hits_one_starts_on_the_first_result() {
    let mut tr = tracker(1, 10_000, None);
    let events = tr.observe(7, t(0), &[det("car", 2.0, 3.0)]);
    assert_eq!(kinds(&events), vec![(EventKind::New, "car")]);
    assert_eq!(events[0].best.seq, 7);
}

#[test]
fn a_count_change_is_an_update_with_the_best_kept() {
    let mut tr = tracker(1, 10_000, None);
    tr.observe(1, t(0), &[det("person", 10.0, 10.0)]);
    // Two smaller people: the count changed, the best (area 100) did not.
    let events = tr.observe(
        2,
        t(100),
        &[det("person", 3.0, 3.0), det("person", 3.0, 3.0)],
    );
    assert_eq!(kinds(&events), vec![(EventKind::Update, "person")]);
    assert_eq!(events[0].count, 2);
    assert_eq!(events[0].best.seq, 1);
    assert_eq!(events[0].id, "cam-person-0-1");
    assert_eq!(tr.counts()["person"], 2);
    let events = tr.observe(3, t(200), &[det("person", 3.0, 3.0)]);
    assert_eq!(kinds(&events), vec![(EventKind::Update, "person")]);
    assert_eq!(events[0].count, 1);
}

#[test]
fn a_larger_area_is_an_update_a_smaller_one_is_not() {
    let mut tr = tracker(1, 10_000, None);
    tr.observe(1, t(0), &[det("dog", 10.0, 10.0)]);
    let events = tr.observe(2, t(100), &[det("dog", 20.0, 10.0)]);
    assert_eq!(kinds(&events), vec![(EventKind::Update, "dog")]);
    assert_eq!(
        events[0].best,
        BestResult {
            seq: 2,
            at: t(100),
            area: 200.0,
            count: 1
        }
    );
    assert!(tr.observe(3, t(200), &[det("dog", 5.0, 5.0)]).is_empty());
    assert!(tr.observe(4, t(300), &[det("dog", 20.0, 10.0)]).is_empty());
}

#[test]
fn an_event_ends_only_after_end_after_of_absence_at_the_last_sighting() {
    let mut tr = tracker(2, 10_000, None);
    tr.observe(1, t(0), &[det("person", 10.0, 10.0)]);
    assert_eq!(
        tr.observe(2, t(1000), &[det("person", 10.0, 10.0)]).len(),
        1
    );
    // Results without the label do not end it by themselves.
    assert!(tr.observe(3, t(2000), &[]).is_empty());
    assert!(tr.observe(4, t(5000), &[det("car", 1.0, 1.0)]).is_empty());
    assert!(tr.tick(t(10_999)).is_empty());
    // Exactly end_after is not more than end_after.
    assert!(tr.tick(t(11_000)).is_empty());
    let events = tr.tick(t(11_001));
    assert_eq!(kinds(&events), vec![(EventKind::End, "person")]);
    assert_eq!(events[0].end, Some(t(1000)));
    assert_eq!(events[0].id, "cam-person-0-1");
    assert!(tr.tick(t(50_000)).is_empty());
}

#[test]
fn a_label_back_after_a_long_absence_ends_the_old_event_and_debounces_again() {
    let mut tr = tracker(2, 10_000, None);
    tr.observe(1, t(0), &[det("person", 10.0, 10.0)]);
    tr.observe(2, t(1000), &[det("person", 10.0, 10.0)]);
    // No tick in between: the result itself reports the end first.
    let events = tr.observe(3, t(20_000), &[det("person", 10.0, 10.0)]);
    assert_eq!(kinds(&events), vec![(EventKind::End, "person")]);
    assert_eq!(events[0].end, Some(t(1000)));
    let events = tr.observe(4, t(21_000), &[det("person", 10.0, 10.0)]);
    assert_eq!(kinds(&events), vec![(EventKind::New, "person")]);
    assert_eq!(events[0].id, "cam-person-20000-2");
    assert_eq!(events[0].start, t(20_000));
}

#[test]
fn labels_are_normalized_filtered_and_counted() {
    let mut tr = tracker(1, 10_000, Some(&[" Person ", "DOG"]));
    let events = tr.observe(
        1,
        t(0),
        &[
            det("PERSON ", 1.0, 1.0),
            det(" person", 2.0, 1.0),
            det("car", 50.0, 50.0),
            det(" Dog", 1.0, 1.0),
            det("  ", 1.0, 1.0),
        ],
    );
    assert_eq!(
        kinds(&events),
        vec![(EventKind::New, "dog"), (EventKind::New, "person")]
    );
    assert_eq!(events[1].count, 2);
    assert_eq!(events[1].best.area, 3.0);
    assert_eq!(
        tr.counts(),
        BTreeMap::from([("dog".to_string(), 1), ("person".to_string(), 2)])
    );
}

#[test]
fn counts_drop_to_zero_after_the_end_and_stay_present() {
    let mut tr = tracker(1, 1000, None);
    tr.observe(1, t(0), &[det("cat", 1.0, 1.0), det("cat", 1.0, 1.0)]);
    assert_eq!(tr.counts(), BTreeMap::from([("cat".to_string(), 2)]));
    assert_eq!(tr.tick(t(1001)).len(), 1);
    assert_eq!(tr.counts(), BTreeMap::from([("cat".to_string(), 0)]));
    tr.observe(2, t(5000), &[]);
    assert_eq!(tr.counts(), BTreeMap::from([("cat".to_string(), 0)]));
    let events = tr.observe(3, t(6000), &[det("cat", 1.0, 1.0)]);
    assert_eq!(events[0].id, "cam-cat-6000-2");
    assert_eq!(tr.counts(), BTreeMap::from([("cat".to_string(), 1)]));
}

#[test]
fn end_all_ends_every_running_event_and_forgets_the_hits() {
    let mut tr = tracker(2, 10_000, None);
    tr.observe(1, t(0), &[det("person", 1.0, 1.0), det("car", 1.0, 1.0)]);
    tr.observe(2, t(100), &[det("person", 1.0, 1.0), det("car", 1.0, 1.0)]);
    tr.observe(3, t(200), &[det("person", 1.0, 1.0), det("dog", 1.0, 1.0)]);
    let events = tr.end_all(t(300));
    assert_eq!(
        kinds(&events),
        vec![(EventKind::End, "car"), (EventKind::End, "person")]
    );
    assert_eq!(events[0].end, Some(t(100)));
    assert_eq!(events[1].end, Some(t(200)));
    assert!(tr.end_all(t(400)).is_empty());
    // The dog's single hit is forgotten: one more is still not two in a row.
    assert!(tr.observe(4, t(500), &[det("dog", 1.0, 1.0)]).is_empty());
    assert_eq!(
        tr.counts(),
        BTreeMap::from([("car".to_string(), 0), ("person".to_string(), 0)])
    );
}

#[test]
fn time_going_back_never_moves_the_last_sighting_back() {
    let mut tr = tracker(1, 1000, None);
    tr.observe(1, t(5000), &[det("person", 1.0, 1.0)]);
    assert!(tr
        .observe(2, t(4000), &[det("person", 1.0, 1.0)])
        .is_empty());
    assert!(tr.tick(t(5500)).is_empty());
    let events = tr.tick(t(6001));
    assert_eq!(events[0].end, Some(t(5000)));
    assert_eq!(events[0].start, t(5000));
}

#[test]
fn boxes_without_a_finite_area_count_as_empty() {
    let mut tr = tracker(1, 1000, None);
    let nan = Detection {
        label: "person",
        bbox: [0.0, 0.0, f64::NAN, 1.0],
    };
    let huge = Detection {
        label: "person",
        bbox: [-f64::MAX, -f64::MAX, f64::MAX, f64::MAX],
    };
    let events = tr.observe(1, t(0), &[nan, huge]);
    assert_eq!(events[0].count, 2);
    assert_eq!(events[0].best.area, 0.0);
}

#[test]
fn settings_are_checked_with_the_setting_named() {
    assert_eq!(EventSettings::default().check(), Ok(()));
    let bad = [
        (
            EventSettings {
                min_hits: 0,
                ..EventSettings::default()
            },
            "min_hits = 0",
        ),
        (
            EventSettings {
                min_hits: 101,
                ..EventSettings::default()
            },
            "min_hits = 101",
        ),
        (
            EventSettings {
                end_after: Duration::from_secs(3601),
                ..EventSettings::default()
            },
            "end_after = 1h 1s",
        ),
        (
            EventSettings {
                labels: Some(vec![]),
                ..EventSettings::default()
            },
            "labels = []",
        ),
        (
            EventSettings {
                labels: Some(vec!["car".to_string(), " ".to_string()]),
                ..EventSettings::default()
            },
            "labels[1]",
        ),
    ];
    for (settings, named) in bad {
        let err = settings.check().unwrap_err();
        assert!(err.starts_with(named), "{err}");
        assert!(err.contains("allowed"), "{err}");
        assert_eq!(EventTracker::new("cam", settings).unwrap_err(), err);
    }
    let edge = EventSettings {
        min_hits: 100,
        end_after: MAX_END_AFTER,
        labels: Some(vec!["car".to_string()]),
    };
    assert_eq!(edge.check(), Ok(()));
}

#[test]
fn events_serialize_times_as_unix_ms() {
    let mut tr = tracker(1, 0, None);
    let new = tr.observe(3, t(1_700_000_000_123), &[det("person", 2.0, 2.0)]);
    let end = tr.end_all(t(1_700_000_001_000));
    let new = serde_json::to_value(&new[0]).unwrap();
    assert_eq!(
        new,
        serde_json::json!({
            "kind": "new",
            "id": "cam-person-1700000000123-1",
            "camera": "cam",
            "label": "person",
            "start_unix_ms": 1_700_000_000_123_u64,
            "end_unix_ms": null,
            "count": 1,
            "best": {"seq": 3, "at_unix_ms": 1_700_000_000_123_u64, "area": 4.0, "count": 1},
        })
    );
    let end = serde_json::to_value(&end[0]).unwrap();
    assert_eq!(end["kind"], "end");
    assert_eq!(end["end_unix_ms"], 1_700_000_000_123_u64);
}

#[test]
fn text_any_change_ignores_whitespace() {
    let mut tt = TextTracker::new("cam", TextWatch::AnyChange);
    let first = tt.observe(1, t(10), "  GATE\t 3 ").unwrap();
    assert_eq!(first.text, "GATE 3");
    assert_eq!(first.previous, None);
    assert_eq!(first.id, "cam-text-10-1");
    assert!(first.words.is_empty());
    assert_eq!(tt.observe(2, t(20), "GATE 3"), None);
    assert_eq!(tt.observe(3, t(30), "GATE\n3  "), None);
    let next = tt.observe(4, t(40), "GATE 4").unwrap();
    assert_eq!(next.previous.as_deref(), Some("GATE 3"));
    assert_eq!(
        (next.seq, next.at, next.id.as_str()),
        (4, t(40), "cam-text-40-2")
    );
    assert!(tt.observe(5, t(50), "gate 4").is_some());
    let json = serde_json::to_value(&next).unwrap();
    assert_eq!(json["at_unix_ms"], 40);
}

#[test]
fn text_words_match_whole_words_case_insensitively() {
    let watch = TextWatch::Words(vec!["Gate".to_string(), "no entry".to_string()]);
    let mut tt = TextTracker::new("cam", watch);
    let first = tt.observe(1, t(0), "Welcome to the gateway").unwrap();
    assert!(first.words.is_empty());
    // "gateway" is not "gate": the set of watched words present is still empty.
    assert_eq!(tt.observe(2, t(1), "GATEWAY open"), None);
    let gate = tt.observe(3, t(2), "the GATE is open").unwrap();
    assert_eq!(gate.words, vec!["gate"]);
    assert_eq!(gate.previous.as_deref(), Some("Welcome to the gateway"));
    assert_eq!(tt.observe(4, t(3), "Gate-3 closed"), None);
    let both = tt.observe(5, t(4), "gate: NO  ENTRY").unwrap();
    assert_eq!(both.words, vec!["gate", "no entry"]);
    assert_eq!(both.previous.as_deref(), Some("the GATE is open"));
    // "entry no" is not the phrase "no entry".
    let gone = tt.observe(6, t(5), "entry no").unwrap();
    assert!(gone.words.is_empty());
}

#[test]
fn text_words_without_letters_are_dropped() {
    let mut tt = TextTracker::new("cam", TextWatch::Words(vec![" - ".to_string()]));
    assert!(tt.observe(1, t(0), "a").is_some());
    assert_eq!(tt.observe(2, t(1), "b - c"), None);
}

// ---- Property tests ----

/// Raw labels: "Person " and "person" are one label.
const LABELS: [&str; 4] = ["person", "Person ", "car", "dog"];

#[derive(Clone, Debug)]
enum Step {
    /// A result `gap_ms` after the previous step: (label index, box side) per detection.
    Result {
        gap_ms: u64,
        dets: Vec<(usize, u8)>,
    },
    Tick {
        gap_ms: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..3000_u64, prop::collection::vec((0..LABELS.len(), 1..4_u8), 0..5))
            .prop_map(|(gap_ms, dets)| Step::Result { gap_ms, dets }),
        1 => (0..3000_u64).prop_map(|gap_ms| Step::Tick { gap_ms }),
    ]
}

fn settings() -> impl Strategy<Value = EventSettings> {
    (1..=3_u32, 0..5000_u64, any::<bool>()).prop_map(|(min_hits, end_ms, filtered)| EventSettings {
        min_hits,
        end_after: Duration::from_millis(end_ms),
        labels: filtered.then(|| vec!["PERSON".to_string(), "car".to_string()]),
    })
}

/// What the model remembers of a running event.
#[derive(Debug)]
struct Run {
    id: String,
    start: SystemTime,
    last_seen: SystemTime,
    count: usize,
    best_area: f64,
}

/// An independent model of one label.
#[derive(Debug, Default)]
struct Model {
    /// Consecutive results with the label since it was last absent or its event ended.
    streak: u32,
    /// When the current streak began.
    streak_start: Option<SystemTime>,
    best_area: f64,
    run: Option<Run>,
    had_event: bool,
}

fn dets_of(dets: &[(usize, u8)]) -> Vec<Detection<'static>> {
    dets.iter()
        .map(|&(i, side)| det(LABELS[i], f64::from(side), f64::from(side)))
        .collect()
}

/// Checks the `end`s at the head of `events` against the model at `now` and applies them;
/// returns the events after them.
fn take_ends<'e>(
    models: &mut BTreeMap<String, Model>,
    events: &'e [Event],
    now: SystemTime,
    end_after: Duration,
) -> Result<&'e [Event], TestCaseError> {
    let split = events
        .iter()
        .position(|e| e.kind != EventKind::End)
        .unwrap_or(events.len());
    let (ends, rest) = events.split_at(split);
    let expected: Vec<&str> = models
        .iter()
        .filter(|(_, m)| {
            m.run
                .as_ref()
                .is_some_and(|r| now.duration_since(r.last_seen).is_ok_and(|d| d > end_after))
        })
        .map(|(l, _)| l.as_str())
        .collect();
    let got: Vec<&str> = ends.iter().map(|e| e.label.as_str()).collect();
    prop_assert_eq!(got, expected);
    for e in ends {
        let m = models.get_mut(&e.label).unwrap();
        let run = m.run.take().unwrap();
        prop_assert_eq!(&e.id, &run.id);
        prop_assert_eq!(e.end, Some(run.last_seen));
        prop_assert_eq!(e.count, run.count);
        m.streak = 0;
        m.streak_start = None;
    }
    Ok(rest)
}

/// Runs `steps` against the model, checking every event and `counts()` after every step;
/// returns every event in order.
fn run_checked(
    settings: &EventSettings,
    steps: &[Step],
    finish_with_end_all: bool,
) -> Result<Vec<Event>, TestCaseError> {
    let mut tr = EventTracker::new("cam", settings.clone()).unwrap();
    let filter: Option<BTreeSet<String>> = settings
        .labels
        .as_ref()
        .map(|ls| ls.iter().map(|l| l.trim().to_lowercase()).collect());
    let mut models: BTreeMap<String, Model> = BTreeMap::new();
    let mut log = Vec::new();
    let mut now_ms = 1_000_000_u64;
    let mut started = 0_u64;
    for (seq, s) in steps.iter().enumerate() {
        match s {
            Step::Tick { gap_ms } => {
                now_ms += gap_ms;
                let events = tr.tick(t(now_ms));
                let rest = take_ends(&mut models, &events, t(now_ms), settings.end_after)?;
                prop_assert!(rest.is_empty(), "tick made {:?}", rest);
                log.extend(events);
            }
            Step::Result { gap_ms, dets } => {
                now_ms += gap_ms;
                let now = t(now_ms);
                let detections = dets_of(dets);
                let events = tr.observe(seq as u64, now, &detections);
                let rest = take_ends(&mut models, &events, now, settings.end_after)?;
                let mut seen: BTreeMap<String, (usize, f64)> = BTreeMap::new();
                for d in &detections {
                    let label = d.label.trim().to_lowercase();
                    if filter.as_ref().is_none_or(|f| f.contains(&label)) {
                        let e = seen.entry(label).or_default();
                        e.0 += 1;
                        e.1 += (d.bbox[2] - d.bbox[0]) * (d.bbox[3] - d.bbox[1]);
                    }
                }
                for (label, m) in &mut models {
                    if !seen.contains_key(label) {
                        m.streak = 0;
                        m.streak_start = None;
                    }
                }
                let mut expected = Vec::new();
                for (label, &(count, area)) in &seen {
                    let m = models.entry(label.clone()).or_default();
                    if m.streak == 0 {
                        m.best_area = area;
                    }
                    m.streak += 1;
                    m.best_area = m.best_area.max(area);
                    let start = *m.streak_start.get_or_insert(now);
                    match &mut m.run {
                        Some(run) => {
                            if count != run.count || area > run.best_area {
                                expected.push((EventKind::Update, label.clone(), count));
                            }
                            run.count = count;
                            run.best_area = run.best_area.max(area);
                            run.last_seen = run.last_seen.max(now);
                        }
                        None if m.streak >= settings.min_hits => {
                            // Debounce respected: exactly min_hits results in a row.
                            prop_assert_eq!(m.streak, settings.min_hits);
                            started += 1;
                            let id = format!("cam-{label}-{}-{started}", unix_ms(start));
                            expected.push((EventKind::New, label.clone(), count));
                            m.run = Some(Run {
                                id,
                                start,
                                last_seen: now,
                                count,
                                best_area: m.best_area,
                            });
                            m.had_event = true;
                        }
                        None => {}
                    }
                }
                let got: Vec<(EventKind, String, usize)> = rest
                    .iter()
                    .map(|e| (e.kind, e.label.clone(), e.count))
                    .collect();
                prop_assert_eq!(got, expected);
                for e in rest {
                    let run = models[&e.label].run.as_ref().unwrap();
                    prop_assert_eq!(&e.id, &run.id);
                    prop_assert_eq!(e.start, run.start);
                    prop_assert_eq!(e.best.area, run.best_area);
                    prop_assert_eq!(e.end, None);
                }
                log.extend(events);
            }
        }
        // Nothing overdue is left running.
        for m in models.values() {
            if let Some(run) = &m.run {
                let gone = t(now_ms).duration_since(run.last_seen).unwrap_or_default();
                prop_assert!(gone <= settings.end_after);
            }
        }
        let counts = tr.counts();
        let expected: BTreeMap<String, usize> = models
            .iter()
            .filter(|(_, m)| m.had_event)
            .map(|(l, m)| (l.clone(), m.run.as_ref().map_or(0, |r| r.count)))
            .collect();
        prop_assert_eq!(&counts, &expected);
        for (label, count) in &counts {
            prop_assert_eq!(*count > 0, models[label].run.is_some());
        }
    }
    let last = if finish_with_end_all {
        tr.end_all(t(now_ms))
    } else {
        tr.tick(t(now_ms) + MAX_END_AFTER + Duration::from_millis(1))
    };
    prop_assert_eq!(
        last.len(),
        models.values().filter(|m| m.run.is_some()).count()
    );
    log.extend(last);
    prop_assert!(tr.counts().values().all(|&c| c == 0));
    Ok(log)
}

/// The properties of a whole event log that hold whatever the settings.
fn check_log(log: &[Event]) -> Result<(), TestCaseError> {
    // Per id: (label, start, latest best time, ended).
    let mut ids: HashMap<&str, (&str, SystemTime, SystemTime, bool)> = HashMap::new();
    let mut running: BTreeSet<&str> = BTreeSet::new();
    for e in log {
        match e.kind {
            EventKind::New => {
                prop_assert!(!ids.contains_key(e.id.as_str()), "second new of {}", e.id);
                prop_assert!(running.insert(&e.label), "two events of {}", e.label);
                prop_assert!(e.best.at >= e.start);
                ids.insert(&e.id, (&e.label, e.start, e.best.at, false));
            }
            EventKind::Update | EventKind::End => {
                let Some(entry) = ids.get_mut(e.id.as_str()) else {
                    return Err(TestCaseError::fail(format!("{:?} without a new", e)));
                };
                prop_assert!(!entry.3, "{:?} after the end", e);
                prop_assert_eq!(entry.0, e.label.as_str());
                prop_assert_eq!(entry.1, e.start);
                prop_assert!(e.best.at >= entry.2, "best went back in {:?}", e);
                entry.2 = e.best.at;
                if e.kind == EventKind::End {
                    let end = e.end.unwrap();
                    prop_assert!(end >= e.start && end >= e.best.at);
                    entry.3 = true;
                    running.remove(e.label.as_str());
                } else {
                    prop_assert_eq!(e.end, None);
                }
            }
        }
    }
    prop_assert!(ids.values().all(|v| v.3), "a new without an end");
    prop_assert!(running.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn event_streams_follow_the_rules(
        settings in settings(),
        steps in prop::collection::vec(step(), 0..60),
        end_all in any::<bool>(),
    ) {
        let log = run_checked(&settings, &steps, end_all)?;
        check_log(&log)?;
    }

    /// Ticks change when an end is reported, never what is reported: the same results
    /// without the ticks give the same events.
    #[test]
    fn ticks_do_not_change_the_events(
        settings in settings(),
        steps in prop::collection::vec(step(), 0..60),
    ) {
        // Each tick's gap moves to the next result, so the results keep their times.
        let mut untimed = Vec::new();
        let mut carry = 0;
        for s in &steps {
            match s {
                Step::Tick { gap_ms } => carry += gap_ms,
                Step::Result { gap_ms, dets } => {
                    untimed.push(Step::Result { gap_ms: gap_ms + carry, dets: dets.clone() });
                    carry = 0;
                }
            }
        }
        untimed.push(Step::Tick { gap_ms: carry });
        let with = run_checked(&settings, &steps, true)?;
        let without = run_checked(&settings, &untimed, true)?;
        let key = |e: &Event| (e.id.clone(), e.kind as u8);
        let mut with = with;
        let mut without = without;
        with.sort_by_key(key);
        without.sort_by_key(key);
        // Sequence numbers differ between the runs (ticks take steps); compare the rest.
        let strip = |v: &[Event]| -> Vec<Event> {
            v.iter().cloned().map(|mut e| { e.best.seq = 0; e }).collect()
        };
        prop_assert_eq!(strip(&with), strip(&without));
    }
}
