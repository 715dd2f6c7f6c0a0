//! Walking the merged configuration tree one key at a time.
//!
//! serde's `deny_unknown_fields` stops at the first problem; an operator
//! fixing a file wants all of them at once. So the tree that the `config`
//! crate merged (file, then environment) is read key by key: every accessor
//! records the key as known, reports a bad value and carries on, and
//! [`Fields::finish`] reports every key nobody asked for — a typo'd key is an
//! error that names it and lists the keys allowed there.

use std::collections::BTreeMap;
use std::time::Duration;

use ::config::{Value, ValueKind};

use super::ConfigError;

/// Longest duration any setting takes. Anything longer is a typo, and
/// adding it to an `Instant` could overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Where the `config` crate says a value came from when it was an
/// environment variable.
const ENVIRONMENT_ORIGIN: &str = "the environment";

/// What is wrong with one value, and what would be right.
pub(crate) struct Problem {
    pub problem: String,
    pub allowed: Option<String>,
}

impl Problem {
    pub fn new(problem: impl Into<String>, allowed: impl Into<String>) -> Problem {
        Problem {
            problem: problem.into(),
            allowed: Some(allowed.into()),
        }
    }

    /// A problem whose sentence already says what is allowed.
    pub fn message(problem: impl Into<String>) -> Problem {
        Problem {
            problem: problem.into(),
            allowed: None,
        }
    }
}

/// Collects every problem found while compiling one configuration.
pub(crate) struct Errors {
    file: String,
    env_prefix: String,
    pub list: Vec<ConfigError>,
}

impl Errors {
    pub fn new(file: &str, env_prefix: &str) -> Errors {
        Errors {
            file: file.to_string(),
            env_prefix: env_prefix.to_string(),
            list: Vec::new(),
        }
    }

    /// Names the source of a value: the file, or the environment variable
    /// that overrode it (so the operator looks in the right place).
    fn origin(&self, origin: Option<&str>, key: &str) -> String {
        match origin {
            Some(ENVIRONMENT_ORIGIN) => format!(
                "environment variable {}__{}",
                self.env_prefix,
                key.replace('.', "__").to_ascii_uppercase()
            ),
            _ => self.file.clone(),
        }
    }

    /// Whether a problem with `key` was reported already (a later check of
    /// the same value would only repeat it).
    pub fn has_key(&self, key: &str) -> bool {
        self.list.iter().any(|e| e.key() == Some(key))
    }

    pub fn report(&mut self, origin: Option<&str>, key: &str, problem: Problem) {
        let origin = self.origin(origin, key);
        self.list.push(ConfigError::Invalid {
            origin,
            key: key.to_string(),
            problem: problem.problem,
            allowed: problem.allowed,
        });
    }
}

/// One table of the tree, with the keys not yet read.
pub(crate) struct Fields {
    path: String,
    origin: Option<String>,
    entries: BTreeMap<String, Value>,
    asked: Vec<&'static str>,
}

impl Fields {
    /// A table at `path`; anything else is reported and gives `None`.
    pub fn of(value: Value, path: &str, errors: &mut Errors) -> Option<Fields> {
        // A table's own origin: keys missing from it are missing in the file.
        let origin = value.origin().map(str::to_string);
        let reported_origin = origin_of(&value).map(str::to_string);
        match value.kind {
            ValueKind::Table(map) => Some(Fields {
                path: path.to_string(),
                origin,
                entries: map.into_iter().collect(),
                asked: Vec::new(),
            }),
            other => {
                errors.report(
                    reported_origin.as_deref(),
                    path,
                    Problem::new(
                        format!("expected a table, found {}", describe_kind(&other)),
                        "a table of keys, as in configs/example.toml",
                    ),
                );
                None
            }
        }
    }

    /// An empty table at `path`: a section the file left out.
    pub fn empty(path: &str) -> Fields {
        Fields {
            path: path.to_string(),
            origin: None,
            entries: BTreeMap::new(),
            asked: Vec::new(),
        }
    }

    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    /// Takes a key out of the table and marks it as known. An empty TOML
    /// value cannot exist, but an empty environment variable is unset.
    pub fn take(&mut self, key: &'static str) -> Option<Value> {
        self.asked.push(key);
        self.entries
            .remove(key)
            .filter(|v| !matches!(v.kind, ValueKind::Nil))
    }

    /// The value at `key` parsed by `parse`; `None` when absent or invalid
    /// (invalid is reported).
    pub fn opt<T>(
        &mut self,
        key: &'static str,
        errors: &mut Errors,
        parse: impl FnOnce(&Value) -> Result<T, Problem>,
    ) -> Option<T> {
        let value = self.take(key)?;
        match parse(&value) {
            Ok(parsed) => Some(parsed),
            Err(problem) => {
                errors.report(origin_of(&value), &self.key_path(key), problem);
                None
            }
        }
    }

    /// Like [`Fields::opt`] with a default for an absent key. An invalid
    /// value also yields the default, but the error is recorded, so the
    /// configuration as a whole is rejected.
    pub fn or<T>(
        &mut self,
        key: &'static str,
        default: T,
        errors: &mut Errors,
        parse: impl FnOnce(&Value) -> Result<T, Problem>,
    ) -> T {
        self.opt(key, errors, parse).unwrap_or(default)
    }

    /// A key that must be present; `allowed` describes what to write.
    pub fn required<T>(
        &mut self,
        key: &'static str,
        allowed: &str,
        errors: &mut Errors,
        parse: impl FnOnce(&Value) -> Result<T, Problem>,
    ) -> Option<T> {
        if !self.has(key) {
            self.asked.push(key);
            errors.report(
                self.origin.as_deref(),
                &self.key_path(key),
                Problem::new("missing", allowed),
            );
            return None;
        }
        self.opt(key, errors, parse)
    }

    /// A nested table; absent gives an empty one so its defaults apply.
    pub fn table(&mut self, key: &'static str, errors: &mut Errors) -> Option<Fields> {
        let path = self.key_path(key);
        match self.take(key) {
            None => Some(Fields::empty(&path)),
            Some(value) => Fields::of(value, &path, errors),
        }
    }

    /// An array of values with their `key[i]` paths.
    pub fn array(
        &mut self,
        key: &'static str,
        errors: &mut Errors,
    ) -> Option<Vec<(String, Value)>> {
        let path = self.key_path(key);
        let value = self.take(key)?;
        let origin = origin_of(&value).map(str::to_string);
        match value.kind {
            ValueKind::Array(items) => Some(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (format!("{path}[{i}]"), v))
                    .collect(),
            ),
            other => {
                errors.report(
                    origin.as_deref(),
                    &path,
                    Problem::new(
                        format!("expected an array, found {}", describe_kind(&other)),
                        "an array",
                    ),
                );
                None
            }
        }
    }

    /// Whether the table holds `key` (without reading it).
    pub fn has(&self, key: &str) -> bool {
        self.entries
            .get(key)
            .is_some_and(|v| !matches!(v.kind, ValueKind::Nil))
    }

    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// Where each value under this table came from, by key path, for
    /// problems found after the values were read (call before reading).
    pub fn origins(&self) -> Vec<(String, String)> {
        fn walk(path: String, value: &Value, out: &mut Vec<(String, String)>) {
            match &value.kind {
                ValueKind::Table(map) => {
                    for (k, v) in map {
                        walk(format!("{path}.{k}"), v, out);
                    }
                }
                _ => {
                    if let Some(origin) = origin_of(value) {
                        out.push((path, origin.to_string()));
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (key, value) in &self.entries {
            walk(self.key_path(key), value, &mut out);
        }
        out
    }

    /// Reports every key that no accessor asked for.
    pub fn finish(self, errors: &mut Errors) {
        let allowed = self.asked.join(", ");
        for (key, value) in &self.entries {
            let suggestion = self
                .asked
                .iter()
                .filter(|known| edit_distance(known, key) <= 2)
                .min_by_key(|known| edit_distance(known, key))
                .map(|known| format!("; did you mean `{known}`?"))
                .unwrap_or_default();
            errors.report(
                value.origin(),
                &self.key_path(key),
                Problem::new(format!("unknown key{suggestion}"), allowed.clone()),
            );
        }
    }
}

/// Where a value came from. A table that an environment variable created
/// under a scalar key (`FLORENCE_EDGE__MODEL__DIR__X`) has no origin of its
/// own; its leaves name the variable.
fn origin_of(value: &Value) -> Option<&str> {
    if let Some(origin) = value.origin() {
        return Some(origin);
    }
    match &value.kind {
        ValueKind::Table(map) => map.values().find_map(origin_of),
        ValueKind::Array(items) => items.iter().find_map(origin_of),
        _ => None,
    }
}

/// How a value is named in an error, without echoing long or secret text.
pub(crate) fn describe(value: &Value) -> String {
    describe_kind(&value.kind)
}

fn describe_kind(kind: &ValueKind) -> String {
    match kind {
        ValueKind::Nil => "nothing".into(),
        ValueKind::Boolean(b) => format!("boolean {b}"),
        ValueKind::I64(n) => format!("integer {n}"),
        ValueKind::I128(n) => format!("integer {n}"),
        ValueKind::U64(n) => format!("integer {n}"),
        ValueKind::U128(n) => format!("integer {n}"),
        ValueKind::Float(x) => format!("number {x}"),
        ValueKind::String(s) => format!("string {s:?}"),
        ValueKind::Table(_) => "a table".into(),
        ValueKind::Array(_) => "an array".into(),
    }
}

/// The type of a value only, for secrets.
fn kind_name(kind: &ValueKind) -> &'static str {
    match kind {
        ValueKind::Nil => "nothing",
        ValueKind::Boolean(_) => "a boolean",
        ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => {
            "an integer"
        }
        ValueKind::Float(_) => "a number",
        ValueKind::String(_) => "a string",
        ValueKind::Table(_) => "a table",
        ValueKind::Array(_) => "an array",
    }
}

pub(crate) fn string(value: &Value) -> Result<String, Problem> {
    match &value.kind {
        ValueKind::String(s) => Ok(s.clone()),
        other => Err(Problem::new(
            format!("expected a string, found {}", describe_kind(other)),
            "a quoted string",
        )),
    }
}

/// A non-empty string; secrets never appear in the problem text.
pub(crate) fn secret_string(value: &Value) -> Result<String, Problem> {
    match &value.kind {
        ValueKind::String(s) if !s.is_empty() => Ok(s.clone()),
        ValueKind::String(_) => Err(Problem::new("is empty", "a non-empty quoted string")),
        other => Err(Problem::new(
            format!("expected a string, found {}", kind_name(other)),
            "a quoted string",
        )),
    }
}

pub(crate) fn non_empty_string(value: &Value) -> Result<String, Problem> {
    let s = string(value)?;
    if s.trim().is_empty() {
        return Err(Problem::new("is empty", "a non-empty string"));
    }
    Ok(s)
}

pub(crate) fn boolean(value: &Value) -> Result<bool, Problem> {
    match &value.kind {
        ValueKind::Boolean(b) => Ok(*b),
        // Environment variables are always strings.
        ValueKind::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        ValueKind::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(Problem::new(
            format!("expected a boolean, found {}", describe_kind(other)),
            "true or false",
        )),
    }
}

fn integer(value: &Value) -> Option<i128> {
    match &value.kind {
        ValueKind::I64(n) => Some(i128::from(*n)),
        ValueKind::I128(n) => Some(*n),
        ValueKind::U64(n) => Some(i128::from(*n)),
        ValueKind::U128(n) => i128::try_from(*n).ok(),
        ValueKind::String(s) => s.trim().parse::<i128>().ok(),
        _ => None,
    }
}

/// An integer in `min..=max`.
pub(crate) fn uint_in(value: &Value, min: u64, max: u64) -> Result<u64, Problem> {
    let allowed = format!("an integer {min}..={max}");
    let n = integer(value).ok_or_else(|| {
        Problem::new(
            format!("expected an integer, found {}", describe(value)),
            allowed.clone(),
        )
    })?;
    if n < i128::from(min) || n > i128::from(max) {
        return Err(Problem::new(format!("{n} is out of range"), allowed));
    }
    u64::try_from(n).map_err(|_| Problem::new(format!("{n} is out of range"), allowed))
}

/// A finite number in `min..=max`; integers are accepted.
pub(crate) fn float_in(value: &Value, min: f64, max: f64) -> Result<f64, Problem> {
    let allowed = format!("a number {min}..={max}");
    let x = match &value.kind {
        ValueKind::Float(x) => Some(*x),
        ValueKind::String(s) => s.trim().parse::<f64>().ok(),
        _ => integer(value).map(|n| n as f64),
    }
    .ok_or_else(|| {
        Problem::new(
            format!("expected a number, found {}", describe(value)),
            allowed.clone(),
        )
    })?;
    if !x.is_finite() || x < min || x > max {
        return Err(Problem::new(format!("{x} is out of range"), allowed));
    }
    Ok(x)
}

/// One of a fixed set of words, returned as given.
pub(crate) fn one_of(value: &Value, allowed: &[&'static str]) -> Result<&'static str, Problem> {
    let list = allowed.join(" | ");
    let s = string(value).map_err(|p| Problem::new(p.problem, list.clone()))?;
    allowed
        .iter()
        .copied()
        .find(|a| *a == s)
        .ok_or_else(|| Problem::new(format!("{s:?} is not a known value"), list))
}

/// A humantime duration (`500ms`, `2s`, `1m 30s`) no shorter than `min`.
pub(crate) fn duration_at_least(value: &Value, min: Duration) -> Result<Duration, Problem> {
    let allowed = if min.is_zero() {
        "a duration such as \"500ms\", \"2s\", \"1m 30s\"".to_string()
    } else {
        format!(
            "a duration of at least {} such as \"500ms\", \"2s\", \"1m 30s\"",
            humantime::format_duration(min)
        )
    };
    let (text, parsed) = duration_text(value, &allowed)?;
    if parsed.is_zero() {
        return Err(Problem::new(format!("{text:?} is zero"), allowed));
    }
    if parsed < min {
        return Err(Problem::new(format!("{text:?} is too short"), allowed));
    }
    if parsed > MAX_DURATION {
        return Err(Problem::new(
            format!("{text:?} is too long"),
            "at most 365d",
        ));
    }
    Ok(parsed)
}

/// A humantime duration from `min` to `max`, both included (zero only when
/// `min` is zero, for settings where `"0s"` means off).
pub(crate) fn duration_in(
    value: &Value,
    min: Duration,
    max: Duration,
) -> Result<Duration, Problem> {
    let allowed = format!(
        "a duration from {} to {}, such as \"500ms\", \"2s\", \"1m 30s\"",
        humantime::format_duration(min),
        humantime::format_duration(max)
    );
    let (text, parsed) = duration_text(value, &allowed)?;
    if parsed < min {
        return Err(Problem::new(format!("{text:?} is too short"), allowed));
    }
    if parsed > max {
        return Err(Problem::new(format!("{text:?} is too long"), allowed));
    }
    Ok(parsed)
}

/// The text of a duration value and what humantime makes of it.
fn duration_text(value: &Value, allowed: &str) -> Result<(String, Duration), Problem> {
    let text = match &value.kind {
        ValueKind::String(s) => s,
        other => {
            return Err(Problem::new(
                format!(
                    "expected a duration string, found {}; write the unit, e.g. \"{}s\"",
                    describe_kind(other),
                    match other {
                        ValueKind::I64(n) => n.to_string(),
                        _ => "1".to_string(),
                    }
                ),
                allowed,
            ))
        }
    };
    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        return Err(Problem::new(format!("{text:?} is negative"), allowed));
    }
    let parsed = humantime::parse_duration(trimmed)
        .map_err(|e| Problem::new(format!("{text:?} is not a duration: {e}"), allowed))?;
    Ok((text.clone(), parsed))
}

/// Any positive duration.
pub(crate) fn duration(value: &Value) -> Result<Duration, Problem> {
    duration_at_least(value, Duration::ZERO)
}

/// Levenshtein distance, for "did you mean" hints on typo'd keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::new(None, ValueKind::String(text.into()))
    }

    #[test]
    fn durations_reject_zero_negative_and_garbage_precisely() {
        assert_eq!(duration(&s("500ms")).ok(), Some(Duration::from_millis(500)));
        assert_eq!(duration(&s("1m 30s")).ok(), Some(Duration::from_secs(90)));
        let zero = duration(&s("0s")).err().map(|p| p.problem);
        assert_eq!(zero.as_deref(), Some("\"0s\" is zero"));
        let negative = duration(&s("-1s")).err().map(|p| p.problem);
        assert_eq!(negative.as_deref(), Some("\"-1s\" is negative"));
        let garbage = duration(&s("fast")).err().map(|p| p.problem);
        assert!(garbage.is_some_and(|p| p.starts_with("\"fast\" is not a duration")));
        let long = duration(&s("400d")).err().map(|p| p.problem);
        assert_eq!(long.as_deref(), Some("\"400d\" is too long"));
        let bare = duration(&Value::new(None, ValueKind::I64(5)))
            .err()
            .map(|p| p.problem);
        assert!(bare.is_some_and(|p| p.contains("\"5s\"")));
    }

    #[test]
    fn integers_from_the_environment_are_strings() {
        assert_eq!(uint_in(&s("2"), 0, 2).ok(), Some(2));
        let err = uint_in(&s("3"), 0, 2).err();
        assert_eq!(
            err.and_then(|p| p.allowed).as_deref(),
            Some("an integer 0..=2")
        );
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("every", "evry"), 1);
        assert_eq!(edit_distance("url", "url"), 0);
        assert_eq!(edit_distance("qos", "topic_prefix"), 11);
    }
}
