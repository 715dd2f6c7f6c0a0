//! Bit-exactness against Pillow and the Hugging Face processor, from
//! `tests/fixtures/preprocess/golden.json` (written by `tools/make_preprocess_golden.py`).
//! Inputs are regenerated here from the same seeds with the same splitmix64 stream.

use half::f16;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::*;

const GOLDEN: &str = include_str!("../../tests/fixtures/preprocess/golden.json");

/// splitmix64 outputs for counters 1, 2, ... as little-endian bytes (the tool's `seeded_bytes`).
fn seeded_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 8);
    let mut i = 1u64;
    while out.len() < n {
        let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
        i += 1;
    }
    out.truncate(n);
    out
}

/// The tool's `make_image`, packed RGB rows.
fn make_image(w: usize, h: usize, pattern: &str, seed: u64) -> Vec<u8> {
    let raw = seeded_bytes(seed, w * h * 3);
    match pattern {
        "noise" => raw,
        "binary" => raw.iter().map(|b| (b & 1) * 255).collect(),
        "smooth" => raw
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let (c, x, y) = (i % 3, (i / 3) % w, i / (3 * w));
                ((x * 3 + y * 2 + c * 85 + usize::from(b & 3)) & 255) as u8
            })
            .collect(),
        other => panic!("golden.json names an unknown pattern {other}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn golden() -> Value {
    serde_json::from_str(GOLDEN).expect("golden.json parses")
}

fn pair(v: &Value) -> (usize, usize) {
    let n = |i: usize| v[i].as_u64().expect("size is a number") as usize;
    (n(0), n(1))
}

#[test]
fn seeded_bytes_match_the_tool() {
    // First splitmix64 output for seed 0 is the reference value 0xE220A8397B1DCDAF.
    assert_eq!(
        seeded_bytes(0, 8),
        0xE220_A839_7B1D_CDAFu64.to_le_bytes().to_vec()
    );
}

#[test]
fn resize_is_bit_exact_with_pillow() {
    let g = golden();
    let cases = g["resize"].as_array().expect("resize cases");
    assert!(cases.len() >= 100);
    let mut failures = Vec::new();
    for case in cases {
        let (sw, sh) = pair(&case["src"]);
        let (dw, dh) = pair(&case["dst"]);
        let pattern = case["pattern"].as_str().expect("pattern");
        let seed = case["seed"].as_u64().expect("seed");
        let src = make_image(sw, sh, pattern, seed);
        let frame = RgbFrame::packed(sw as u32, sh as u32, &src).expect("frame");
        let plan = ResizePlan::new(sw as u32, sh as u32, dw as u32, dh as u32).expect("plan");
        let mut out = vec![0u8; plan.output_len()];
        plan.resize_into_threaded(&frame, &mut out, &mut Vec::new(), 2)
            .expect("resize");
        let name = format!("{pattern} {sw}x{sh} -> {dw}x{dh}");
        if let Some(expected) = case["bytes_hex"].as_str() {
            let got = hex(&out);
            if got != expected {
                let differing = got
                    .as_bytes()
                    .chunks(2)
                    .zip(expected.as_bytes().chunks(2))
                    .filter(|(a, b)| a != b)
                    .count();
                failures.push(format!("{name}: {differing} bytes differ"));
            }
        }
        if sha256_hex(&out) != case["sha256"].as_str().expect("sha256") {
            failures.push(format!("{name}: SHA-256 differs"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn value_table_matches_numpy() {
    let g = golden();
    let p = Preprocessor::new(ImageProcessorConfig::florence2()).expect("preprocessor");
    let config = ImageProcessorConfig::from_json_str(&g["config"].to_string()).expect("config");
    assert_eq!(config.size, (768, 768));
    let from_file = Preprocessor::new(config).expect("preprocessor");
    for c in 0..3 {
        for v in 0..256 {
            let bits = g["lut_f32_bits"][c][v].as_u64().expect("bits") as u32;
            assert_eq!(p.lut_f32()[c][v].to_bits(), bits, "channel {c} value {v}");
            assert_eq!(from_file.lut_f32()[c][v].to_bits(), bits);
        }
    }
}

#[test]
fn pixel_values_are_bit_exact_with_the_hf_processor() {
    let g = golden();
    let config = ImageProcessorConfig::from_json_str(&g["config"].to_string()).expect("config");
    let mut p = Preprocessor::new(config)
        .expect("preprocessor")
        .with_threads(2);
    let mut f32_out = vec![0f32; p.image_len()];
    let mut f16_out = vec![f16::ZERO; p.image_len()];
    for case in g["processor"].as_array().expect("processor cases") {
        let (sw, sh) = pair(&case["src"]);
        let pattern = case["pattern"].as_str().expect("pattern");
        let src = make_image(sw, sh, pattern, case["seed"].as_u64().expect("seed"));
        let frame = RgbFrame::packed(sw as u32, sh as u32, &src).expect("frame");
        p.preprocess_into(&frame, &mut f32_out).expect("f32");
        p.preprocess_into_f16(&frame, &mut f16_out).expect("f16");
        for sample in case["samples"].as_array().expect("samples") {
            let i = sample[0].as_u64().expect("index") as usize;
            let bits = sample[1].as_u64().expect("bits") as u32;
            assert_eq!(
                f32_out[i].to_bits(),
                bits,
                "{pattern} {sw}x{sh} element {i}"
            );
        }
        let f32_bytes: Vec<u8> = f32_out.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            sha256_hex(&f32_bytes),
            case["f32_sha256"].as_str().expect("sha"),
            "{pattern} {sw}x{sh} float32"
        );
        let f16_bytes: Vec<u8> = f16_out.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            sha256_hex(&f16_bytes),
            case["f16_sha256"].as_str().expect("sha"),
            "{pattern} {sw}x{sh} float16"
        );
    }
}
