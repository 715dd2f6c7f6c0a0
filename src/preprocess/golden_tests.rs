//! Bit-exactness against Pillow and the Hugging Face processor, from
//! `tests/fixtures/preprocess/golden.json` (written by `tools/make_preprocess_golden.py`).
//! Inputs are regenerated here from the same seeds with the same splitmix64 stream.

use half::f16;
use serde_json::Value;

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

/// FIPS 180-4 SHA-256, enough to compare with the tool's `hashlib.sha256` without a crate.
fn sha256(message: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut data = message.to_vec();
    data.push(0x80);
    while data.len() % 64 != 56 {
        data.push(0);
    }
    data.extend_from_slice(&((message.len() as u64) * 8).to_be_bytes());
    for block in data.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (state, v) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *state = state.wrapping_add(v);
        }
    }
    let mut out = [0u8; 32];
    for (chunk, v) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha256(bytes))
}

#[test]
fn sha256_matches_the_standard_vectors() {
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
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
