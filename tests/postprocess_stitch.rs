//! The id route of post-processing (`post_process_ids`: coordinates from a `LocationParse`,
//! labels from decoded spans) against the text route (`post_process` of the decoded sequence).
//!
//! * Real model output: every greedy and beam sequence of tests/fixtures/golden (the tiny
//!   Florence-2 run by the Hugging Face reference), decoded with a byte-level BPE decoder built
//!   from the fixture's tokenizer.json. The decoder is first checked against the reference's own
//!   decoded text, so the spans the id route decodes are decoded as the engine would.
//! * The post-processing golden strings (tests/fixtures/postprocess/golden.json, text only):
//!   tokenized by table — canonical `<loc_N>`, `<s>`, `</s>`, `<pad>`, `<sep>`, `<poly>`,
//!   `</poly>` become their own ids, every other stretch of text one id — and sent through both
//!   routes. Strings that spell location tokens the table cannot hold (`<loc_0042>`,
//!   `<loc_1500>`) must take the text route; all others the id route.
//! * A padded batch of mixed tasks through one `LocationParse`.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use florence_edge::florence2::tokenizer::clean_up_tokenization;
use florence_edge::postprocess::loc_ids::{
    location_bin, parse_location_tokens, LocationParse, LocationToken, SequenceInfo, TokenBatch,
};
use florence_edge::postprocess::{
    location_grouping, post_process, post_process_ids, FallbackReason, GeneratedSequence,
    ImageSize, ParseKind, Route, RouteCounts, Stitched, TaskOutput,
};
use serde_json::Value;

const TOKENIZER: &str = include_str!("fixtures/tiny-florence2/tokenizer.json");
const MODEL_GOLDEN: [(&str, &str); 7] = [
    (
        "landscape_640x480",
        include_str!("fixtures/golden/landscape_640x480.json"),
    ),
    (
        "wide_427x240",
        include_str!("fixtures/golden/wide_427x240.json"),
    ),
    (
        "portrait_320x577",
        include_str!("fixtures/golden/portrait_320x577.json"),
    ),
    (
        "square_768x768",
        include_str!("fixtures/golden/square_768x768.json"),
    ),
    (
        "tiny_23x17",
        include_str!("fixtures/golden/tiny_23x17.json"),
    ),
    (
        "batch_mixed_prompts",
        include_str!("fixtures/golden/batch_mixed_prompts.json"),
    ),
    (
        "batch_same_task",
        include_str!("fixtures/golden/batch_same_task.json"),
    ),
];
const POSTPROCESS_GOLDEN: &str = include_str!("fixtures/postprocess/golden.json");

/// Parses a fixture; the model golden files hold Python's `Infinity` (top-1 gaps), which are
/// not JSON and not used here.
fn json(text: &str, what: &str) -> Value {
    let text = regex::Regex::new(r"-?Infinity|NaN")
        .expect("pattern compiles")
        .replace_all(text, "null");
    match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => panic!("{what} is not JSON: {e}"),
    }
}

/// Parses one sequence alone (length = its ids) with the CPU twin.
fn parse_one(ids: &[i64], kind: ParseKind, image: ImageSize, loc0: i64) -> LocationParse {
    let info = SequenceInfo::new(
        image.width as f32,
        image.height as f32,
        u32::try_from(ids.len()).expect("short sequence"),
        location_grouping(kind),
    );
    parse_location_tokens(
        &TokenBatch {
            ids,
            max_len: ids.len(),
            sequences: &[info],
        },
        loc0,
    )
    .expect("valid batch")
}

/// Byte-level BPE decoding as `tokenizers` does it for Florence-2 (`decode(ids, false)`), then
/// transformers' `clean_up_tokenization` (the fixture's tokenizer_config.json sets it).
struct ByteLevelDecoder {
    pieces: HashMap<i64, String>,
    bytes: HashMap<char, u8>,
    loc0: i64,
}

impl ByteLevelDecoder {
    fn from_tokenizer_json(text: &str) -> Self {
        let tokenizer = json(text, "tokenizer.json");
        assert_eq!(tokenizer["decoder"]["type"], "ByteLevel");
        let mut pieces = HashMap::new();
        for (token, id) in tokenizer["model"]["vocab"].as_object().expect("vocab") {
            pieces.insert(id.as_i64().expect("id"), token.clone());
        }
        let mut loc_ids = HashMap::new();
        for added in tokenizer["added_tokens"].as_array().expect("added tokens") {
            let id = added["id"].as_i64().expect("id");
            let content = added["content"].as_str().expect("content").to_owned();
            if let Some(bin) = content
                .strip_prefix("<loc_")
                .and_then(|rest| rest.strip_suffix('>'))
                .and_then(|digits| digits.parse::<i64>().ok())
            {
                loc_ids.insert(bin, id);
            }
            pieces.insert(id, content);
        }
        let loc0 = loc_ids[&0];
        for bin in 0..1000 {
            assert_eq!(loc_ids[&bin], loc0 + bin, "location ids are contiguous");
        }
        // GPT-2's bytes_to_unicode, inverted.
        let mut printable: Vec<u32> = (u32::from('!')..=u32::from('~')).collect();
        printable.extend(u32::from('¡')..=u32::from('¬'));
        printable.extend(u32::from('®')..=u32::from('ÿ'));
        let mut bytes = HashMap::new();
        let mut extra = 0;
        for b in 0_u32..256 {
            let c = if printable.contains(&b) {
                b
            } else {
                extra += 1;
                255 + extra
            };
            bytes.insert(
                char::from_u32(c).expect("valid char"),
                u8::try_from(b).expect("byte"),
            );
        }
        Self {
            pieces,
            bytes,
            loc0,
        }
    }

    fn decode(&self, ids: &[i64]) -> Result<String, String> {
        let mut raw = Vec::new();
        for id in ids {
            let piece = self
                .pieces
                .get(id)
                .ok_or_else(|| format!("id {id} is not in tokenizer.json"))?;
            let mapped: Option<Vec<u8>> =
                piece.chars().map(|c| self.bytes.get(&c).copied()).collect();
            raw.extend(mapped.unwrap_or_else(|| piece.as_bytes().to_vec()));
        }
        Ok(clean_up_tokenization(&String::from_utf8_lossy(&raw)))
    }

    /// The id route for one reference sequence and its slice of a location parse (`index` is its
    /// place in the batch); a failure names the case.
    fn id_route(&self, case: &ModelCase, index: usize, locations: &[LocationToken]) -> Stitched {
        post_process_ids(
            GeneratedSequence {
                index,
                ids: &case.ids,
                locations,
            },
            self.loc0,
            ParseKind::for_task(&case.task),
            case.image,
            |span| self.decode(span),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", case.name))
    }
}

/// One reference sequence of the model golden files.
struct ModelCase {
    name: String,
    task: String,
    image: ImageSize,
    ids: Vec<i64>,
    text: String,
}

fn model_cases() -> Vec<ModelCase> {
    let mut cases = Vec::new();
    for (file, text) in MODEL_GOLDEN {
        let golden = json(text, file);
        let rows = golden["cases"]
            .as_array()
            .or_else(|| golden["rows"].as_array())
            .expect("cases or rows");
        for (i, row) in rows.iter().enumerate() {
            let size = row["image_size"].as_array().expect("image_size");
            let image = ImageSize {
                width: u32::try_from(size[0].as_u64().expect("width")).expect("width"),
                height: u32::try_from(size[1].as_u64().expect("height")).expect("height"),
            };
            for strategy in ["greedy", "beam"] {
                let out = &row[strategy];
                cases.push(ModelCase {
                    name: format!("{file}[{i}].{strategy}"),
                    task: row["task"].as_str().expect("task").to_owned(),
                    image,
                    ids: out["token_ids"]
                        .as_array()
                        .expect("token_ids")
                        .iter()
                        .map(|v| v.as_i64().expect("id"))
                        .collect(),
                    text: out["text"].as_str().expect("text").to_owned(),
                });
            }
        }
    }
    cases
}

#[test]
fn reference_sequences_give_the_same_answer_on_both_routes() {
    let decoder = ByteLevelDecoder::from_tokenizer_json(TOKENIZER);
    let cases = model_cases();
    assert!(
        cases.len() >= 150,
        "only {} reference sequences",
        cases.len()
    );
    let mut routes = RouteCounts::default();
    let mut boxes_or_polygons = 0;
    for case in &cases {
        let decoded = decoder.decode(&case.ids).expect("decodable");
        assert_eq!(
            decoded, case.text,
            "{}: the test decoder differs from the reference's text",
            case.name
        );
        let kind = ParseKind::for_task(&case.task);
        let expected = post_process(&case.text, kind, case.image).expect("valid image");
        let parse = parse_one(&case.ids, kind, case.image, decoder.loc0);
        let stitched = decoder.id_route(case, 0, parse.sequence(0).expect("one sequence"));
        assert_eq!(
            stitched.output, expected,
            "{} ({}): routes differ on {:?}",
            case.name, case.task, case.text
        );
        assert_eq!(stitched.decoded_text, case.text, "{}", case.name);
        routes.record(stitched.route);
        let found = match &stitched.output {
            TaskOutput::Text(_) => 0,
            TaskOutput::Detections(d) => d.bboxes.len(),
            TaskOutput::QuadDetections(q) => q.quad_boxes.len(),
            TaskOutput::Segmentations(s) => s.polygons.len(),
            TaskOutput::OpenVocabularyDetections(o) => o.bboxes.len() + o.polygons.len(),
        };
        boxes_or_polygons += usize::from(found > 0);
    }
    // The tiny model's tokens are real BPE output: none spells a location token.
    assert_eq!(
        routes,
        RouteCounts {
            ids: cases.len(),
            text_fallbacks: 0
        }
    );
    // Guards against fixtures whose answers stopped holding coordinates.
    assert!(
        boxes_or_polygons >= 20,
        "only {boxes_or_polygons} sequences with boxes, quads or polygons"
    );
}

/// Splits golden text into table ids: canonical location tokens and the special tokens get their
/// own ids, every other stretch of text one id of its own.
struct TableTokenizer {
    pieces: Vec<String>,
    index: HashMap<String, i64>,
}

const TABLE_LOC0: i64 = 50_269;

impl TableTokenizer {
    fn new() -> Self {
        let mut table = Self {
            pieces: Vec::new(),
            index: HashMap::new(),
        };
        for special in ["<s>", "<pad>", "</s>", "<sep>", "<poly>", "</poly>"] {
            table.id(special);
        }
        table
    }

    fn id(&mut self, piece: &str) -> i64 {
        if let Some(&id) = self.index.get(piece) {
            return id;
        }
        let id = i64::try_from(self.pieces.len()).expect("small table");
        assert!(id < TABLE_LOC0, "table overlaps the location ids");
        self.pieces.push(piece.to_owned());
        self.index.insert(piece.to_owned(), id);
        id
    }

    fn encode(&mut self, text: &str) -> Vec<i64> {
        let token = regex::Regex::new(r"<loc_(0|[1-9][0-9]{0,2})>|</?s>|<pad>|<sep>|</?poly>")
            .expect("pattern compiles");
        let mut ids = Vec::new();
        let mut at = 0;
        for m in token.captures_iter(text) {
            let whole = m.get(0).expect("match");
            if whole.start() > at {
                ids.push(self.id(&text[at..whole.start()]));
            }
            match m.get(1) {
                Some(bin) => ids.push(TABLE_LOC0 + bin.as_str().parse::<i64>().expect("bin")),
                None => ids.push(self.id(whole.as_str())),
            }
            at = whole.end();
        }
        if at < text.len() {
            ids.push(self.id(&text[at..]));
        }
        ids
    }

    fn decode(&self, ids: &[i64]) -> Result<String, String> {
        let mut text = String::new();
        for &id in ids {
            match location_bin(id, TABLE_LOC0) {
                Some(bin) => text.push_str(&format!("<loc_{bin}>")),
                None => text.push_str(
                    usize::try_from(id)
                        .ok()
                        .and_then(|i| self.pieces.get(i))
                        .ok_or_else(|| format!("id {id} is not in the table"))?,
                ),
            }
        }
        Ok(text)
    }
}

#[test]
fn postprocess_golden_strings_give_the_same_answer_on_both_routes() {
    let golden = json(POSTPROCESS_GOLDEN, "postprocess golden.json");
    let cases = golden["cases"].as_array().expect("cases");
    assert!(cases.len() >= 100, "only {} golden strings", cases.len());
    let spelled = regex::Regex::new(r"<loc_\d+>").expect("pattern compiles");
    let mut tokenizer = TableTokenizer::new();
    let mut routes = RouteCounts::default();
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let text = case["text"].as_str().expect("text");
        let kind: ParseKind = serde_json::from_value(case["kind"].clone()).expect("kind");
        let image: ImageSize = serde_json::from_value(case["image"].clone()).expect("image");
        let ids = tokenizer.encode(text);
        assert_eq!(tokenizer.decode(&ids).as_deref(), Ok(text), "{name}");
        let expected = post_process(text, kind, image).expect("valid image");
        let parse = parse_one(&ids, kind, image, TABLE_LOC0);
        let stitched = post_process_ids(
            GeneratedSequence {
                index: 0,
                ids: &ids,
                locations: parse.sequence(0).expect("one sequence"),
            },
            TABLE_LOC0,
            kind,
            image,
            |span| tokenizer.decode(span),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            stitched.output, expected,
            "{name}: routes differ on {text:?}"
        );
        // The text route exactly when a text id spells a location token (pure text never
        // looks for location tokens, so it always takes the id route).
        let text_spells = kind != ParseKind::PureText
            && ids.iter().any(|&id| {
                location_bin(id, TABLE_LOC0).is_none()
                    && tokenizer
                        .decode(&[id])
                        .is_ok_and(|piece| spelled.is_match(&piece))
            });
        match stitched.route {
            Route::Ids => assert!(!text_spells, "{name}: spelled location took the id route"),
            Route::Text(FallbackReason::SpelledLocationToken { start, end }) => {
                assert!(text_spells && start < end, "{name}: needless text route");
            }
        }
        routes.record(stitched.route);
    }
    // 32 of the golden strings hold location tokens no tokenizer id can carry.
    assert!(
        routes.ids >= 120 && routes.text_fallbacks >= 20,
        "routes {routes:?}"
    );
}

#[test]
fn a_padded_batch_of_mixed_tasks_shares_one_parse() {
    let decoder = ByteLevelDecoder::from_tokenizer_json(TOKENIZER);
    let cases = model_cases();
    // One sequence per task of the first image, padded to the longest, as a batch would be.
    let batch: Vec<&ModelCase> = cases
        .iter()
        .filter(|c| c.name.starts_with("landscape_640x480") && c.name.ends_with("greedy"))
        .collect();
    assert_eq!(batch.len(), 15);
    let max_len = batch.iter().map(|c| c.ids.len()).max().unwrap_or(0) + 3;
    let mut ids = Vec::with_capacity(batch.len() * max_len);
    let mut infos = Vec::with_capacity(batch.len());
    for case in &batch {
        ids.extend(&case.ids);
        ids.extend(std::iter::repeat_n(1, max_len - case.ids.len()));
        infos.push(SequenceInfo::new(
            case.image.width as f32,
            case.image.height as f32,
            u32::try_from(case.ids.len()).expect("short"),
            location_grouping(ParseKind::for_task(&case.task)),
        ));
    }
    let parse = parse_location_tokens(
        &TokenBatch {
            ids: &ids,
            max_len,
            sequences: &infos,
        },
        decoder.loc0,
    )
    .expect("valid batch");
    for (index, case) in batch.iter().enumerate() {
        let kind = ParseKind::for_task(&case.task);
        let stitched = decoder.id_route(case, index, parse.sequence(index).expect("in the batch"));
        assert_eq!(
            stitched.output,
            post_process(&case.text, kind, case.image).expect("valid image"),
            "{}",
            case.name
        );
    }
}
