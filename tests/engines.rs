//! TensorRT engine cache: profiles from the tiny model's real graphs and for
//! a base-size model, fingerprints, the manifest, the hash cache, and the
//! refusals a CPU-only ONNX Runtime must produce. Nothing here runs
//! TensorRT (no GPU on the test machines); the GPU-only paths are checked to
//! fail loudly.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use florence_edge::runtime::engines::{
    build_engines, check, graph_profile, read_graph_inputs, startup_check, BuildEvent, BuiltGraph,
    EngineCacheState, EngineError, EngineFingerprint, EngineGraph, EngineManifest, EngineSpec,
    HashCache, HostFacts, InputSpec, ModelShapes, Probed, ProfileBounds, ProfileRanges,
    MANIFEST_FILE,
};
use florence_edge::runtime::{self, OrtRuntime};

fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-florence2")
}

fn ort() -> &'static OrtRuntime {
    let lib = std::env::var_os("ORT_DYLIB_PATH").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".local/onnxruntime/lib/libonnxruntime.so"),
        PathBuf::from,
    );
    runtime::init(Some(&lib))
        .expect("ONNX Runtime library (set ORT_DYLIB_PATH or run tools/setup.sh)")
}

fn bounds() -> ProfileBounds {
    ProfileBounds {
        max_batch: 8,
        num_beams: 3,
        max_new_tokens: 256,
        max_prompt_tokens: 64,
    }
}

fn spec(model_dir: &Path, engines_dir: &Path) -> EngineSpec {
    EngineSpec {
        model_dir: model_dir.to_path_buf(),
        variant: "fp32".into(),
        fp16: true,
        merged_decoder: false,
        engines_dir: engines_dir.to_path_buf(),
        bounds: bounds(),
    }
}

/// A GPU machine as the probes would describe it.
fn orin() -> HostFacts {
    HostFacts {
        gpu_name: Probed::Known("Orin (nvgpu)".into()),
        compute_capability: Probed::Known("8.7".into()),
        driver_version: Probed::Known("L4T R36.4.0".into()),
        tensorrt_version: Probed::Known("10.3.0".into()),
        onnxruntime_version: Probed::Known("1.31.1".into()),
    }
}

fn copy_model(to: &Path) -> PathBuf {
    let dst = to.join("model");
    fs::create_dir_all(dst.join("onnx")).unwrap();
    for entry in fs::read_dir(tiny_model()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
    for entry in fs::read_dir(tiny_model().join("onnx")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dst.join("onnx").join(entry.file_name())).unwrap();
    }
    dst
}

fn fingerprint(spec: &EngineSpec, host: &HostFacts) -> EngineFingerprint {
    EngineFingerprint::current(spec, host, &mut HashCache::default(), &mut |_| {}).unwrap()
}

/// A manifest as a successful build would leave it, with stand-in engine
/// files.
fn fake_build(spec: &EngineSpec, fp: &EngineFingerprint) -> EngineManifest {
    fs::create_dir_all(&spec.engines_dir).unwrap();
    let graphs = EngineGraph::ALL
        .iter()
        .map(|&g| {
            let prefix = spec.engine_prefix(g);
            let file = format!("{prefix}_123_0_sm87.engine");
            fs::write(spec.engines_dir.join(&file), b"engine").unwrap();
            BuiltGraph {
                graph: g,
                file: format!("onnx/{}.onnx", g.stem()),
                engine_prefix: prefix,
                profile: florence_edge::runtime::engines::GraphProfile {
                    graph: g,
                    inputs: vec![],
                },
                engine_files: vec![file],
                build_ms: 1000,
            }
        })
        .collect();
    let m = EngineManifest {
        fingerprint: fp.clone(),
        built_unix_s: 1_700_000_000,
        graphs,
        hash_cache: HashCache::default(),
    };
    m.write(&spec.engines_dir).unwrap();
    m
}

fn stale_reasons(state: EngineCacheState) -> Vec<String> {
    match state {
        EngineCacheState::Stale { what_changed } => what_changed,
        other => panic!("expected Stale, got {other:?}"),
    }
}

#[test]
fn profiles_of_the_tiny_models_graphs_cover_batch_beams_and_lengths() {
    let rt = ort();
    let shapes = ModelShapes::from_model_dir(&tiny_model()).unwrap();
    assert_eq!(
        (shapes.image_height, shapes.image_width, shapes.image_tokens),
        (768, 768, 577)
    );
    let ranges = ProfileRanges::new(&bounds(), &shapes).unwrap();
    let s = spec(&tiny_model(), Path::new("/nonexistent"));
    let mut profiles = Vec::new();
    for (graph, rel) in s.graph_files().unwrap() {
        let inputs = read_graph_inputs(rt, &tiny_model().join(rel)).unwrap();
        profiles.push(graph_profile(graph, &inputs, &ranges).unwrap());
    }
    let vision = profiles[0].tensorrt_profile();
    assert_eq!(vision.min_shapes, "pixel_values:1x3x768x768");
    assert_eq!(vision.max_shapes, "pixel_values:8x3x768x768");

    let embed = profiles[1].input("input_ids").unwrap();
    assert_eq!(
        (embed.min.clone(), embed.max.clone()),
        (vec![1, 1], vec![24, 64])
    );

    let encoder = &profiles[2];
    let mask = encoder.input("attention_mask").unwrap();
    assert_eq!(
        (mask.min.clone(), mask.max.clone()),
        (vec![1, 578], vec![8, 641])
    );
    // Hidden size 32 of the tiny model comes from the graph.
    assert_eq!(
        encoder.input("inputs_embeds").unwrap().max,
        vec![8, 641, 32]
    );

    let decoder = &profiles[3];
    assert_eq!(decoder.input("inputs_embeds").unwrap().max, vec![24, 1, 32]);
    assert_eq!(
        decoder.input("encoder_hidden_states").unwrap().max,
        vec![24, 641, 32]
    );

    let with_past = &profiles[4];
    // Two layers × decoder/encoder × key/value, plus mask and embeddings.
    assert_eq!(with_past.inputs.len(), 10);
    let dk = with_past.input("past_key_values.1.decoder.value").unwrap();
    assert_eq!(
        (dk.min.clone(), dk.opt.clone(), dk.max.clone()),
        (vec![1, 2, 1, 16], vec![24, 2, 64, 16], vec![24, 2, 256, 16])
    );
    let ek = with_past.input("past_key_values.0.encoder.key").unwrap();
    assert_eq!(
        (ek.min.clone(), ek.max.clone()),
        (vec![1, 2, 578, 16], vec![24, 2, 641, 16])
    );
    assert!(with_past
        .tensorrt_profile()
        .max_shapes
        .contains("past_key_values.0.decoder.key:24x2x256x16,"));
}

/// Florence-2-base: hidden size 768, 6 decoder layers of 12 heads × 64.
fn base_with_past_inputs() -> Vec<InputSpec> {
    let mut inputs = vec![
        InputSpec {
            name: "encoder_attention_mask".into(),
            dims: vec![None, None],
        },
        InputSpec {
            name: "inputs_embeds".into(),
            dims: vec![None, None, Some(768)],
        },
    ];
    for layer in 0..6 {
        for part in ["decoder", "encoder"] {
            for kv in ["key", "value"] {
                inputs.push(InputSpec {
                    name: format!("past_key_values.{layer}.{part}.{kv}"),
                    dims: vec![None, Some(12), None, Some(64)],
                });
            }
        }
    }
    inputs
}

#[test]
fn profiles_for_a_base_size_model_with_greedy_decoding() {
    let shapes = ModelShapes {
        image_height: 768,
        image_width: 768,
        image_tokens: 577,
        max_positions: Some(1024),
    };
    let greedy = ProfileBounds {
        max_batch: 4,
        num_beams: 1,
        max_new_tokens: 1023,
        max_prompt_tokens: 447,
    };
    let ranges = ProfileRanges::new(&greedy, &shapes).unwrap();
    let p = graph_profile(
        EngineGraph::DecoderWithPast,
        &base_with_past_inputs(),
        &ranges,
    )
    .unwrap();
    assert_eq!(p.inputs.len(), 26);
    let dk = p.input("past_key_values.5.decoder.key").unwrap();
    assert_eq!(
        (dk.min.clone(), dk.max.clone()),
        (vec![1, 12, 1, 64], vec![4, 12, 1023, 64])
    );
    let ek = p.input("past_key_values.5.encoder.value").unwrap();
    assert_eq!(ek.max, vec![4, 12, 1024, 64]);
    assert_eq!(
        p.input("encoder_attention_mask").unwrap().max,
        vec![4, 1024]
    );
    // One token past the model's positions is refused.
    let too_long = ProfileBounds {
        max_prompt_tokens: 448,
        ..greedy
    };
    assert!(matches!(
        ProfileRanges::new(&too_long, &shapes),
        Err(EngineError::Settings(_))
    ));
    // An input the contract does not know is named.
    let mut inputs = base_with_past_inputs();
    inputs.push(InputSpec {
        name: "position_ids".into(),
        dims: vec![None, None],
    });
    let e = graph_profile(EngineGraph::DecoderWithPast, &inputs, &ranges)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("position_ids") && e.contains("decoder_with_past_model"),
        "{e}"
    );
}

#[test]
fn the_fingerprint_is_stable_across_runs_and_names_every_graph() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(&tiny_model(), dir.path());
    let a = fingerprint(&s, &orin());
    let b = fingerprint(&s, &orin());
    assert_eq!(a.to_json(), b.to_json());
    assert_eq!(a.digest(), b.digest());
    assert_eq!(a.digest().len(), 64);
    let files: Vec<&str> = a.graphs.iter().map(|g| g.file.as_str()).collect();
    assert_eq!(
        files,
        [
            "onnx/vision_encoder.onnx",
            "onnx/embed_tokens.onnx",
            "onnx/encoder_model.onnx",
            "onnx/decoder_model.onnx",
            "onnx/decoder_with_past_model.onnx"
        ]
    );
    let enc = &a.graphs[2];
    assert_eq!(
        enc.size,
        fs::metadata(tiny_model().join(&enc.file)).unwrap().len()
    );
    assert_eq!(enc.sha256.len(), 64);
    // Field order is the declaration order: what was hashed reads the same.
    let json = a.to_json();
    let pos = |k: &str| json.find(k).unwrap();
    assert!(
        pos("\"gpu_name\"") < pos("\"tensorrt_version\"")
            && pos("\"profiles\"") < pos("\"graphs\"")
    );
}

#[test]
fn the_manifest_round_trips_and_a_matching_fingerprint_is_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(&tiny_model(), &dir.path().join("engines"));
    let fp = fingerprint(&s, &orin());
    assert_eq!(
        check(&s.engines_dir, &fp).unwrap(),
        EngineCacheState::Missing
    );
    let written = fake_build(&s, &fp);
    let read = EngineManifest::read(&s.engines_dir).unwrap().unwrap();
    assert_eq!(read, written);
    assert!(!s.engines_dir.join(format!("{MANIFEST_FILE}.tmp")).exists());
    assert_eq!(check(&s.engines_dir, &fp).unwrap(), EngineCacheState::Fresh);
    let opts = read.session_options(EngineGraph::Decoder).unwrap();
    assert_eq!(
        opts.engine_cache_prefix.as_deref(),
        Some("decoder_model_fp32")
    );

    // A manifest that is not JSON is stale, naming the file: a rebuild
    // replaces it.
    fs::write(s.engines_dir.join(MANIFEST_FILE), "{").unwrap();
    let r = stale_reasons(check(&s.engines_dir, &fp).unwrap());
    assert!(
        r.len() == 1 && r[0].contains(MANIFEST_FILE) && r[0].contains("cannot be used"),
        "{r:?}"
    );
}

#[test]
fn every_changed_component_makes_the_cache_stale_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_model(dir.path());
    let s = spec(&model, &dir.path().join("engines"));
    let built = fingerprint(&s, &orin());
    fake_build(&s, &built);

    let with = |f: &dyn Fn(&mut HostFacts)| {
        let mut host = orin();
        f(&mut host);
        stale_reasons(check(&s.engines_dir, &fingerprint(&s, &host)).unwrap()).join("; ")
    };
    assert_eq!(
        with(&|h| h.tensorrt_version = Probed::Known("10.7.0".into())),
        "TensorRT 10.3.0 → 10.7.0"
    );
    assert_eq!(
        with(&|h| h.gpu_name = Probed::Known("NVIDIA GeForce RTX 4090".into())),
        "GPU Orin (nvgpu) → NVIDIA GeForce RTX 4090"
    );
    assert_eq!(
        with(&|h| h.compute_capability = Probed::Known("8.9".into())),
        "compute capability 8.7 → 8.9"
    );
    assert_eq!(
        with(&|h| h.onnxruntime_version = Probed::Known("1.32.0".into())),
        "ONNX Runtime 1.31.1 → 1.32.0"
    );
    let r = with(&|h| h.tensorrt_version = Probed::Unknown("libnvinfer.so.10 not found".into()));
    assert!(
        r.contains("TensorRT unknown now (libnvinfer.so.10 not found)"),
        "{r}"
    );
    // The driver is recorded but engines do not depend on it.
    assert_eq!(
        check(
            &s.engines_dir,
            &fingerprint(
                &s,
                &HostFacts {
                    driver_version: Probed::Known("L4T R36.4.3".into()),
                    ..orin()
                }
            )
        )
        .unwrap(),
        EngineCacheState::Fresh
    );

    let precision = EngineSpec {
        fp16: false,
        ..s.clone()
    };
    let r = stale_reasons(check(&s.engines_dir, &fingerprint(&precision, &orin())).unwrap());
    assert_eq!(
        r,
        ["precision fp32 graphs, fp16 engines → fp32 graphs, fp32 engines"]
    );

    let bigger = EngineSpec {
        bounds: ProfileBounds {
            max_batch: 4,
            ..bounds()
        },
        ..s.clone()
    };
    let r =
        stale_reasons(check(&s.engines_dir, &fingerprint(&bigger, &orin())).unwrap()).join("; ");
    assert!(
        r.contains("profile images 1..8 (opt 8) → 1..4 (opt 4)"),
        "{r}"
    );
    assert!(
        r.contains("profile decoder rows 1..24 (opt 24) → 1..12 (opt 12)"),
        "{r}"
    );

    // A graph file replaced by another of the same name.
    let decoder = model.join("onnx/decoder_model.onnx");
    let mut bytes = fs::read(&decoder).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&decoder, bytes).unwrap();
    let r = stale_reasons(check(&s.engines_dir, &fingerprint(&s, &orin())).unwrap());
    assert_eq!(r, ["decoder_model.onnx changed"]);
}

#[test]
fn a_deleted_engine_file_makes_the_cache_stale() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(&tiny_model(), &dir.path().join("engines"));
    let fp = fingerprint(&s, &orin());
    let m = fake_build(&s, &fp);
    let gone = &m.graphs[3].engine_files[0];
    fs::remove_file(s.engines_dir.join(gone)).unwrap();
    let r = stale_reasons(check(&s.engines_dir, &fp).unwrap());
    assert_eq!(r, [format!("engine file {gone} is missing")]);
}

#[test]
fn the_hash_cache_reuses_hashes_while_size_and_mtime_match() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("graph.onnx");
    fs::write(&file, b"first graph bytes").unwrap();
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let mut cache = HashCache::default();
    let (size, first, cached) = cache.sha256(&file).unwrap();
    assert_eq!((size, cached), (17, false));
    // sha256sum of the same bytes.
    assert_eq!(
        first,
        "db0caa957050e31ff9077dbe4d70b2f278b1db6d614005c398298ef5cbd287b9"
    );

    // Same size, same mtime: the remembered hash, even though the bytes
    // differ (which is why the key includes the mtime in nanoseconds).
    fs::write(&file, b"other graph bytes").unwrap();
    fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let (_, again, cached) = cache.sha256(&file).unwrap();
    assert!(cached);
    assert_eq!(again, first);

    // A new mtime: hashed again, and the new bytes give a new hash.
    fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime + Duration::from_secs(1))
        .unwrap();
    let (_, rehashed, cached) = cache.sha256(&file).unwrap();
    assert!(!cached);
    assert_ne!(rehashed, first);
    assert_eq!(cache.entries.len(), 1);
}

#[test]
fn building_on_a_cpu_only_onnx_runtime_names_what_is_missing() {
    let rt = ort();
    assert!(
        !rt.providers.tensorrt,
        "this test expects the CPU-only ONNX Runtime"
    );
    let dir = tempfile::tempdir().unwrap();
    let s = spec(&tiny_model(), &dir.path().join("engines"));
    let mut events = Vec::new();
    let e = build_engines(&s, rt, &mut |ev: BuildEvent| events.push(ev)).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, EngineError::NoTensorRt { .. }), "{msg}");
    assert!(
        msg.contains(&rt.library.display().to_string())
            && msg.contains("no TensorRT execution provider")
            && msg.contains("onnxruntime-gpu"),
        "{msg}"
    );
    assert!(events.is_empty(), "{events:?}");
    assert!(
        !s.engines_dir.exists(),
        "a refused build must not touch the engine directory"
    );
}

#[test]
fn a_merged_decoder_or_a_quantized_variant_is_refused_with_the_reason() {
    let rt = ort();
    let dir = tempfile::tempdir().unwrap();
    let merged = EngineSpec {
        merged_decoder: true,
        ..spec(&tiny_model(), dir.path())
    };
    let msg = build_engines(&merged, rt, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("If node") && msg.contains("model.decoder = \"split\""),
        "{msg}"
    );
    let quantized = EngineSpec {
        variant: "quantized".into(),
        ..spec(&tiny_model(), dir.path())
    };
    let msg = build_engines(&quantized, rt, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("\"quantized\"") && msg.contains("fp32, fp16"),
        "{msg}"
    );
}

#[test]
fn run_refuses_to_build_at_start_unless_configured() {
    let rt = ort();
    let dir = tempfile::tempdir().unwrap();
    let s = spec(&tiny_model(), &dir.path().join("engines"));
    let config = Path::new("/etc/florence-edge/florence-edge.toml");
    let msg = startup_check(&s, rt, false, Some(config), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("florence-edge build-engines --config /etc/florence-edge/florence-edge.toml")
            && msg.contains("have not been built"),
        "{msg}"
    );
    // Allowed to build: on this CPU-only library that fails, loudly.
    let e = startup_check(&s, rt, true, Some(config), &mut |_| {}).unwrap_err();
    assert!(matches!(e, EngineError::NoTensorRt { .. }), "{e}");
}

#[test]
fn probes_on_this_machine_report_onnx_runtime_and_say_why_the_rest_is_unknown() {
    let rt = ort();
    let host = HostFacts::probe(rt);
    // The library file is named after its version (libonnxruntime.so.1.31.1).
    let real = fs::canonicalize(&rt.library).unwrap();
    let name = real.file_name().unwrap().to_string_lossy().into_owned();
    let version = host.onnxruntime_version.known().unwrap().to_string();
    assert!(name.ends_with(&version), "{name} vs {version}");
    match &host.tensorrt_version {
        Probed::Known(v) => assert!(v.split('.').count() == 3, "{v}"),
        Probed::Unknown(why) => assert!(why.contains("libnvinfer.so.10"), "{why}"),
    }
    match &host.gpu_name {
        Probed::Known(n) => assert!(!n.is_empty()),
        Probed::Unknown(why) => assert!(why.contains("nvidia-smi"), "{why}"),
    }
}

/// The GPU run: builds the tiny model's engines, then checks that a start
/// finds them fresh and that opening the graphs with the manifest's settings
/// loads the engines instead of building new ones.
#[test]
#[ignore = "needs an NVIDIA GPU, TensorRT and a GPU build of ONNX Runtime (ORT_DYLIB_PATH)"]
fn builds_the_tiny_models_engines_and_loads_them_at_the_next_start() {
    use florence_edge::runtime::{open_session_with_tensorrt, Backend, SessionOptions};
    let rt = ort();
    let dir = tempfile::tempdir().unwrap();
    let s = EngineSpec {
        bounds: ProfileBounds {
            max_batch: 2,
            num_beams: 1,
            max_new_tokens: 32,
            max_prompt_tokens: 32,
        },
        ..spec(&tiny_model(), &dir.path().join("engines"))
    };
    let mut events = Vec::new();
    let report = build_engines(&s, rt, &mut |ev: BuildEvent| {
        eprintln!("{ev}");
        events.push(ev);
    })
    .unwrap();
    assert_eq!(report.manifest.graphs.len(), 5);
    let started = events
        .iter()
        .filter(|e| matches!(e, BuildEvent::Started { .. }))
        .count();
    assert_eq!(started, 5);
    for g in &report.manifest.graphs {
        assert!(!g.engine_files.is_empty(), "{:?}", g.graph);
    }
    let host = HostFacts::probe(rt);
    let fp = EngineFingerprint::current(&s, &host, &mut HashCache::default(), &mut |_| {}).unwrap();
    assert_eq!(check(&s.engines_dir, &fp).unwrap(), EngineCacheState::Fresh);

    let mut rebuilt = Vec::new();
    let manifest =
        startup_check(&s, rt, false, None, &mut |ev: BuildEvent| rebuilt.push(ev)).unwrap();
    assert!(
        !rebuilt
            .iter()
            .any(|e| matches!(e, BuildEvent::Started { .. })),
        "{rebuilt:?}"
    );

    let listing = |d: &Path| {
        let mut v: Vec<(String, SystemTime)> = fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().modified().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = listing(&s.engines_dir);
    let options = SessionOptions {
        backend: Backend::TensorRt,
        intra_threads: 0,
        tensorrt_fp16: s.fp16,
        engine_cache_dir: Some(s.engines_dir.clone()),
        ..SessionOptions::default()
    };
    for g in &manifest.graphs {
        let trt = manifest.session_options(g.graph).unwrap();
        open_session_with_tensorrt(rt, &tiny_model().join(&g.file), &options, &trt).unwrap();
    }
    assert_eq!(
        listing(&s.engines_dir),
        before,
        "opening the graphs wrote engine files"
    );
}
