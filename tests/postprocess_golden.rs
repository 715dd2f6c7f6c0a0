//! Parity of `florence_edge::postprocess` with the reference post-processor, on the decoder
//! strings of tests/fixtures/postprocess/golden.json (written by
//! tools/make_postprocess_golden.py from transformers 5's `Florence2Processor`).
//!
//! The rule, per case:
//! * labels, the task's keys and the nesting of every coordinate list equal the golden
//!   "expected" answer exactly (the reference's parse, with boxes / quads / polygons that name a
//!   bin outside 0..=999 removed — florence-edge's one structural difference);
//! * each pixel coordinate is within a relative 1.2e-7 of Microsoft's original float, which is
//!   `float32(float32(bin + 0.5) * float32(size / 1000))`; ours is the exact
//!   `(bin + 0.5) * size / 1000` in f64, and two float32 roundings stay below 2^-23 relative;
//! * the normalized coordinate is exactly `(bin + 0.5) / 1000` for an integer bin in 0..=999 and
//!   the pixel coordinate is exactly `dequantize(bin, size)` of that bin;
//! * where the reference kept every group (nothing filtered) and did not raise, the transformers
//!   port's integer equals `transformers_port_coordinate(bin, size)` for every coordinate;
//! * `dropped_location_tokens` equals the generator's count (location tokens of the cleaned text
//!   that the expected answer does not use), and `dropped_groups` is zero exactly when it is.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use florence_edge::postprocess::{
    dequantize, normalize, post_process, transformers_port_coordinate, ImageSize, ParseKind,
    TaskOutput, MAX_BIN,
};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    task: String,
    kind: ParseKind,
    text: String,
    image: ImageSize,
    transformers: Option<Value>,
    transformers_error: Option<String>,
    filtered: bool,
    expected: Value,
    expected_dropped_location_tokens: usize,
}

const GOLDEN: &str = include_str!("fixtures/postprocess/golden.json");

/// Relative tolerance against the original's float32 coordinates (see the module comment).
const ORIGINAL_RELATIVE_TOLERANCE: f64 = 1.2e-7;

fn load() -> Vec<Case> {
    let golden: Golden = match serde_json::from_str(GOLDEN) {
        Ok(golden) => golden,
        Err(e) => panic!("golden.json does not parse: {e}"),
    };
    golden.cases
}

/// Keys holding coordinates, and the axis size of the k-th value inside one box / quad / polygon.
const COORDINATE_KEYS: [&str; 3] = ["bboxes", "quad_boxes", "polygons"];

struct Checker<'a> {
    case: &'a Case,
    compared_port_ints: usize,
    compared_coordinates: usize,
}

impl Checker<'_> {
    fn fail(&self, what: &str) -> ! {
        panic!(
            "case {} ({} on {:?}): {what}\n text: {:?}",
            self.case.name, self.case.task, self.case.image, self.case.text
        )
    }

    fn number(&self, value: &Value, what: &str) -> f64 {
        match value.as_f64() {
            Some(n) => n,
            None => self.fail(&format!("{what} is not a number: {value}")),
        }
    }

    fn array<'v>(&self, value: &'v Value, what: &str) -> &'v Vec<Value> {
        match value.as_array() {
            Some(a) => a,
            None => self.fail(&format!("{what} is not an array: {value}")),
        }
    }

    /// One flat coordinate list (a box, quad or polygon): ours, our normalized one, the
    /// original's floats and, when comparable, the port's ints.
    fn coordinates(
        &mut self,
        ours: &Value,
        normalized: &Value,
        original: &Value,
        port: Option<&Value>,
    ) {
        let ours = self.array(ours, "our coordinates").clone();
        let normalized = self.array(normalized, "our normalized coordinates").clone();
        let original = self.array(original, "expected coordinates").clone();
        if ours.len() != original.len() || normalized.len() != original.len() {
            self.fail(&format!(
                "coordinate list lengths differ: ours {}, normalized {}, expected {}",
                ours.len(),
                normalized.len(),
                original.len()
            ));
        }
        let port = port.map(|p| self.array(p, "transformers coordinates").clone());
        if let Some(port) = &port {
            if port.len() != original.len() {
                self.fail("transformers coordinate list has another length");
            }
        }
        for k in 0..ours.len() {
            let size = if k % 2 == 0 {
                self.case.image.width
            } else {
                self.case.image.height
            };
            let x = self.number(&ours[k], "coordinate");
            let n = self.number(&normalized[k], "normalized coordinate");
            let e = self.number(&original[k], "expected coordinate");
            let bin_f = (n * 1000.0 - 0.5).round();
            if !(0.0..=f64::from(MAX_BIN)).contains(&bin_f) {
                self.fail(&format!(
                    "normalized {n} is not the centre of a bin in 0..=999"
                ));
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let bin = bin_f as u32;
            if n != normalize(bin) || x != dequantize(bin, size) {
                self.fail(&format!(
                    "coordinate {x} / normalized {n} are not dequantize / normalize of bin {bin}"
                ));
            }
            if (x - e).abs() > ORIGINAL_RELATIVE_TOLERANCE * e.abs().max(x.abs()) {
                self.fail(&format!(
                    "coordinate {x} differs from the original's {e} (bin {bin}, size {size})"
                ));
            }
            if let Some(port) = &port {
                let want = self.number(&port[k], "transformers coordinate");
                #[allow(clippy::cast_precision_loss)]
                let got = transformers_port_coordinate(bin, size) as f64;
                if got != want {
                    self.fail(&format!(
                        "port integer for bin {bin} on {size} px: transformers {want}, ours {got}"
                    ));
                }
                self.compared_port_ints += 1;
            }
            self.compared_coordinates += 1;
        }
    }

    /// Walks a coordinate key: `depth` 1 for boxes / quads (list of lists), 2 for polygons.
    fn coordinate_key(&mut self, key: &str, ours: &Value, port: Option<&Value>) {
        let expected = &self.case.expected[key];
        let ours_list = self.array(&ours[key], key).clone();
        let normalized_key = format!("{key}_normalized");
        let normalized_list = self.array(&ours[&normalized_key], &normalized_key).clone();
        let expected_list = self.array(expected, key).clone();
        let port_list = port.map(|p| self.array(&p[key], "transformers list").clone());
        if ours_list.len() != expected_list.len() || normalized_list.len() != expected_list.len() {
            self.fail(&format!(
                "{key}: {} entries, {} normalized, expected {}",
                ours_list.len(),
                normalized_list.len(),
                expected_list.len()
            ));
        }
        for i in 0..ours_list.len() {
            let port_i = port_list.as_ref().map(|p| &p[i]);
            if key == "polygons" {
                let ours_inst = self.array(&ours_list[i], "polygon instance").clone();
                let norm_inst = self
                    .array(&normalized_list[i], "normalized instance")
                    .clone();
                let exp_inst = self.array(&expected_list[i], "expected instance").clone();
                if ours_inst.len() != exp_inst.len() || norm_inst.len() != exp_inst.len() {
                    self.fail(&format!(
                        "polygon instance {i} has another number of polygons"
                    ));
                }
                for j in 0..ours_inst.len() {
                    let port_ij = port_i.map(|p| &p[j]);
                    self.coordinates(&ours_inst[j], &norm_inst[j], &exp_inst[j], port_ij);
                }
            } else {
                self.coordinates(
                    &ours_list[i],
                    &normalized_list[i],
                    &expected_list[i],
                    port_i,
                );
            }
        }
    }
}

#[test]
fn golden_cases_match_the_reference() {
    let cases = load();
    assert!(cases.len() >= 100, "only {} golden cases", cases.len());
    let mut kinds_seen = std::collections::HashSet::new();
    let mut port_ints = 0;
    let mut coordinates = 0;
    let mut filtered = 0;
    let mut reference_errors = 0;
    for case in &cases {
        kinds_seen.insert(case.kind);
        let mut checker = Checker {
            case,
            compared_port_ints: 0,
            compared_coordinates: 0,
        };
        if ParseKind::for_task(&case.task) != case.kind {
            checker.fail("ParseKind::for_task disagrees with the reference's table");
        }
        let output = match post_process(&case.text, case.kind, case.image) {
            Ok(output) => output,
            Err(e) => checker.fail(&format!("post_process failed: {e}")),
        };
        let ours = match serde_json::to_value(&output) {
            Ok(value) => value,
            Err(e) => checker.fail(&format!("output does not serialize: {e}")),
        };
        // The keyed form is what gets published: {task: answer}.
        let keyed = serde_json::to_value(output.keyed(&case.task)).unwrap_or(Value::Null);
        if keyed.get(&case.task) != Some(&ours) || keyed.as_object().map(|o| o.len()) != Some(1) {
            checker.fail("keyed output is not a one-entry map under the task token");
        }

        if case.transformers_error.is_some() {
            reference_errors += 1;
        }
        if case.filtered {
            filtered += 1;
        }
        // Port integers are comparable where the reference neither raised nor was filtered.
        let port = if case.filtered {
            None
        } else {
            case.transformers.as_ref()
        };

        match (&case.expected, &output) {
            (Value::String(text), TaskOutput::Text(got)) => {
                if got != text {
                    checker.fail(&format!("text {got:?}, expected {text:?}"));
                }
                if let Some(t) = &case.transformers {
                    if t != &case.expected {
                        checker.fail("transformers text differs from expected text");
                    }
                }
            }
            (Value::Object(expected), _) => {
                let mut want_keys: Vec<String> = expected.keys().cloned().collect();
                for key in COORDINATE_KEYS {
                    if expected.contains_key(key) {
                        want_keys.push(format!("{key}_normalized"));
                    }
                }
                want_keys.push("dropped_groups".into());
                want_keys.push("dropped_location_tokens".into());
                want_keys.sort();
                let mut got_keys: Vec<String> = ours
                    .as_object()
                    .map(|o| o.keys().cloned().collect())
                    .unwrap_or_default();
                got_keys.sort();
                if got_keys != want_keys {
                    checker.fail(&format!("keys {got_keys:?}, expected {want_keys:?}"));
                }
                for (key, value) in expected {
                    if key.ends_with("labels") && ours[key] != *value {
                        checker.fail(&format!("{key}: ours {}, expected {value}", ours[key]));
                    }
                    if let Some(t) = port {
                        if key.ends_with("labels") && t[key] != *value {
                            checker.fail("transformers labels differ from expected labels");
                        }
                    }
                }
                for key in COORDINATE_KEYS {
                    if expected.contains_key(key) {
                        checker.coordinate_key(key, &ours, port);
                    }
                }
            }
            (expected, _) => checker.fail(&format!(
                "answer shape differs: expected {expected}, ours {ours}"
            )),
        }

        let dropped = output.dropped();
        if dropped.dropped_location_tokens != case.expected_dropped_location_tokens {
            checker.fail(&format!(
                "dropped_location_tokens {}, expected {}",
                dropped.dropped_location_tokens, case.expected_dropped_location_tokens
            ));
        }
        if (dropped.dropped_groups == 0) != (dropped.dropped_location_tokens == 0)
            || dropped.dropped_groups > dropped.dropped_location_tokens
        {
            checker.fail(&format!("dropped counts inconsistent: {dropped:?}"));
        }
        port_ints += checker.compared_port_ints;
        coordinates += checker.compared_coordinates;
    }
    assert_eq!(
        kinds_seen.len(),
        7,
        "every parse kind is covered: {kinds_seen:?}"
    );
    // Guards against a golden file whose cases stopped exercising coordinates.
    assert!(
        coordinates >= 600,
        "only {coordinates} coordinates compared"
    );
    assert!(port_ints >= 400, "only {port_ints} port integers compared");
    assert!(
        filtered >= 5,
        "only {filtered} cases exercise out-of-range bins"
    );
    assert!(reference_errors >= 1, "no case where the reference raises");
}
