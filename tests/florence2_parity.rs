//! Token-for-token parity with the Hugging Face reference on the project's
//! tiny random-weight Florence-2 (tests/fixtures/tiny-florence2, goldens in
//! tests/fixtures/golden, made by tools/make_tiny_florence2.py and
//! tools/make_golden.py). Runs ONNX Runtime on the CPU.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use florence_edge::florence2::{DecoderLayout, LoadOptions, Strategy, Task};
use florence_edge::pipeline::{Decoding, Pipeline, TaskRequest};
use florence_edge::preprocess::RgbFrame;
use florence_edge::runtime::Backend;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load(layout: DecoderLayout) -> Pipeline {
    let mut opts = LoadOptions::new(fixtures().join("tiny-florence2"));
    opts.backend = Backend::Cpu;
    opts.layout = layout;
    opts.intra_threads = 1;
    Pipeline::load(&opts).expect("the tiny model loads")
}

fn read_json(path: &Path) -> Value {
    // Python's json writes the infinite top-1/top-2 gaps of forced steps as
    // `Infinity`, which is not JSON; those fields are informational.
    let text = std::fs::read_to_string(path).unwrap();
    let text = regex::Regex::new(r"-?Infinity|NaN")
        .unwrap()
        .replace_all(&text, "null");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Image {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

fn image(name: &str) -> Image {
    let img = image::open(fixtures().join("images").join(name))
        .unwrap()
        .to_rgb8();
    Image {
        width: img.width(),
        height: img.height(),
        rgb: img.into_raw(),
    }
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn request(case: &Value) -> TaskRequest {
    let task: Task = case["task"].as_str().unwrap().parse().unwrap();
    let mut req = TaskRequest::new(task);
    if let Some(region) = case["region"].as_object() {
        let b: Vec<f64> = region["pixel_box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        req.region = Some([b[0], b[1], b[2], b[3]]);
    } else if let Some(t) = case["text_input"].as_str() {
        req.text = Some(t.to_string());
    }
    req
}

fn cases() -> Vec<Value> {
    let index = read_json(&fixtures().join("golden/index.json"));
    index["cases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| {
            let doc = read_json(&fixtures().join("golden").join(f.as_str().unwrap()));
            doc["cases"].as_array().unwrap().clone()
        })
        .collect()
}

/// Every image × every task, greedy and beam, one layout; returns the
/// number of cases checked.
fn check_unbatched(layout: DecoderLayout) -> usize {
    let mut engine = load(layout);
    let cases = cases();
    assert!(
        cases.len() >= 15 * 4,
        "expected every task on several images, got {}",
        cases.len()
    );
    let mut mismatches = Vec::new();
    for case in &cases {
        let img = image(case["image"].as_str().unwrap());
        let frame = RgbFrame::packed(img.width, img.height, &img.rgb).unwrap();
        let req = request(case);
        let max_new_tokens = case["max_new_tokens"].as_u64().unwrap() as usize;
        let label = format!("{} {} ({layout:?})", case["image"], case["task"]);

        let prompt_ids = engine
            .model
            .tokenizer
            .encode_prompt(case["prompt"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            prompt_ids,
            ids(&case["prompt_input_ids"]),
            "prompt ids of {label}"
        );

        for (key, strategy) in [
            ("greedy", Strategy::Greedy),
            (
                "beam",
                Strategy::Beam {
                    num_beams: case["beam"]["num_beams"].as_u64().unwrap() as usize,
                },
            ),
        ] {
            let out = engine
                .run(
                    &[(frame, req.clone())],
                    Decoding {
                        strategy,
                        max_new_tokens,
                    },
                )
                .unwrap_or_else(|e| panic!("{label} {key}: {e}"));
            let r = &out[0];
            assert_eq!(
                r.prompt,
                case["prompt"].as_str().unwrap(),
                "prompt text of {label}"
            );
            let want = ids(&case[key]["token_ids"]);
            if r.token_ids != want {
                mismatches.push(format!(
                    "{label} {key}:\n  got  {:?}\n  want {:?}",
                    r.token_ids, want
                ));
                continue;
            }
            assert_eq!(
                r.raw_text,
                case[key]["text"].as_str().unwrap(),
                "decoded text of {label} {key}"
            );
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} token mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    cases.len()
}

#[test]
fn greedy_and_beam_match_the_reference_with_split_decoders() {
    let n = check_unbatched(DecoderLayout::Split);
    eprintln!("checked {n} cases");
}

#[test]
fn greedy_and_beam_match_the_reference_with_the_merged_decoder() {
    check_unbatched(DecoderLayout::Merged);
}

#[test]
fn batches_match_the_reference_row_for_row() {
    let index = read_json(&fixtures().join("golden/index.json"));
    let mut engine = load(DecoderLayout::Split);
    let batches = index["batches"].as_array().unwrap();
    assert!(batches.len() >= 2);
    for name in batches {
        let batch = read_json(&fixtures().join("golden").join(name.as_str().unwrap()));
        let rows = batch["rows"].as_array().unwrap();
        let images: Vec<Image> = rows
            .iter()
            .map(|r| image(r["image"].as_str().unwrap()))
            .collect();
        // The region for region tasks comes from the per-image goldens.
        let all = cases();
        let items: Vec<(RgbFrame<'_>, TaskRequest)> = rows
            .iter()
            .zip(&images)
            .map(|(row, img)| {
                let case = all
                    .iter()
                    .find(|c| c["image"] == row["image"] && c["task"] == row["task"])
                    .expect("an unbatched golden for each batch row");
                (
                    RgbFrame::packed(img.width, img.height, &img.rgb).unwrap(),
                    request(case),
                )
            })
            .collect();
        let max_new_tokens = batch["max_new_tokens"].as_u64().unwrap() as usize;
        for (key, strategy) in [
            ("greedy", Strategy::Greedy),
            (
                "beam",
                Strategy::Beam {
                    num_beams: batch["num_beams"].as_u64().unwrap() as usize,
                },
            ),
        ] {
            let out = engine
                .run(
                    &items,
                    Decoding {
                        strategy,
                        max_new_tokens,
                    },
                )
                .unwrap();
            assert_eq!(out.len(), rows.len());
            for (r, row) in out.iter().zip(rows) {
                assert_eq!(r.batch_size, rows.len());
                assert_eq!(
                    r.token_ids,
                    ids(&row[key]["token_ids"]),
                    "{} row {} {} {key}",
                    name,
                    row["image"],
                    row["task"]
                );
            }
        }
    }
}

/// Token ids without the padding a batch appends to rows that finished
/// early (every sequence ends with EOS, so trailing pads are padding).
fn unpadded(ids: &[i64], pad: i64) -> Vec<i64> {
    let end = ids.iter().rposition(|&t| t != pad).map_or(0, |i| i + 1);
    ids[..end].to_vec()
}

fn golden_case<'c>(all: &'c [Value], image: &str, task: &str) -> &'c Value {
    all.iter()
        .find(|c| c["image"] == image && c["task"] == task)
        .unwrap_or_else(|| panic!("a golden for {image} {task}"))
}

/// Three tasks on one frame (one with free text, one with a region) and a
/// task on another frame, in one batch: the vision encoder runs on the two
/// distinct frames only, and every row gets the tokens it gets alone and
/// that the reference gives, greedy and beam.
fn check_shared_vision(layout: DecoderLayout) {
    let mut engine = load(layout);
    let pad = engine.model.generation.pad_token_id;
    let all = cases();
    let landscape = image("landscape_640x480.png");
    let wide = image("wide_427x240.png");
    let rows = [
        ("landscape_640x480.png", "<OD>"),
        ("wide_427x240.png", "<CAPTION>"),
        ("landscape_640x480.png", "<CAPTION_TO_PHRASE_GROUNDING>"),
        ("landscape_640x480.png", "<REGION_TO_CATEGORY>"),
    ];
    let items: Vec<(RgbFrame<'_>, TaskRequest)> = rows
        .iter()
        .map(|&(name, task)| {
            let img = if name == "wide_427x240.png" {
                &wide
            } else {
                &landscape
            };
            (
                RgbFrame::packed(img.width, img.height, &img.rgb).unwrap(),
                request(golden_case(&all, name, task)),
            )
        })
        .collect();
    assert!(items[2].1.text.is_some() && items[3].1.region.is_some());
    for (key, strategy) in [
        ("greedy", Strategy::Greedy),
        ("beam", Strategy::Beam { num_beams: 3 }),
    ] {
        let decoding = Decoding {
            strategy,
            max_new_tokens: 24,
        };
        let out = engine.run(&items, decoding).unwrap();
        assert_eq!(out.len(), rows.len());
        for ((r, item), &(name, task)) in out.iter().zip(&items).zip(&rows) {
            let label = format!("{name} {task} {key} ({layout:?})");
            assert_eq!(r.task, task, "{label}");
            assert_eq!(r.batch_size, rows.len(), "{label}");
            assert_eq!(
                r.timings.model.vision_images, 2,
                "{label}: one vision row per distinct frame"
            );
            let got = unpadded(&r.token_ids, pad);
            let want = ids(&golden_case(&all, name, task)[key]["token_ids"]);
            assert_eq!(got, want, "{label}: batched row vs the reference");
            let alone = engine.run(std::slice::from_ref(item), decoding).unwrap();
            assert_eq!(alone[0].timings.model.vision_images, 1, "{label}");
            assert_eq!(got, alone[0].token_ids, "{label}: batched vs alone");
            assert_eq!(r.raw_text, alone[0].raw_text, "{label}");
            assert_eq!(r.result, alone[0].result, "{label}");
        }
    }
}

#[test]
fn tasks_on_one_frame_share_the_vision_encoder_with_split_decoders() {
    check_shared_vision(DecoderLayout::Split);
}

#[test]
fn tasks_on_one_frame_share_the_vision_encoder_with_the_merged_decoder() {
    check_shared_vision(DecoderLayout::Merged);
}

#[test]
fn only_views_of_the_same_buffer_count_as_one_image() {
    use florence_edge::pipeline::distinct_frames;
    let img = image("wide_427x240.png");
    let copy = img.rgb.clone();
    let a = RgbFrame::packed(img.width, img.height, &img.rgb).unwrap();
    let a_again = RgbFrame::packed(img.width, img.height, &img.rgb).unwrap();
    // Equal pixels in another buffer are another image.
    let b = RgbFrame::packed(img.width, img.height, &copy).unwrap();
    // The same buffer read with another geometry is another image.
    let stride = img.width as usize * 3;
    let c = RgbFrame::new(img.width - 1, img.height, stride, &img.rgb).unwrap();
    let d = RgbFrame::new(img.width, img.height - 1, stride, &img.rgb).unwrap();
    let (distinct, image_of) = distinct_frames([a, b, a_again, c, d, b]);
    assert_eq!(image_of, vec![0, 1, 0, 2, 3, 1]);
    assert_eq!(distinct.len(), 4);
    assert_eq!(
        (distinct[2].width(), distinct[3].height()),
        (img.width - 1, img.height - 1)
    );

    // Through the engine: the copy costs its own vision row, with the same
    // tokens.
    let mut engine = load(DecoderLayout::Split);
    let req = TaskRequest::new(Task::Ocr);
    let decoding = Decoding {
        strategy: Strategy::Greedy,
        max_new_tokens: 24,
    };
    let shared = engine
        .run(&[(a, req.clone()), (a_again, req.clone())], decoding)
        .unwrap();
    let copied = engine
        .run(&[(a, req.clone()), (b, req.clone())], decoding)
        .unwrap();
    assert_eq!(shared[0].timings.model.vision_images, 1);
    assert_eq!(copied[0].timings.model.vision_images, 2);
    for r in shared.iter().chain(&copied) {
        assert_eq!(r.token_ids, shared[0].token_ids);
    }
}

#[test]
fn preprocessing_matches_the_reference_pixel_values() {
    use florence_edge::preprocess::{ImageProcessorConfig, Preprocessor};
    let cfg = ImageProcessorConfig::from_json_file(
        fixtures().join("tiny-florence2/preprocessor_config.json"),
    )
    .unwrap();
    let mut pre = Preprocessor::new(cfg).unwrap();
    let mut seen = std::collections::HashSet::new();
    for case in cases() {
        let name = case["image"].as_str().unwrap().to_string();
        if !seen.insert(name.clone()) {
            continue;
        }
        let img = image(&name);
        let frame = RgbFrame::packed(img.width, img.height, &img.rgb).unwrap();
        let mut out = vec![0f32; pre.image_len()];
        pre.preprocess_into(&frame, &mut out).unwrap();
        let pv = &case["pixel_values"];
        let mut max_err = 0f64;
        for (i, want) in ids_f64(&pv["strided_indices"])
            .iter()
            .zip(ids_f64(&pv["strided_values"]))
        {
            // The reference values are float32; compare as float32 (JSON
            // parsing of the decimal text may be one f64 ulp off).
            max_err = max_err.max(f64::from((out[*i as usize] - want as f32).abs()));
        }
        for (got, want) in out.iter().zip(ids_f64(&pv["first16"])) {
            max_err = max_err.max(f64::from((*got - want as f32).abs()));
        }
        let sum: f64 = out.iter().map(|&v| f64::from(v)).sum();
        let want_sum = pv["sum"].as_f64().unwrap();
        // Bit-exact preprocessing gives identical samples; the sums differ
        // only by summation order.
        assert_eq!(
            max_err, 0.0,
            "{name}: pixel values differ from the reference"
        );
        assert!(
            (sum - want_sum).abs() < 1e-6 * want_sum.abs().max(1.0),
            "{name}: sum {sum} vs {want_sum}"
        );
    }
    assert!(seen.len() >= 4);
}

fn ids_f64(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// A temporary model directory holding the tiny model's JSON files except
/// `skip` (and no graphs); returns it and the tiny model's own directory.
fn model_files_without(skip: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("tiny-florence2");
    for f in [
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        if !skip.contains(&f) {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
    }
    (dir, src)
}

#[test]
fn a_model_directory_with_a_missing_graph_names_the_file() {
    let (dir, _) = model_files_without(&[]);
    std::fs::create_dir(dir.path().join("onnx")).unwrap();
    let mut opts = LoadOptions::new(dir.path());
    opts.backend = Backend::Cpu;
    let err = Pipeline::load(&opts)
        .err()
        .expect("loading must fail")
        .to_string();
    assert!(
        err.contains("vision_encoder.onnx") && err.contains("is missing"),
        "{err}"
    );
}

#[test]
fn a_graph_with_the_wrong_tensor_names_is_rejected_by_name() {
    let (dir, src) = model_files_without(&[]);
    let onnx = dir.path().join("onnx");
    std::fs::create_dir(&onnx).unwrap();
    for f in [
        "vision_encoder",
        "embed_tokens",
        "encoder_model",
        "decoder_model",
        "decoder_with_past_model",
    ] {
        // The embedding graph in place of the vision encoder: a valid ONNX
        // file with the wrong contract.
        let from = if f == "vision_encoder" {
            "embed_tokens"
        } else {
            f
        };
        std::fs::copy(
            src.join(format!("onnx/{from}.onnx")),
            onnx.join(format!("{f}.onnx")),
        )
        .unwrap();
    }
    let mut opts = LoadOptions::new(dir.path());
    opts.backend = Backend::Cpu;
    let err = Pipeline::load(&opts)
        .err()
        .expect("loading must fail")
        .to_string();
    assert!(
        err.contains("vision_encoder.onnx")
            && err.contains("pixel_values")
            && err.contains("is missing"),
        "{err}"
    );
}

#[test]
fn a_tokenizer_from_another_model_is_rejected() {
    let (dir, src) = model_files_without(&["config.json"]);
    let mut cfg = read_json(&src.join("config.json"));
    cfg["text_config"]["vocab_size"] = 100.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let mut opts = LoadOptions::new(dir.path());
    opts.backend = Backend::Cpu;
    let err = Pipeline::load(&opts)
        .err()
        .expect("loading must fail")
        .to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("vocab_size 100"),
        "{err}"
    );
}

#[test]
fn the_cpu_build_refuses_tensorrt_with_a_clear_message() {
    let mut opts = LoadOptions::new(fixtures().join("tiny-florence2"));
    opts.backend = Backend::TensorRt;
    let err = Pipeline::load(&opts)
        .err()
        .expect("no TensorRT in the CPU build of ONNX Runtime")
        .to_string();
    assert!(
        err.contains("tensorrt is not available") && err.contains("TensorRT execution provider"),
        "{err}"
    );
}

/// An `<OPEN_VOCABULARY_DETECTION>` request for `words` words of text
/// (" a" is one token of the tiny vocabulary: one word, one token).
fn vocabulary_request(words: usize) -> TaskRequest {
    TaskRequest {
        task: Task::OpenVocabularyDetection,
        text: Some(vec!["a"; words].join(" ")),
        region: None,
    }
}

/// The encoder reads the image tokens and then the prompt's, all on the
/// language model's position embeddings: a prompt is refused before the
/// model sees it exactly when the model itself could not take it.
#[test]
fn prompts_past_the_position_embeddings_are_refused_exactly_where_the_model_fails() {
    let mut engine = load(DecoderLayout::Split);
    let limit = engine
        .model
        .sequence_limit
        .expect("the tiny model declares its limit");
    assert_eq!((limit.image_tokens, limit.max_positions), (577, 1024));
    let max = limit.max_prompt_tokens();
    assert_eq!(max, 447);
    let tokens = |engine: &Pipeline, words: usize| {
        let req = vocabulary_request(words);
        let prompt = req.task.prompt(req.text.as_deref());
        engine.model.tokenizer.encode_prompt(&prompt).unwrap().len()
    };
    // The number of words whose prompt is exactly the longest allowed.
    let at_limit = (1..max)
        .find(|&w| tokens(&engine, w) == max)
        .expect("a prompt of exactly the limit");
    assert_eq!(tokens(&engine, at_limit + 1), max + 1);

    let (w, h) = (64u32, 48u32);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
    let frame = RgbFrame::packed(w, h, &rgb).unwrap();
    let (_, _, ids) = engine
        .prompt_ids(&vocabulary_request(at_limit), w, h)
        .expect("a prompt at the limit is accepted");
    assert_eq!(ids.len(), max);
    let e = engine
        .prompt_ids(&vocabulary_request(at_limit + 1), w, h)
        .unwrap_err();
    assert!(
        matches!(e, florence_edge::florence2::ModelError::PromptTooLong { tokens, .. } if tokens == max + 1),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("<OPEN_VOCABULARY_DETECTION>")
            && msg.contains("448 tokens")
            && msg.contains("at most 447")
            && msg.contains("max_position_embeddings 1024"),
        "{msg}"
    );
    // A short prompt goes through as before.
    assert!(engine.prompt_ids(&vocabulary_request(3), w, h).is_ok());
    let decoding = Decoding {
        strategy: Strategy::Greedy,
        max_new_tokens: 2,
    };
    // A batch holding the refused item fails up front, naming it …
    let e = engine
        .run(
            &[
                (frame, TaskRequest::new(Task::ObjectDetection)),
                (frame, vocabulary_request(at_limit + 1)),
            ],
            decoding,
        )
        .unwrap_err();
    assert!(e.to_string().contains("448 tokens"), "{e}");
    // … while the longest allowed prompt runs.
    let out = engine
        .run(&[(frame, vocabulary_request(at_limit))], decoding)
        .expect("the longest allowed prompt runs");
    assert_eq!(out.len(), 1);
    // One token more is past the embedding table: the model itself fails
    // (the check is not stricter than the model).
    let mut over = ids.clone();
    over.insert(1, over[1]);
    let pixels = vec![0.0f32; 3 * 768 * 768];
    let e = engine
        .model
        .generate_shared(
            florence_edge::florence2::Pixels::Host {
                values: &pixels,
                shape: [1, 3, 768, 768],
            },
            &[0],
            &[over],
            Strategy::Greedy,
            2,
        )
        .unwrap_err();
    assert!(e.to_string().contains("encoder"), "{e}");
}
