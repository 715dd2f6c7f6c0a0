//! Post-processing straight from generated ids and a [`LocationParse`]: coordinates come from the
//! parse (the CUDA kernel or its CPU twin, [`super::loc_ids`]), labels from decoding only the ids
//! between location tokens, and the result is exactly what [`post_process`] makes of the decoded
//! text — the same [`TaskOutput`], labels, f64 coordinates and [`Dropped`](super::Dropped)
//! counts.
//!
//! # How the text route is reproduced
//!
//! The text route decodes the whole sequence and runs the reference's regular expressions over
//! it. Here the sequence becomes a stream of *atoms*: the characters of the decoded text spans,
//! one atom per location token (its bin from the parse) and, for polygon answers, one atom per
//! `<sep>`, `<poly>`, `</poly>` found in the text. Every rule of `parse.rs` is then applied to the
//! stream structurally, including its corners, which real (tiny-model) output does hit:
//! * a label runs back to the previous `<`, which may be the `<` of the last location token of an
//!   earlier, unused run: its label then starts with `loc_925>` (rendered from the bin);
//! * a run with no label before it still yields boxes when it has one token more than needed:
//!   the label is the tail of its first token and the boxes start at the second;
//! * an OCR line's text may hold location tokens (`.+?` crosses them), which stay unused;
//! * `</s>` and `<pad>` are removed before parsing, so runs separated only by them are one run.
//!
//! Coordinates: the text route computes pixels as `(bin + 0.5) * size / 1000` and normalized
//! values as `(bin + 0.5) / 1000` in f64 ([`super::dequantize`], [`super::normalize`]); the parse
//! holds the same formulas rounded to f32 (`coord_px`, `coord_norm`), which cannot be widened
//! back to those f64 values. So the output's coordinates are computed from the parse's `bin`
//! with the text route's own functions, and `coord_px` / `coord_norm` serve as a check that the
//! parse was made for these ids and this image size (an error otherwise, never a silent mix).
//!
//! # What the caller guarantees
//!
//! `decode` must be what the text route decodes with, applied to a span: for the engine that is
//! `FlorenceTokenizer::decode_with_special_tokens`. The route relies on decoding being
//! *separable at location tokens*: `decode(a ++ [<loc_N>] ++ b) == decode(a) + "<loc_N>" +
//! decode(b)`. Florence-2's byte-level BPE decoder is: a location token is pure ASCII, at which
//! lossy UTF-8 decoding resynchronises, and none of transformers' clean-up replacements contains
//! `<` or `>`. The tests check this against the reference's own decoded text.
//!
//! # When the text route is taken instead
//!
//! If the text between location tokens itself spells a location token (`<loc_12>` out of word
//! pieces, or `<loc_` and `5>` joined once a `</s>` between them is removed), the text route reads
//! a coordinate the ids do not hold. That sequence is then decoded whole and parsed as text, and
//! [`Route::Text`] says so and why; nothing differs silently.
//!
//! This file splits the ids into pieces and checks the location parse against them; the stream of
//! atoms and the rules applied to it are in `stitch_stream.rs`.

use std::fmt::Display;
use std::sync::LazyLock;

use regex::Regex;

use super::loc_ids::{bin_to_coord, location_bin, LocationGrouping, LocationToken, LOCATION_BINS};
use super::parse::clean_structured;
use super::stitch_stream::Stream;
use super::{assemble, post_process, ImageSize, ParseKind, PostprocessError, TaskOutput};

/// Why a sequence cannot be post-processed from its ids.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StitchError {
    #[error("sequence {sequence}: {source}")]
    Image {
        sequence: usize,
        #[source]
        source: PostprocessError,
    },
    #[error(
        "sequence {sequence}: the location parse covers {locations} positions but the sequence has {ids} ids; pass the sequence's slice of the parse (its length is the ids' length or the batch's padded length)"
    )]
    ParseTooShort {
        sequence: usize,
        ids: usize,
        locations: usize,
    },
    #[error(
        "sequence {sequence}, position {position}: the location parse holds a location token past the sequence's {ids} ids; positions past the ids must be padding"
    )]
    LocationPastEnd {
        sequence: usize,
        position: usize,
        ids: usize,
    },
    #[error(
        "sequence {sequence}, position {position}: id {id} is {id_is} (<loc_0> has id {loc0_id}), but the location parse holds {parse_holds}; the parse must be made from these ids with the same <loc_0> id"
    )]
    ParseMismatch {
        sequence: usize,
        position: usize,
        id: i64,
        loc0_id: i64,
        id_is: String,
        parse_holds: String,
    },
    #[error(
        "sequence {sequence}, position {position}: the location parse places <loc_{bin}> at {coord_px} px / {coord_norm}, but on the {size} px axis of the {width}x{height} image it lies at {expected_px} px / {expected_norm}; the parse was made for another image size"
    )]
    CoordinateMismatch {
        sequence: usize,
        position: usize,
        bin: i32,
        coord_px: f32,
        coord_norm: f32,
        expected_px: f32,
        expected_norm: f32,
        size: u32,
        width: u32,
        height: u32,
    },
    #[error("sequence {sequence}: decoding ids {start}..{end} failed: {message}")]
    Decode {
        sequence: usize,
        start: usize,
        end: usize,
        message: String,
    },
}

/// One generated sequence and its slice of a [`LocationParse`](super::loc_ids::LocationParse).
#[derive(Debug, Clone, Copy)]
pub struct GeneratedSequence<'a> {
    /// Position of the sequence in its batch; errors name it.
    pub index: usize,
    /// The ids as the model returns them: decoder start, BOS, …, EOS, possibly padding.
    pub ids: &'a [i64],
    /// `LocationParse::sequence(index)`: as long as `ids`, or the batch's padded length, in
    /// which case every position past `ids` must hold no location token (the kernel writes
    /// [`LocationToken::NONE`] there when `SequenceInfo::length` is the ids' length).
    pub locations: &'a [LocationToken],
}

/// Which route produced a [`Stitched`] output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Coordinates from the location parse, labels from the decoded spans between runs.
    Ids,
    /// The whole sequence was decoded and parsed as text, for the reason given.
    Text(FallbackReason),
}

/// Why a sequence went the text route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// The ids `start..end`, none of them a location token, decode (after `<s>`, `</s>`, `<pad>`
    /// are removed) to text that spells `<loc_N>`: the text route reads a location the ids do not
    /// hold, so only parsing the text gives its answer.
    SpelledLocationToken { start: usize, end: usize },
}

/// A parsed answer, the route that produced it, and the sequence's text.
#[derive(Debug, Clone, PartialEq)]
pub struct Stitched {
    pub output: TaskOutput,
    pub route: Route,
    /// `decode(ids)`, built from the decoded spans and `<loc_N>` written from the bins (on the
    /// text route, the whole decode itself), so a caller that publishes the raw text needs no
    /// second decode of the sequence.
    pub decoded_text: String,
}

/// How many sequences took each route; a metric for operators (a growing share of text
/// fallbacks means the model spells location tokens out of word pieces).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteCounts {
    pub ids: usize,
    pub text_fallbacks: usize,
}

impl RouteCounts {
    pub fn record(&mut self, route: Route) {
        match route {
            Route::Ids => self.ids += 1,
            Route::Text(_) => self.text_fallbacks += 1,
        }
    }
}

/// The grouping to request from the location parser for a task of `kind`, so that its
/// `complete` flags and [`LocationSummary`](super::loc_ids::LocationSummary) counts mean something
/// for metrics. [`post_process_ids`] itself reads only the bins: the text route's groups depend on
/// labels and on removed `</s>` / `<pad>`, so it regroups the tokens itself. Open-vocabulary
/// detection asks for boxes; whether the answer holds `<poly>` is known only once decoded.
pub fn location_grouping(kind: ParseKind) -> LocationGrouping {
    match kind {
        ParseKind::PureText => LocationGrouping::None,
        ParseKind::DescriptionWithBboxes
        | ParseKind::Bboxes
        | ParseKind::PhraseGrounding
        | ParseKind::DescriptionWithBboxesOrPolygons => LocationGrouping::Boxes,
        ParseKind::Ocr => LocationGrouping::QuadBoxes,
        ParseKind::Polygons => LocationGrouping::PolygonPoints,
    }
}

/// Post-processes one generated sequence from its ids and its slice of the location parse.
/// Equal to `post_process(&decode(sequence.ids)?, kind, image)` (see the module comment for the
/// one requirement on `decode`); `loc0_id` is the id of `<loc_0>`, used to check that the parse
/// belongs to these ids. Model output never makes it panic; errors name the sequence.
pub fn post_process_ids<E: Display>(
    sequence: GeneratedSequence<'_>,
    loc0_id: i64,
    kind: ParseKind,
    image: ImageSize,
    mut decode: impl FnMut(&[i64]) -> Result<String, E>,
) -> Result<Stitched, StitchError> {
    let image = image.validate().map_err(|source| StitchError::Image {
        sequence: sequence.index,
        source,
    })?;
    let bins = checked_bins(sequence, loc0_id, image)?;
    let mut decode_span = |start: usize, end: usize| {
        let span = sequence.ids.get(start..end).unwrap_or_default();
        decode(span).map_err(|e| StitchError::Decode {
            sequence: sequence.index,
            start,
            end,
            message: e.to_string(),
        })
    };

    let mut pieces = Vec::new();
    let mut start = 0;
    while start < bins.len() {
        if let Some(bin) = bins[start] {
            pieces.push(Piece::Location(bin));
            start += 1;
            continue;
        }
        let end = bins[start..]
            .iter()
            .position(Option::is_some)
            .map_or(bins.len(), |n| start + n);
        let raw = decode_span(start, end)?;
        let cleaned = clean_structured(&raw);
        pieces.push(Piece::Text {
            start,
            end,
            raw,
            cleaned,
        });
        start = end;
    }

    if kind != ParseKind::PureText {
        if let Some(reason) = spelled_location(&pieces) {
            let text = decode_span(0, sequence.ids.len())?;
            let output = post_process(&text, kind, image).map_err(|source| StitchError::Image {
                sequence: sequence.index,
                source,
            })?;
            return Ok(Stitched {
                output,
                route: Route::Text(reason),
                decoded_text: text,
            });
        }
    }

    let mut stream = Stream::new(&pieces);
    let output = assemble(kind, &mut stream, image);
    Ok(Stitched {
        output,
        route: Route::Ids,
        decoded_text: stream.decoded_text,
    })
}

/// The decoded text of the whole sequence, location tokens written from their bins.
pub(super) fn raw_text(pieces: &[Piece]) -> String {
    let mut text = String::new();
    for piece in pieces {
        match piece {
            Piece::Text { raw, .. } => text.push_str(raw),
            Piece::Location(bin) => push_location(&mut text, *bin),
        }
    }
    text
}

/// The first span whose cleaned text spells a location token, if any.
fn spelled_location(pieces: &[Piece]) -> Option<FallbackReason> {
    pieces.iter().find_map(|piece| match piece {
        Piece::Text {
            start,
            end,
            cleaned,
            ..
        } if SPELLED_LOCATION.is_match(cleaned) => Some(FallbackReason::SpelledLocationToken {
            start: *start,
            end: *end,
        }),
        _ => None,
    })
}

/// A location token as the text route reads it (the same pattern as `parse.rs`: Unicode digits).
static SPELLED_LOCATION: LazyLock<Regex> = LazyLock::new(|| match Regex::new(r"<loc_\d+>") {
    Ok(re) => re,
    Err(e) => panic!("stitch pattern does not compile: {e}"),
});

/// Per position of `ids`, the bin when the parse holds a location token there. Checks that the
/// parse covers the ids, agrees with them on which are location tokens and their bins, and was
/// made for this image size.
fn checked_bins(
    sequence: GeneratedSequence<'_>,
    loc0_id: i64,
    image: ImageSize,
) -> Result<Vec<Option<u32>>, StitchError> {
    let ids = sequence.ids;
    let locations = sequence.locations;
    if locations.len() < ids.len() {
        return Err(StitchError::ParseTooShort {
            sequence: sequence.index,
            ids: ids.len(),
            locations: locations.len(),
        });
    }
    if let Some(offset) = locations[ids.len()..]
        .iter()
        .position(LocationToken::is_location)
    {
        return Err(StitchError::LocationPastEnd {
            sequence: sequence.index,
            position: ids.len() + offset,
            ids: ids.len(),
        });
    }
    let mut bins = Vec::with_capacity(ids.len());
    for (position, (&id, token)) in ids.iter().zip(locations).enumerate() {
        let from_id = location_bin(id, loc0_id);
        let from_parse = u32::try_from(token.bin)
            .ok()
            .filter(|&bin| bin < LOCATION_BINS);
        let agrees = match (from_id, token.is_location()) {
            (None, false) => true,
            (Some(bin), true) => from_parse == Some(bin),
            _ => false,
        };
        if !agrees {
            return Err(StitchError::ParseMismatch {
                sequence: sequence.index,
                position,
                id,
                loc0_id,
                id_is: from_id.map_or_else(
                    || "not a location token".to_owned(),
                    |bin| format!("<loc_{bin}>"),
                ),
                parse_holds: if token.is_location() {
                    format!("bin {}", token.bin)
                } else {
                    "no location token".to_owned()
                },
            });
        }
        if let Some(bin) = from_parse.filter(|_| token.is_location()) {
            let size = if token.axis == 0 {
                image.width
            } else {
                image.height
            };
            #[allow(clippy::cast_precision_loss)]
            let (expected_px, expected_norm) = bin_to_coord(bin, size as f32);
            if !close(token.coord_px, expected_px) || !close(token.coord_norm, expected_norm) {
                return Err(StitchError::CoordinateMismatch {
                    sequence: sequence.index,
                    position,
                    bin: token.bin,
                    coord_px: token.coord_px,
                    coord_norm: token.coord_norm,
                    expected_px,
                    expected_norm,
                    size,
                    width: image.width,
                    height: image.height,
                });
            }
        }
        bins.push(from_parse.filter(|_| token.is_location()));
    }
    Ok(bins)
}

/// f32 coordinates of the CPU twin and the kernel agree to the bit; a few ulps of slack keep the
/// check about the image size (a wrong size is off by at least 1 / size relative).
fn close(got: f32, want: f32) -> bool {
    (got - want).abs() <= 4.0 * f32::EPSILON * want.abs().max(f32::MIN_POSITIVE)
}

pub(super) fn push_location(out: &mut String, bin: u32) {
    out.push_str("<loc_");
    out.push_str(&bin.to_string());
    out.push('>');
}

/// The sequence split at location tokens. A location token's text starts with `<` and ends with
/// `>`, and none of `<s>`, `</s>`, `<pad>`, `<poly>` can match across either, so cleaning and
/// searching each span on its own equals doing it on the whole text.
pub(super) enum Piece {
    Text {
        start: usize,
        end: usize,
        raw: String,
        cleaned: String,
    },
    Location(u32),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postprocess::loc_ids::{
        parse_location_tokens, LocationGrouping, LocationParse, SequenceInfo, TokenBatch,
    };
    use crate::postprocess::{dequantize, Detections, Dropped};

    const LOC0: i64 = 50_269;
    const VGA: ImageSize = ImageSize {
        width: 640,
        height: 480,
    };
    /// Toy vocabulary: the id is the index.
    const WORDS: &[&str] = &[
        "<s>", "<pad>", "</s>", "car", "door", "hero", "\n", "<sep>", "<poly>", "</poly>", "<loc_",
        "5>", "STOP",
    ];
    const BOS: i64 = 0;
    const EOS: i64 = 2;

    fn w(piece: &str) -> i64 {
        WORDS
            .iter()
            .position(|p| *p == piece)
            .and_then(|i| i64::try_from(i).ok())
            .unwrap_or(-1)
    }

    fn loc(bin: i64) -> i64 {
        LOC0 + bin
    }

    fn decode(ids: &[i64]) -> Result<String, String> {
        let mut text = String::new();
        for &id in ids {
            match location_bin(id, LOC0) {
                Some(bin) => push_location(&mut text, bin),
                None => text.push_str(
                    usize::try_from(id)
                        .ok()
                        .and_then(|i| WORDS.get(i))
                        .ok_or_else(|| format!("unknown id {id}"))?,
                ),
            }
        }
        Ok(text)
    }

    fn parse(ids: &[i64], image: ImageSize) -> LocationParse {
        let info = SequenceInfo::new(
            image.width as f32,
            image.height as f32,
            ids.len() as u32,
            LocationGrouping::Boxes,
        );
        let batch = TokenBatch {
            ids,
            max_len: ids.len(),
            sequences: &[info],
        };
        parse_location_tokens(&batch, LOC0).expect("valid batch")
    }

    /// Both routes; asserts they agree and returns the id route's answer.
    fn stitch(ids: &[i64], kind: ParseKind, image: ImageSize) -> Stitched {
        let parse = parse(ids, image);
        let sequence = GeneratedSequence {
            index: 0,
            ids,
            locations: &parse.tokens,
        };
        let stitched = post_process_ids(sequence, LOC0, kind, image, decode).expect("stitches");
        let text = decode(ids).expect("decodable");
        assert_eq!(stitched.decoded_text, text);
        assert_eq!(
            stitched.output,
            post_process(&text, kind, image).expect("valid image"),
            "{text:?}"
        );
        stitched
    }

    fn detections(output: &TaskOutput) -> &Detections {
        match output {
            TaskOutput::Detections(d) => d,
            other => panic!("not detections: {other:?}"),
        }
    }

    #[test]
    fn boxes_take_their_coordinates_from_the_bins() {
        let ids = [
            EOS,
            BOS,
            w("car"),
            loc(52),
            loc(333),
            loc(932),
            loc(774),
            w("door"),
            loc(710),
            loc(276),
            loc(908),
            loc(537),
            EOS,
        ];
        let stitched = stitch(&ids, ParseKind::DescriptionWithBboxes, VGA);
        assert_eq!(stitched.route, Route::Ids);
        let d = detections(&stitched.output);
        assert_eq!(d.labels, ["car", "door"]);
        assert_eq!(
            d.bboxes[0],
            [
                dequantize(52, 640),
                dequantize(333, 480),
                dequantize(932, 640),
                dequantize(774, 480)
            ]
        );
        assert_eq!(d.bboxes_normalized[1][0], 0.7105);
        assert_eq!(d.dropped, Dropped::default());
    }

    #[test]
    fn a_label_runs_back_into_the_tail_of_an_unused_run() {
        // Seen in the tiny model's <OD> output: the label becomes "loc_925>hero".
        let ids = [loc(925), w("hero"), loc(1), loc(2), loc(3), loc(4)];
        let stitched = stitch(&ids, ParseKind::DescriptionWithBboxes, VGA);
        let d = detections(&stitched.output);
        assert_eq!(d.labels, ["loc_925>hero"]);
        assert_eq!(
            d.dropped,
            Dropped {
                dropped_groups: 1,
                dropped_location_tokens: 1
            }
        );
    }

    #[test]
    fn a_run_without_a_label_yields_boxes_from_its_second_token() {
        let ids = [BOS, loc(1), loc(2), loc(3), loc(4), loc(5), EOS];
        let d = detections(&stitch(&ids, ParseKind::PhraseGrounding, VGA).output).clone();
        assert_eq!(d.labels, ["loc_1>"]);
        assert_eq!(d.bboxes_normalized, [[0.0025, 0.0035, 0.0045, 0.0055]]);
        // Four tokens are not enough: no box at all.
        let ids = [BOS, loc(1), loc(2), loc(3), loc(4), EOS];
        let d = detections(&stitch(&ids, ParseKind::PhraseGrounding, VGA).output).clone();
        assert!(d.bboxes.is_empty());
        assert_eq!(d.dropped.dropped_location_tokens, 4);
    }

    #[test]
    fn runs_split_only_by_removed_tokens_are_one_run() {
        // The parse sees two runs of two (both malformed); the text route one box.
        let ids = [w("car"), loc(10), loc(20), EOS, loc(30), loc(40)];
        let parsed = parse(&ids, VGA);
        assert_eq!(parsed.summaries[0].malformed_groups, 2);
        let d = detections(&stitch(&ids, ParseKind::DescriptionWithBboxes, VGA).output).clone();
        assert_eq!(d.bboxes_normalized, [[0.0105, 0.0205, 0.0305, 0.0405]]);
    }

    #[test]
    fn an_ocr_line_may_hold_location_tokens() {
        let mut ids = vec![BOS, w("STOP")];
        ids.extend((0..8).map(loc));
        ids.extend((100..109).map(loc));
        let stitched = stitch(&ids, ParseKind::Ocr, VGA);
        let TaskOutput::QuadDetections(q) = &stitched.output else {
            panic!("not quads: {:?}", stitched.output);
        };
        assert_eq!(q.labels, ["STOP", "<loc_100>"]);
        assert_eq!(q.quad_boxes_normalized[1][0], 0.1015);
        assert_eq!(q.dropped.dropped_location_tokens, 1);
    }

    #[test]
    fn polygons_split_at_poly_and_sep() {
        let ids = [
            w("car"),
            w("<poly>"),
            loc(1),
            loc(2),
            loc(3),
            loc(4),
            w("<sep>"),
            loc(5),
            loc(6),
            loc(7),
            w("</poly>"),
            w("<poly>"),
            loc(8),
            loc(9),
            w("</poly>"),
        ];
        let stitched = stitch(&ids, ParseKind::DescriptionWithBboxesOrPolygons, VGA);
        let TaskOutput::OpenVocabularyDetections(o) = &stitched.output else {
            panic!("not open-vocabulary: {:?}", stitched.output);
        };
        assert_eq!(o.polygons_labels, ["car", "car"]);
        assert_eq!(o.polygons[0].len(), 2);
        assert_eq!(o.polygons_normalized[0][1], [0.0055, 0.0065]);
        assert_eq!(o.polygons_normalized[1], [[0.0085, 0.0095]]);
        assert_eq!(o.dropped.dropped_location_tokens, 1);
    }

    #[test]
    fn text_that_spells_a_location_token_takes_the_text_route() {
        let ids = [
            BOS,
            w("car"),
            loc(1),
            loc(2),
            loc(3),
            w("<loc_"),
            EOS,
            w("5>"),
        ];
        let stitched = stitch(&ids, ParseKind::DescriptionWithBboxes, VGA);
        assert_eq!(
            stitched.route,
            Route::Text(FallbackReason::SpelledLocationToken { start: 5, end: 8 })
        );
        assert_eq!(detections(&stitched.output).labels, ["car"]);
        // Pure text never reads location tokens: no fallback needed.
        assert_eq!(stitch(&ids, ParseKind::PureText, VGA).route, Route::Ids);
        let mut counts = RouteCounts::default();
        counts.record(stitched.route);
        counts.record(Route::Ids);
        assert_eq!(
            counts,
            RouteCounts {
                ids: 1,
                text_fallbacks: 1
            }
        );
    }

    fn error(ids: &[i64], locations: &[LocationToken], loc0: i64, image: ImageSize) -> StitchError {
        let sequence = GeneratedSequence {
            index: 3,
            ids,
            locations,
        };
        match post_process_ids(sequence, loc0, ParseKind::Ocr, image, decode) {
            Ok(stitched) => panic!("expected an error, got {stitched:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_parse_that_does_not_belong_to_the_ids_is_an_error() {
        let ids = [BOS, w("car"), loc(1), loc(2), EOS];
        let good = parse(&ids, VGA);
        let e = error(&ids, &good.tokens[..4], LOC0, VGA);
        assert!(matches!(
            e,
            StitchError::ParseTooShort {
                sequence: 3,
                ids: 5,
                locations: 4
            }
        ));
        assert!(e.to_string().starts_with("sequence 3:"), "{e}");

        let e = error(&ids, &good.tokens, LOC0 + 1, VGA);
        assert!(
            matches!(e, StitchError::ParseMismatch { position: 2, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("<loc_0>"), "{e}");

        let other_size = ImageSize {
            width: 641,
            height: 480,
        };
        let e = error(&ids, &parse(&ids, other_size).tokens, LOC0, VGA);
        assert!(
            matches!(
                e,
                StitchError::CoordinateMismatch {
                    position: 2,
                    size: 640,
                    ..
                }
            ),
            "{e:?}"
        );

        // A parse made for the sequence plus more tokens.
        let longer = [BOS, w("car"), loc(1), loc(2), EOS, loc(3)];
        let e = error(&ids, &parse(&longer, VGA).tokens, LOC0, VGA);
        assert!(matches!(
            e,
            StitchError::LocationPastEnd {
                position: 5,
                ids: 5,
                ..
            }
        ));

        // A parse made for only part of the sequence misses a location token.
        let short = parse(&ids[..3], VGA);
        let mut locations = short.tokens.clone();
        locations.extend([LocationToken::NONE; 2]);
        locations[2] = LocationToken::NONE;
        let e = error(&ids, &locations, LOC0, VGA);
        assert!(matches!(e, StitchError::ParseMismatch { position: 2, .. }));
    }

    #[test]
    fn decoding_failures_and_empty_images_are_errors() {
        let ids = [BOS, 999, loc(1), EOS];
        let e = error(&ids, &parse(&ids, VGA).tokens, LOC0, VGA);
        assert_eq!(
            e,
            StitchError::Decode {
                sequence: 3,
                start: 0,
                end: 2,
                message: "unknown id 999".into()
            }
        );
        let ids = [BOS, EOS];
        let empty = ImageSize {
            width: 0,
            height: 480,
        };
        let e = error(&ids, &parse(&ids, VGA).tokens, LOC0, empty);
        assert!(matches!(e, StitchError::Image { sequence: 3, .. }));
        assert!(e.to_string().contains("0x480"), "{e}");
    }
}
