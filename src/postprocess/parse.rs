//! The reference's text parsers, rule for rule (transformers 5 `Florence2PostProcessor`), working
//! on location bins. Every `<loc_N>` token of the cleaned text is inventoried first and marked
//! when a parser turns it into a coordinate, so whatever the reference silently skips is counted.
//!
//! The regular expressions are the reference's, translated to the `regex` crate: Python's `\d`
//! and Rust's are both Unicode decimal digits; Python's `\s` (`str.isspace`) additionally holds
//! U+001C..U+001F, so those are added; `(?=…)` look-aheads become a capture of the delimiter
//! whose start ends the label. Both engines give leftmost-first (backtracking-preference)
//! matches, so lazy and greedy parts pick the same spans.

use std::sync::LazyLock;

use regex::Regex;

use super::location::MAX_BIN;
use super::{Dropped, StructuredAnswer};

/// Compiles a pattern written in this file. A failure is a bug in a literal, caught by the
/// tests (`every_pattern_compiles`), never by input.
fn pattern(source: &str) -> Regex {
    match Regex::new(source) {
        Ok(re) => re,
        Err(e) => panic!("postprocess pattern {source:?} does not compile: {e}"),
    }
}

/// One `<loc_N>` token anywhere.
static LOC_TOKEN: LazyLock<Regex> = LazyLock::new(|| pattern(r"<loc_(\d+)>"));
/// description_with_bboxes: a label (no `<`) followed by at least four location tokens.
static PHRASE_WITH_BOXES: LazyLock<Regex> = LazyLock::new(|| pattern(r"[^<]+(?:<loc_\d+>){4,}"));
/// bboxes (region proposals): four or more location tokens, no label.
static BOXES_WITHOUT_PHRASE: LazyLock<Regex> = LazyLock::new(|| pattern(r"(?:<loc_\d+>){4,}"));
/// The label: leading whitespace, then the shortest text up to one of these delimiters.
static PHRASE_TEXT: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"^[\s\x1C-\x1F]*.*?(<od>|</od>|<box>|</box>|<bbox>|</bbox>|<loc_)"));
static BOX: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>"));
/// OCR: the shortest non-empty text (it may contain location tokens) followed by a quad.
static OCR_LINE: LazyLock<Regex> = LazyLock::new(|| {
    pattern(
        r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>",
    )
});
static POLYGON_PHRASE: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"[^<]+(?:<loc_\d+>|<sep>|<poly>|</poly>){4,}"));
static POLYGON_WITHOUT_PHRASE: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"(?:<loc_\d+>|<sep>|<poly>|</poly>){4,}"));
static LEADING_LOC_TOKEN: LazyLock<Regex> = LazyLock::new(|| pattern(r"^<loc_\d+>"));
static POLYGON_PHRASE_TEXT: LazyLock<Regex> = LazyLock::new(|| {
    pattern(r"^[\s\x1C-\x1F]*.*?(<od>|</od>|<box>|</box>|<bbox>|</bbox>|<loc_|<poly>)")
});
static POLYGON_INSTANCE: LazyLock<Regex> = LazyLock::new(|| pattern(r"<poly>(.*?)</poly>"));
/// A polygon: a run of location tokens ended by `<sep>` or by the end of its instance.
static POLYGON_RUN: LazyLock<Regex> = LazyLock::new(|| pattern(r"((?:<loc_\d+>)+)(?:<sep>|$)"));

/// The phrase-grounding filter of the reference (the `banned_grounding_tokens` the Hugging Face
/// conversion writes into processor_config.json, identical to Microsoft's black list). Matching
/// is exact and case-sensitive, on the stripped phrase before non-ASCII characters are removed.
pub const BANNED_GROUNDING_PHRASES: &[&str] = &[
    "it",
    "I",
    "me",
    "mine",
    "you",
    "your",
    "yours",
    "he",
    "him",
    "his",
    "she",
    "her",
    "hers",
    "they",
    "them",
    "their",
    "theirs",
    "one",
    "oneself",
    "we",
    "us",
    "our",
    "ours",
    "its",
    "myself",
    "yourself",
    "himself",
    "herself",
    "itself",
    "ourselves",
    "yourselves",
    "themselves",
    "this",
    "that",
    "these",
    "those",
    "who",
    "whom",
    "whose",
    "which",
    "what",
    "all",
    "another",
    "any",
    "anybody",
    "anyone",
    "anything",
    "each",
    "everybody",
    "everyone",
    "everything",
    "few",
    "many",
    "nobody",
    "none",
    "several",
    "some",
    "somebody",
    "someone",
    "something",
    "each other",
    "one another",
    "the image",
    "image",
    "images",
    "the",
    "a",
    "an",
    "a group",
    "other objects",
    "lots",
    "a set",
];

/// Python's `str.isspace`, which `str.strip()` and `re`'s `\s` use: Rust's White_Space plus the
/// four information separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` without arguments.
pub(super) fn python_strip(s: &str) -> &str {
    s.trim_matches(is_python_space)
}

/// `s.encode("ascii", "ignore").decode("ascii")`.
fn ascii_only(s: &str) -> String {
    s.chars().filter(char::is_ascii).collect()
}

/// The reference removes these from the text before every structured parser (in this order, so
/// a token split by another one, such as `<</s>s>`, becomes whole again, as it does there).
pub(super) fn clean_structured(text: &str) -> String {
    text.replace("<s>", "")
        .replace("</s>", "")
        .replace("<pad>", "")
}

/// pure_text: `<s>` and `</s>` removed, then Python's strip; `<pad>` stays, as in the reference.
pub(super) fn clean_pure_text(text: &str) -> String {
    python_strip(&text.replace("<s>", "").replace("</s>", "")).to_owned()
}

/// A bin as the decoder wrote it; `None` when it cannot name a bin (above 999, or digits the
/// tokenizer never produces, e.g. non-ASCII decimal digits, which Python's `int()` would accept).
fn parse_bin(digits: &str) -> Option<u32> {
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let trimmed = digits.trim_start_matches('0');
    if trimmed.len() > 3 {
        return None;
    }
    let bin = if trimmed.is_empty() {
        0
    } else {
        trimmed.parse::<u32>().ok()?
    };
    (bin <= MAX_BIN).then_some(bin)
}

/// How unused location tokens are grouped when they are counted as dropped groups.
#[derive(Debug, Clone, Copy)]
pub(super) enum GroupSize {
    /// Boxes (4) or quads (8): a run of n unused tokens is ceil(n / size) groups.
    Tokens(usize),
    /// Polygons: each run of unused tokens is one group.
    WholeRun,
}

impl GroupSize {
    /// Counts dropped tokens and groups of an answer given in text order as `true` for each
    /// unused location token and `false` for whatever ends a run of them (a used location token,
    /// or anything between two tokens); both routes count through this.
    pub(super) fn count(self, unused: impl IntoIterator<Item = bool>) -> Dropped {
        let mut dropped = Dropped::default();
        let mut run = 0_usize;
        for token in unused.into_iter().chain([false]) {
            if token {
                run += 1;
                dropped.dropped_location_tokens += 1;
            } else if run > 0 {
                dropped.dropped_groups += match self {
                    GroupSize::Tokens(size) => run.div_ceil(size),
                    GroupSize::WholeRun => 1,
                };
                run = 0;
            }
        }
        dropped
    }
}

/// Every `<loc_N>` token of the cleaned text, with whether a parser used it.
struct LocationTokens {
    /// (start, end) byte offsets, in text order.
    spans: Vec<(usize, usize)>,
    used: Vec<bool>,
}

impl LocationTokens {
    fn inventory(cleaned: &str) -> Self {
        let spans: Vec<(usize, usize)> = LOC_TOKEN
            .find_iter(cleaned)
            .map(|m| (m.start(), m.end()))
            .collect();
        let used = vec![false; spans.len()];
        Self { spans, used }
    }

    /// Marks the token starting at byte `start` of the cleaned text. Location tokens cannot
    /// overlap, so every token a parser matches is in the inventory.
    fn mark(&mut self, start: usize) {
        if let Ok(i) = self.spans.binary_search_by_key(&start, |&(s, _)| s) {
            if let Some(flag) = self.used.get_mut(i) {
                *flag = true;
            }
        }
    }

    fn dropped(&self, group: GroupSize) -> Dropped {
        let mut unused = Vec::with_capacity(2 * self.spans.len());
        let mut previous_end: Option<usize> = None;
        for (&(start, end), &used) in self.spans.iter().zip(&self.used) {
            if previous_end != Some(start) {
                // Text between two tokens ends a run.
                unused.push(false);
            }
            unused.push(!used);
            previous_end = Some(end);
        }
        group.count(unused)
    }
}

/// The text route's answer: the decoded text, the text the structured parsers read (special
/// tokens removed) and the inventory of its location tokens, which the parsers mark.
pub(super) struct TextAnswer<'t> {
    text: &'t str,
    cleaned: String,
    inventory: LocationTokens,
}

impl<'t> TextAnswer<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        let cleaned = clean_structured(text);
        let inventory = LocationTokens::inventory(&cleaned);
        Self {
            text,
            cleaned,
            inventory,
        }
    }
}

impl StructuredAnswer for TextAnswer<'_> {
    fn decoded_text(&self) -> &str {
        self.text
    }

    /// The reference looks for "<poly>" in the text as given, before the clean-up.
    fn holds_poly(&self) -> bool {
        self.text.contains("<poly>")
    }

    fn boxes(&mut self, labels: BoxLabels) -> Vec<BoxInstance> {
        boxes(&self.cleaned, labels, &mut self.inventory)
    }

    fn quads(&mut self) -> Vec<QuadInstance> {
        quads(&self.cleaned, &mut self.inventory)
    }

    fn polygons(&mut self, require_label: bool) -> Vec<PolygonInstance> {
        polygons(&self.cleaned, require_label, &mut self.inventory)
    }

    fn dropped(&self, group: GroupSize) -> Dropped {
        self.inventory.dropped(group)
    }
}

/// A located token inside a match: absolute start of `<loc_` and the bin, if valid.
struct Located {
    start: usize,
    bin: Option<u32>,
}

/// Reads capture groups `first..first+N` of `<loc_(\d+)>` tokens; `base` is the haystack's offset
/// in the cleaned text. The token starts five bytes (`<loc_`) before its digits.
fn located<const N: usize>(
    caps: &regex::Captures<'_>,
    first: usize,
    base: usize,
) -> Option<[Located; N]> {
    let tokens: Vec<Located> = (first..first + N)
        .map(|group| {
            caps.get(group).map(|digits| Located {
                start: base + digits.start().saturating_sub("<loc_".len()),
                bin: parse_bin(digits.as_str()),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    tokens.try_into().ok()
}

/// Marks the tokens and returns their bins when every one is a valid bin; otherwise the whole
/// group is skipped and its tokens stay unused (counted as dropped).
fn take<const N: usize>(tokens: &[Located; N], inventory: &mut LocationTokens) -> Option<[u32; N]> {
    let mut bins = [0_u32; N];
    for (bin, token) in bins.iter_mut().zip(tokens) {
        *bin = token.bin?;
    }
    for token in tokens {
        inventory.mark(token.start);
    }
    Some(bins)
}

/// The label as the reference's `re.search(text_pattern, …).group()`: everything before the
/// delimiter, or `None` when the pattern does not match (e.g. a newline inside the label).
fn label_before_delimiter<'t>(text: &'t str, re: &Regex) -> Option<&'t str> {
    let caps = re.captures(text)?;
    let delimiter = caps.get(1)?;
    text.get(..delimiter.start())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BoxInstance {
    pub label: String,
    pub bins: [u32; 4],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct QuadInstance {
    pub label: String,
    pub bins: [u32; 8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PolygonInstance {
    pub label: String,
    /// Each polygon as flat x, y bins (even length; may be empty, as in the reference, when a
    /// run held a single token).
    pub polygons: Vec<Vec<u32>>,
}

/// Which variant of the description parser runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BoxLabels {
    /// `description_with_bboxes`: a label must precede the boxes.
    Required,
    /// `bboxes` (region proposals): runs of boxes with an empty label.
    Empty,
    /// `phrase_grounding`: like `Required`, and phrases on the banned list are skipped.
    RequiredNotBanned,
}

/// `parse_description_with_bboxes_from_text_and_spans` and
/// `parse_phrase_grounding_from_text_and_spans` (whose per-phrase box lists the reference flattens
/// into one box per label, which is what this returns).
fn boxes(cleaned: &str, labels: BoxLabels, inventory: &mut LocationTokens) -> Vec<BoxInstance> {
    let phrases = match labels {
        BoxLabels::Empty => &*BOXES_WITHOUT_PHRASE,
        BoxLabels::Required | BoxLabels::RequiredNotBanned => &*PHRASE_WITH_BOXES,
    };
    let mut instances = Vec::new();
    for phrase in phrases.find_iter(cleaned) {
        // The reference removes one "<ground>" and one "<obj>" here; a phrase match holds no '<'
        // before its location tokens, so neither can occur and nothing is removed.
        let phrase_text = phrase.as_str();
        let Some(label) = label_before_delimiter(phrase_text, &PHRASE_TEXT) else {
            continue;
        };
        let label = python_strip(label);
        if labels == BoxLabels::RequiredNotBanned && BANNED_GROUNDING_PHRASES.contains(&label) {
            continue;
        }
        let label = ascii_only(label);
        for caps in BOX.captures_iter(phrase_text) {
            let Some(tokens) = located::<4>(&caps, 1, phrase.start()) else {
                continue;
            };
            if let Some(bins) = take(&tokens, inventory) {
                instances.push(BoxInstance {
                    label: label.clone(),
                    bins,
                });
            }
        }
    }
    instances
}

/// `parse_ocr_from_text_and_spans` with the reference's default pattern and area threshold 0.
fn quads(cleaned: &str, inventory: &mut LocationTokens) -> Vec<QuadInstance> {
    let mut instances = Vec::new();
    for caps in OCR_LINE.captures_iter(cleaned) {
        let (Some(content), Some(tokens)) = (caps.get(1), located::<8>(&caps, 2, 0)) else {
            continue;
        };
        if let Some(bins) = take(&tokens, inventory) {
            instances.push(QuadInstance {
                label: python_strip(content.as_str()).to_owned(),
                bins,
            });
        }
    }
    instances
}

/// `parse_description_with_polygons_from_text_and_spans` (with_box_at_start = false, the only
/// way the reference calls it). `require_label` is false for `polygons`
/// (allow_empty_phrase = true) and true inside open-vocabulary detection.
fn polygons(
    cleaned: &str,
    require_label: bool,
    inventory: &mut LocationTokens,
) -> Vec<PolygonInstance> {
    let phrases = if require_label {
        &*POLYGON_PHRASE
    } else {
        &*POLYGON_WITHOUT_PHRASE
    };
    let mut instances = Vec::new();
    for phrase in phrases.find_iter(cleaned) {
        let phrase_text = phrase.as_str();
        let after_first_loc = match LEADING_LOC_TOKEN.find(phrase_text) {
            Some(first) => phrase_text.get(first.end()..).unwrap_or_default(),
            None => phrase_text,
        };
        if after_first_loc.is_empty() && require_label {
            continue;
        }
        let Some(label) = label_before_delimiter(after_first_loc, &POLYGON_PHRASE_TEXT) else {
            continue;
        };
        let label = python_strip(label).to_owned();

        // (offset inside phrase_text, text) of each polygon instance.
        let parts: Vec<(usize, &str)> =
            if phrase_text.contains("<poly>") && phrase_text.contains("</poly>") {
                POLYGON_INSTANCE
                    .captures_iter(phrase_text)
                    .filter_map(|caps| caps.get(1))
                    .map(|inner| (inner.start(), inner.as_str()))
                    .collect()
            } else {
                vec![(0, phrase_text)]
            };

        for (offset, part) in parts {
            let base = phrase.start() + offset;
            let runs: Vec<regex::Match<'_>> = POLYGON_RUN
                .captures_iter(part)
                .filter_map(|caps| caps.get(1))
                .collect();
            if runs.is_empty() {
                continue;
            }
            let mut kept = Vec::with_capacity(runs.len());
            for run in runs {
                let mut tokens: Vec<Located> = LOC_TOKEN
                    .captures_iter(run.as_str())
                    .filter_map(|caps| caps.get(1))
                    .map(|digits| Located {
                        start: base + run.start() + digits.start().saturating_sub("<loc_".len()),
                        bin: parse_bin(digits.as_str()),
                    })
                    .collect();
                // The reference abandons an unpaired last value.
                if tokens.len() % 2 == 1 {
                    tokens.pop();
                }
                let bins: Option<Vec<u32>> = tokens.iter().map(|t| t.bin).collect();
                if let Some(bins) = bins {
                    for token in &tokens {
                        inventory.mark(token.start);
                    }
                    kept.push(bins);
                }
            }
            if kept.is_empty() {
                // Every polygon of the instance used a bin outside 0..=999.
                continue;
            }
            instances.push(PolygonInstance {
                label: label.clone(),
                polygons: kept,
            });
        }
    }
    instances
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        for re in [
            &LOC_TOKEN,
            &PHRASE_WITH_BOXES,
            &BOXES_WITHOUT_PHRASE,
            &PHRASE_TEXT,
            &BOX,
            &OCR_LINE,
            &POLYGON_PHRASE,
            &POLYGON_WITHOUT_PHRASE,
            &LEADING_LOC_TOKEN,
            &POLYGON_PHRASE_TEXT,
            &POLYGON_INSTANCE,
            &POLYGON_RUN,
        ] {
            assert!(!re.as_str().is_empty());
            LazyLock::force(re);
        }
    }

    #[test]
    fn bins_are_ascii_digits_up_to_999() {
        assert_eq!(parse_bin("0"), Some(0));
        assert_eq!(parse_bin("0042"), Some(42));
        assert_eq!(parse_bin("999"), Some(999));
        assert_eq!(parse_bin("1000"), None);
        assert_eq!(parse_bin("99999999999999999999999"), None);
        assert_eq!(parse_bin("000000000000000000007"), Some(7));
        assert_eq!(parse_bin("\u{663}"), None); // ARABIC-INDIC DIGIT THREE
    }

    #[test]
    fn python_strip_includes_information_separators() {
        assert_eq!(python_strip("\u{1c} car \u{1f}\n"), "car");
        assert_eq!(python_strip("\u{a0}car\u{3000}"), "car");
        assert_eq!(python_strip("\u{200b}car"), "\u{200b}car"); // zero width space is not space
    }

    #[test]
    fn label_stops_at_the_first_delimiter_and_rejects_inner_newlines() {
        assert_eq!(
            label_before_delimiter("  car<loc_1>", &PHRASE_TEXT),
            Some("  car")
        );
        assert_eq!(
            label_before_delimiter("\n car<loc_1>", &PHRASE_TEXT),
            Some("\n car")
        );
        assert_eq!(
            label_before_delimiter("red\ncar<loc_1>", &PHRASE_TEXT),
            None
        );
        assert_eq!(
            label_before_delimiter("<sep><loc_1>", &POLYGON_PHRASE_TEXT),
            Some("<sep>")
        );
        assert_eq!(
            label_before_delimiter("</poly></poly>", &POLYGON_PHRASE_TEXT),
            None
        );
    }

    #[test]
    fn dropped_counts_runs_of_unused_tokens() {
        let text = "car<loc_1><loc_2><loc_3><loc_4><loc_5><loc_6>x<loc_7>";
        let mut inventory = LocationTokens::inventory(text);
        let found = boxes(text, BoxLabels::Required, &mut inventory);
        assert_eq!(found.len(), 1);
        // <loc_5><loc_6> is one incomplete group; <loc_7> (too short to parse) another.
        let dropped = inventory.dropped(GroupSize::Tokens(4));
        assert_eq!(dropped.dropped_location_tokens, 3);
        assert_eq!(dropped.dropped_groups, 2);
    }

    #[test]
    fn an_out_of_range_bin_drops_its_whole_box_only() {
        let text = "car<loc_1500><loc_2><loc_3><loc_4><loc_5><loc_6><loc_7><loc_8>";
        let mut inventory = LocationTokens::inventory(text);
        let found = boxes(text, BoxLabels::Required, &mut inventory);
        assert_eq!(
            found,
            vec![BoxInstance {
                label: "car".into(),
                bins: [5, 6, 7, 8]
            }]
        );
        let dropped = inventory.dropped(GroupSize::Tokens(4));
        assert_eq!(
            (dropped.dropped_groups, dropped.dropped_location_tokens),
            (1, 4)
        );
    }

    #[test]
    fn polygon_groups_are_whole_runs() {
        let text = "<loc_1><loc_2><loc_3><loc_4><loc_5><sep><loc_6><loc_7><loc_8000><loc_9>";
        let mut inventory = LocationTokens::inventory(text);
        let found = polygons(text, false, &mut inventory);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].polygons, vec![vec![1, 2, 3, 4]]);
        let dropped = inventory.dropped(GroupSize::WholeRun);
        // <loc_5> (unpaired) and the run holding <loc_8000>.
        assert_eq!(
            (dropped.dropped_groups, dropped.dropped_location_tokens),
            (2, 5)
        );
    }

    #[test]
    fn unicode_digits_are_structure_but_never_bins() {
        let text = "car<loc_\u{663}><loc_2><loc_3><loc_4>dog<loc_5><loc_6><loc_7><loc_8>";
        let mut inventory = LocationTokens::inventory(text);
        let found = boxes(text, BoxLabels::Required, &mut inventory);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].label, "dog");
        assert_eq!(
            inventory
                .dropped(GroupSize::Tokens(4))
                .dropped_location_tokens,
            4
        );
    }
}
