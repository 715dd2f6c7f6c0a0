//! Events people automate on, Frigate-style: a pure state machine per camera turning detection
//! results into `new` / `update` / `end` of a label, and text results into one event per
//! meaningful change.
//!
//! Detections ([`EventTracker`]): a label's event starts (`new`) when the label is in
//! `min_hits` consecutive results; while it runs, a result with a different object count or a
//! larger total box area than the best so far makes an `update`; it ends (`end`) once the label
//! has not been seen for *more than* `end_after`. A result without the label does not end it
//! by itself, and a result with the label after a longer absence first ends the old event (and
//! starts counting hits afresh), so the outcome does not depend on how often the timer calls
//! [`EventTracker::tick`]. Labels are normalized (trimmed, lower case) before matching and in
//! events; repeated detections of one label in a result add to its count.
//!
//! Text ([`TextTracker`]): the first text is an event, later ones only when the text changes
//! meaningfully ([`TextWatch`]).
//!
//! Time comes in as arguments: nothing here reads a clock, sleeps or spawns. Times serialize
//! as integer milliseconds since the Unix epoch (`*_unix_ms`, like the results' timestamps;
//! a time before the epoch serializes as 0).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serializer;

/// The most `min_hits` allowed.
pub const MAX_MIN_HITS: u32 = 100;

/// The longest `end_after` allowed: one hour.
pub const MAX_END_AFTER: Duration = Duration::from_secs(3600);

/// Debounce settings of one camera's events; [`EventSettings::check`] checks them.
#[derive(Clone, Debug, PartialEq)]
pub struct EventSettings {
    /// A label must be in this many consecutive results before its event starts, 1..=100
    /// (default 2).
    pub min_hits: u32,
    /// A label not seen for more than this long ends its event, 0..=1 h (default 10 s). It
    /// should exceed the interval between results: with 0, an event lasts only while its
    /// sightings share one instant.
    pub end_after: Duration,
    /// Only these labels make events (case-insensitive, trimmed); `None`: every label.
    pub labels: Option<Vec<String>>,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            min_hits: 2,
            end_after: Duration::from_secs(10),
            labels: None,
        }
    }
}

impl EventSettings {
    /// `min_hits` in 1..=100, `end_after` at most 1 h, `labels` (when given) a non-empty list
    /// of non-blank labels. The error names the setting and what is allowed.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_MIN_HITS).contains(&self.min_hits) {
            return Err(format!(
                "min_hits = {} is not allowed; allowed: 1..={MAX_MIN_HITS} consecutive results",
                self.min_hits
            ));
        }
        if self.end_after > MAX_END_AFTER {
            return Err(format!(
                "end_after = {} is not allowed; allowed: 0s..=1h",
                humantime::format_duration(self.end_after)
            ));
        }
        if let Some(labels) = &self.labels {
            if labels.is_empty() {
                return Err(
                    "labels = [] is not allowed; allowed: at least one label, or no \
                            labels setting for every label"
                        .to_string(),
                );
            }
            if let Some(index) = labels.iter().position(|l| l.trim().is_empty()) {
                return Err(format!(
                    "labels[{index}] = {:?} is not allowed; allowed: a non-blank label",
                    labels[index]
                ));
            }
        }
        Ok(())
    }
}

/// What happened to a label's event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    New,
    Update,
    End,
}

/// One detection of a result: its label and box in full-frame pixels `[x1, y1, x2, y2]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection<'a> {
    pub label: &'a str,
    pub bbox: [f64; 4],
}

/// One event of a label on a camera.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Event {
    pub kind: EventKind,
    /// Stable for the event's life: `{camera}-{label}-{start_unix_ms}-{n}`, `n` counting the
    /// events this tracker started, from 1.
    pub id: String,
    pub camera: String,
    /// Normalized: trimmed, lower case.
    pub label: String,
    /// The capture time of the first of the consecutive results that started the event.
    #[serde(rename = "start_unix_ms", serialize_with = "ser_unix_ms")]
    pub start: SystemTime,
    /// On `end`: when the label was last seen; otherwise `None` (`null`).
    #[serde(rename = "end_unix_ms", serialize_with = "ser_opt_unix_ms")]
    pub end: Option<SystemTime>,
    /// Objects of the label in the latest result that had it.
    pub count: usize,
    /// The result where the label was most visible so far (the debounce hits included).
    pub best: BestResult,
}

/// The result where a label was most visible: the largest total box area.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BestResult {
    /// The frame's sequence number, as given to [`EventTracker::observe`].
    pub seq: u64,
    /// The frame's capture time.
    #[serde(rename = "at_unix_ms", serialize_with = "ser_unix_ms")]
    pub at: SystemTime,
    /// The total area (px²) of the label's boxes in that result.
    pub area: f64,
    /// Objects of the label in that result.
    pub count: usize,
}

/// Milliseconds since the Unix epoch; 0 before it.
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ser_unix_ms<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(unix_ms(*t))
}

fn ser_opt_unix_ms<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&unix_ms(*t)),
        None => s.serialize_none(),
    }
}

/// A label as it is matched and published: trimmed, lower case.
fn normalize_label(label: &str) -> String {
    label.trim().to_lowercase()
}

/// The area of a box, whatever its corners' order; 0 for a box with a non-finite coordinate
/// or an area too large for f64.
fn box_area(b: [f64; 4]) -> f64 {
    let area = (b[2] - b[0]).abs() * (b[3] - b[1]).abs();
    if area.is_finite() {
        area
    } else {
        0.0
    }
}

/// What one label shows for its current (or rising) event.
#[derive(Clone, Debug)]
struct Sighting {
    start: SystemTime,
    /// The latest capture time of a result with the label (never earlier than `start`).
    last_seen: SystemTime,
    count: usize,
    best: BestResult,
}

impl Sighting {
    fn first(seq: u64, at: SystemTime, count: usize, area: f64) -> Sighting {
        Sighting {
            start: at,
            last_seen: at,
            count,
            best: BestResult {
                seq,
                at,
                area,
                count,
            },
        }
    }

    /// Takes in one more result with the label; whether its count changed or its area beat
    /// the best.
    fn see(&mut self, seq: u64, at: SystemTime, count: usize, area: f64) -> bool {
        self.last_seen = self.last_seen.max(at);
        let mut changed = count != self.count;
        self.count = count;
        if area > self.best.area {
            self.best = BestResult {
                seq,
                at,
                area,
                count,
            };
            changed = true;
        }
        changed
    }

    /// Whether, as of `now`, the label has not been seen for more than `end_after`.
    fn expired(&self, now: SystemTime, end_after: Duration) -> bool {
        now.duration_since(self.last_seen)
            .is_ok_and(|gone| gone > end_after)
    }
}

#[derive(Clone, Debug)]
enum Phase {
    /// Not in the latest result, no event running.
    Idle,
    /// In the latest `hits` consecutive results (fewer than `min_hits`), no event yet.
    Rising {
        hits: u32,
        sighting: Sighting,
    },
    Running {
        id: String,
        sighting: Sighting,
    },
}

#[derive(Clone, Debug)]
struct LabelState {
    phase: Phase,
    /// The label has had an event, so [`EventTracker::counts`] reports it.
    had_event: bool,
}

/// One camera's detection events; see the module docs for the rules.
#[derive(Clone, Debug)]
pub struct EventTracker {
    camera: String,
    settings: EventSettings,
    /// The normalized `settings.labels`.
    filter: Option<BTreeSet<String>>,
    labels: BTreeMap<String, LabelState>,
    /// Events started so far.
    started: u64,
}

impl EventTracker {
    /// A tracker for `camera` after [`EventSettings::check`]ing the settings.
    pub fn new(camera: &str, settings: EventSettings) -> Result<EventTracker, String> {
        settings.check()?;
        let filter = settings
            .labels
            .as_ref()
            .map(|ls| ls.iter().map(|l| normalize_label(l)).collect());
        Ok(EventTracker {
            camera: camera.to_string(),
            settings,
            filter,
            labels: BTreeMap::new(),
            started: 0,
        })
    }

    /// The settings the tracker runs with.
    pub fn settings(&self) -> &EventSettings {
        &self.settings
    }

    /// One detection result (`seq` = the frame's sequence number, `at` = its capture time).
    /// Returns the events it causes, in order: first the `end` of every running event whose
    /// label has not been seen for more than `end_after` as of `at` (what [`tick`] would
    /// end), then per label in alphabetical order a `new` when the label reaches `min_hits`
    /// consecutive results, or an `update` when a running event's count changed or the result
    /// beat its best area. A result without a running event's label does not end it.
    ///
    /// [`tick`]: EventTracker::tick
    pub fn observe(&mut self, seq: u64, at: SystemTime, detections: &[Detection]) -> Vec<Event> {
        let mut events = self.tick(at);
        // Per normalized label: (count, total area).
        let mut seen: BTreeMap<String, (usize, f64)> = BTreeMap::new();
        for d in detections {
            let label = normalize_label(d.label);
            if label.is_empty() || self.filter.as_ref().is_some_and(|f| !f.contains(&label)) {
                continue;
            }
            let entry = seen.entry(label).or_insert((0, 0.0));
            entry.0 += 1;
            entry.1 += box_area(d.bbox);
        }
        for (label, state) in &mut self.labels {
            if matches!(state.phase, Phase::Rising { .. }) && !seen.contains_key(label) {
                state.phase = Phase::Idle;
            }
        }
        for (label, (count, area)) in seen {
            let state = self.labels.entry(label.clone()).or_insert(LabelState {
                phase: Phase::Idle,
                had_event: false,
            });
            let (hits, sighting) = match &mut state.phase {
                Phase::Running { id, sighting } => {
                    if sighting.see(seq, at, count, area) {
                        events.push(event(
                            EventKind::Update,
                            id,
                            &self.camera,
                            &label,
                            sighting,
                            None,
                        ));
                    }
                    continue;
                }
                Phase::Rising { hits, sighting } => {
                    sighting.see(seq, at, count, area);
                    (*hits + 1, sighting.clone())
                }
                Phase::Idle => (1, Sighting::first(seq, at, count, area)),
            };
            if hits < self.settings.min_hits {
                state.phase = Phase::Rising { hits, sighting };
                continue;
            }
            self.started += 1;
            let id = format!(
                "{}-{}-{}-{}",
                self.camera,
                label,
                unix_ms(sighting.start),
                self.started
            );
            events.push(event(
                EventKind::New,
                &id,
                &self.camera,
                &label,
                &sighting,
                None,
            ));
            state.phase = Phase::Running { id, sighting };
            state.had_event = true;
        }
        self.forget_idle();
        events
    }

    /// Ends every running event whose label has not been seen for more than `end_after` as of
    /// `now` (called on every result and on a timer); each `end` carries `end` = the time the
    /// label was last seen. In alphabetical order of the labels.
    pub fn tick(&mut self, now: SystemTime) -> Vec<Event> {
        let end_after = self.settings.end_after;
        self.end_where(|s| s.expired(now, end_after))
    }

    /// The per-label object counts to publish retained (`{prefix}/{camera}/{label}`),
    /// Frigate-style: every label that has had an event, with the latest count while its
    /// event runs (at least 1) and 0 once it ended.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.labels
            .iter()
            .filter(|(_, s)| s.had_event)
            .map(|(label, s)| {
                let count = match &s.phase {
                    Phase::Running { sighting, .. } => sighting.count,
                    Phase::Idle | Phase::Rising { .. } => 0,
                };
                (label.clone(), count)
            })
            .collect()
    }

    /// Ends everything now (camera removed / shutdown) and forgets the debounce hits. As with
    /// [`tick`](EventTracker::tick), `end` is the time each label was last seen, so an end
    /// never depends on when the camera went away; `_now` is taken for the callers' symmetry.
    pub fn end_all(&mut self, _now: SystemTime) -> Vec<Event> {
        for state in self.labels.values_mut() {
            if matches!(state.phase, Phase::Rising { .. }) {
                state.phase = Phase::Idle;
            }
        }
        self.end_where(|_| true)
    }

    /// Ends the running events whose sighting satisfies `done`.
    fn end_where(&mut self, done: impl Fn(&Sighting) -> bool) -> Vec<Event> {
        let mut events = Vec::new();
        for (label, state) in &mut self.labels {
            if let Phase::Running { id, sighting } = &state.phase {
                if done(sighting) {
                    events.push(event(
                        EventKind::End,
                        id,
                        &self.camera,
                        label,
                        sighting,
                        Some(sighting.last_seen),
                    ));
                    state.phase = Phase::Idle;
                }
            }
        }
        self.forget_idle();
        events
    }

    /// Drops labels with nothing to remember, so passing labels do not pile up.
    fn forget_idle(&mut self) {
        self.labels
            .retain(|_, s| s.had_event || !matches!(s.phase, Phase::Idle));
    }
}

fn event(
    kind: EventKind,
    id: &str,
    camera: &str,
    label: &str,
    s: &Sighting,
    end: Option<SystemTime>,
) -> Event {
    Event {
        kind,
        id: id.to_string(),
        camera: camera.to_string(),
        label: label.to_string(),
        start: s.start,
        end,
        count: s.count,
        best: s.best.clone(),
    }
}

/// What makes a text task's new text an event.
#[derive(Clone, Debug, PartialEq)]
pub enum TextWatch {
    /// Any change after trimming and collapsing whitespace.
    AnyChange,
    /// A change in the set of these words present in the text: case-insensitive, whole words
    /// (a text's words are its runs of letters and digits, so "gate" is not in "gateway" but
    /// is in "gate-3"). An entry of several words ("no entry") matches them in a row.
    Words(Vec<String>),
}

/// A text task's text changed.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TextEvent {
    /// `{camera}-text-{at_unix_ms}-{n}`, `n` counting this tracker's events from 1.
    pub id: String,
    pub camera: String,
    /// The text of the previous event (`None` for the first).
    pub previous: Option<String>,
    /// The text, trimmed and with its whitespace runs collapsed to single spaces.
    pub text: String,
    pub seq: u64,
    #[serde(rename = "at_unix_ms", serialize_with = "ser_unix_ms")]
    pub at: SystemTime,
    /// The watched words now present, normalized, in the order they were given (empty for
    /// [`TextWatch::AnyChange`]).
    pub words: Vec<String>,
}

/// One text task's change events.
#[derive(Clone, Debug)]
pub struct TextTracker {
    camera: String,
    /// Per watched entry: its normalized form and its words; `None` for any change.
    watched: Option<Vec<(String, Vec<String>)>>,
    /// The text and watched words of the last event.
    last: Option<(String, Vec<String>)>,
    events: u64,
}

/// A text's words for matching: runs of letters and digits, lower case.
fn words_of(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

impl TextTracker {
    /// A tracker for `camera`. Watched entries without a letter or digit can never match and
    /// are dropped; with no watched words left only the first text is an event.
    pub fn new(camera: &str, watch: TextWatch) -> TextTracker {
        let watched = match watch {
            TextWatch::AnyChange => None,
            TextWatch::Words(entries) => {
                let mut out: Vec<(String, Vec<String>)> = Vec::new();
                for entry in entries {
                    let words = words_of(&entry);
                    let name = words.join(" ");
                    if !words.is_empty() && !out.iter().any(|(n, _)| *n == name) {
                        out.push((name, words));
                    }
                }
                Some(out)
            }
        };
        TextTracker {
            camera: camera.to_string(),
            watched,
            last: None,
            events: 0,
        }
    }

    /// The first text is an event; later ones only when they differ (any change: after
    /// trimming and collapsing whitespace; watched words: the set of watched words present
    /// changed).
    pub fn observe(&mut self, seq: u64, at: SystemTime, text: &str) -> Option<TextEvent> {
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let words = match &self.watched {
            None => Vec::new(),
            Some(watched) => {
                let have = words_of(&text);
                watched
                    .iter()
                    .filter(|(_, phrase)| have.windows(phrase.len()).any(|w| w == phrase))
                    .map(|(name, _)| name.clone())
                    .collect()
            }
        };
        let changed = match (&self.last, &self.watched) {
            (None, _) => true,
            (Some((last, _)), None) => *last != text,
            (Some((_, last_words)), Some(_)) => *last_words != words,
        };
        if !changed {
            return None;
        }
        self.events += 1;
        let previous = self.last.take().map(|(t, _)| t);
        self.last = Some((text.clone(), words.clone()));
        Some(TextEvent {
            id: format!("{}-text-{}-{}", self.camera, unix_ms(at), self.events),
            camera: self.camera.clone(),
            previous,
            text,
            seq,
            at,
            words,
        })
    }
}

#[cfg(test)]
mod tests;
