//! Tensors kept where the backend computes: the row gather graph that
//! reorders the KV cache for beam search, the placement of the cache and
//! hidden states, and the vision encoder's input allocated by its session
//! and written in place. Runs on ONNX Runtime's CPU provider — the same code
//! keeps them in GPU memory on the CUDA and TensorRT backends (docs/GPU.md
//! says what has run on a GPU). Token parity of the IO-bound decoder loop
//! with the reference is tests/florence2_parity.rs.

// Test and benchmark code: a failed unwrap or expect is the check failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use florence_edge::florence2::{LoadOptions, Pixels, Strategy, Task};
use florence_edge::pipeline::Pipeline;
use florence_edge::preprocess::{ImageProcessorConfig, Preprocessor, RgbFrame};
use florence_edge::runtime::device::{Placement, RowGather, CUDA_DEVICE_ID};
use florence_edge::runtime::{self, Backend, OrtRuntime};
use ort::memory::AllocationDevice;
use ort::value::{DynValue, Tensor};

fn rt() -> &'static OrtRuntime {
    runtime::init(None).expect("ONNX Runtime loads (ORT_DYLIB_PATH or .local/onnxruntime)")
}

/// The gather as device memory gets it: the graph, here on the CPU
/// provider; and the direct row copy host memory gets.
fn cpu_gathers() -> [RowGather; 2] {
    let placement = Placement::for_backend(Backend::Cpu).expect("cpu placement");
    [
        RowGather::new(rt(), placement.clone(), 1).with_graph_on_host(true),
        RowGather::new(rt(), placement, 1),
    ]
}

/// A [rows, 2, 3] tensor whose every element is `row * 100 + position`.
fn rows_f32(rows: usize) -> (Vec<i64>, Vec<f32>) {
    let per_row = 6;
    let data = (0..rows * per_row)
        .map(|i| ((i / per_row) * 100 + i % per_row) as f32)
        .collect();
    (vec![rows as i64, 2, 3], data)
}

fn read<T: ort::value::PrimitiveTensorElementType + Copy>(v: &DynValue) -> (Vec<i64>, Vec<T>) {
    let (shape, data) = v.try_extract_tensor::<T>().expect("tensor of the type");
    (shape.to_vec(), data.to_vec())
}

#[test]
fn the_gather_graph_reorders_and_repeats_rows_of_float32_cache_tensors() {
    for mut g in cpu_gathers() {
        let (shape, data) = rows_f32(3);
        let v = Tensor::from_array((shape, data)).unwrap().into_dyn();
        let out = g.gather(&v, &[2, 0, 0, 1]).expect("gather");
        let (shape, data) = read::<f32>(&out);
        assert_eq!(shape, vec![4, 2, 3]);
        let firsts: Vec<f32> = data.chunks(6).map(|r| r[0]).collect();
        assert_eq!(firsts, vec![200.0, 0.0, 0.0, 100.0]);
        assert_eq!(&data[..6], &[200.0, 201.0, 202.0, 203.0, 204.0, 205.0]);
        assert!(
            g.placement().holds(&out),
            "the result stays in device memory"
        );
    }
}

#[test]
fn the_gather_graph_handles_float16_and_int64_of_any_rank() {
    for mut g in cpu_gathers() {
        let h: Vec<half::f16> = (0..8).map(|i| half::f16::from_f32(i as f32)).collect();
        let v = Tensor::from_array((vec![2i64, 2, 1, 2], h))
            .unwrap()
            .into_dyn();
        let (shape, data) = read::<half::f16>(&g.gather(&v, &[1, 1, 0]).expect("f16"));
        assert_eq!(shape, vec![3, 2, 1, 2]);
        let got: Vec<f32> = data.iter().map(|x| x.to_f32()).collect();
        assert_eq!(
            got,
            vec![4., 5., 6., 7., 4., 5., 6., 7., 0., 1., 2., 3.],
            "row 1 twice, then row 0"
        );
        let v = Tensor::from_array((vec![3i64, 2], vec![1i64, 2, 3, 4, 5, 6]))
            .unwrap()
            .into_dyn();
        let (shape, data) = read::<i64>(&g.gather(&v, &[2]).expect("i64"));
        assert_eq!((shape, data), (vec![1, 2], vec![5, 6]));
    }
}

#[test]
fn a_row_out_of_range_or_an_unsupported_element_type_is_a_named_error() {
    for mut g in cpu_gathers() {
        let (shape, data) = rows_f32(3);
        let v = Tensor::from_array((shape, data)).unwrap().into_dyn();
        let e = g.gather(&v, &[0, 3]).unwrap_err().to_string();
        assert!(e.contains("row 3") && e.contains("(3 rows)"), "{e}");
        let v = Tensor::from_array((vec![2i64], vec![1u8, 2]))
            .unwrap()
            .into_dyn();
        let e = g.gather(&v, &[0]).unwrap_err().to_string();
        assert!(e.contains("allowed: float32, float16, int64"), "{e}");
    }
}

#[test]
fn gpu_backends_keep_tensors_in_cuda_memory_and_read_logits_on_the_host() {
    rt();
    let cpu = Placement::for_backend(Backend::Cpu).unwrap();
    assert_eq!(cpu.device().allocation_device(), AllocationDevice::CPU);
    for backend in [Backend::Cuda, Backend::TensorRt] {
        let p = Placement::for_backend(backend).unwrap();
        assert_eq!(p.device().allocation_device(), AllocationDevice::CUDA);
        assert_eq!(p.device().device_id(), CUDA_DEVICE_ID);
        assert_eq!(p.host().allocation_device(), AllocationDevice::CPU);
        let host_value = Tensor::from_array((vec![1i64], vec![0f32]))
            .unwrap()
            .into_dyn();
        assert!(
            !p.holds(&host_value),
            "{backend}: a host tensor is not on the GPU"
        );
    }
    let e = Placement::for_backend(Backend::Auto)
        .unwrap_err()
        .to_string();
    assert!(e.contains("resolved"), "{e}");
}

fn tiny() -> (Pipeline, Preprocessor) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-florence2");
    let mut opts = LoadOptions::new(&dir);
    opts.backend = Backend::Cpu;
    opts.intra_threads = 1;
    let engine = Pipeline::load(&opts).expect("tiny model");
    let config = ImageProcessorConfig::from_json_file(dir.join("preprocessor_config.json"))
        .expect("preprocessor config");
    (engine, Preprocessor::new(config).expect("preprocessor"))
}

#[test]
fn pixels_written_into_the_session_allocated_tensor_give_the_tokens_of_host_pixels() {
    let (mut engine, mut pre) = tiny();
    assert!(
        engine.pixel_path().contains("input tensor"),
        "a float32 graph on the CPU is fed in place: {}",
        engine.pixel_path()
    );
    let (w, h) = (37u32, 23u32);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
    let frame = RgbFrame::packed(w, h, &rgb).unwrap();
    let mut host = vec![0f32; pre.image_len()];
    pre.preprocess_batch_into(&[frame], &mut host).unwrap();
    let (ph, pw) = pre.config().size;
    let prompt = engine
        .model
        .tokenizer
        .encode_prompt(&Task::Caption.prompt(None))
        .unwrap();
    for strategy in [Strategy::Greedy, Strategy::Beam { num_beams: 3 }] {
        let (from_host, _) = engine
            .model
            .generate(
                Pixels::Host {
                    values: &host,
                    shape: [1, 3, ph as usize, pw as usize],
                },
                std::slice::from_ref(&prompt),
                strategy,
                12,
            )
            .expect("host pixels");
        let mut t = engine.model.pixel_tensor(1).expect("pixel tensor");
        assert!(engine.model.placement().holds(&t.view().into_dyn()));
        let (shape, data) = t.try_extract_tensor_mut::<f32>().unwrap();
        assert_eq!(shape.to_vec(), vec![1, 3, ph as i64, pw as i64]);
        pre.preprocess_batch_into(&[frame], data).unwrap();
        let (in_place, _) = engine
            .model
            .generate(
                Pixels::Tensor(t.into_dyn()),
                std::slice::from_ref(&prompt),
                strategy,
                12,
            )
            .expect("tensor pixels");
        assert_eq!(from_host, in_place, "{strategy:?}");
        assert!(from_host[0].len() > 2, "something was generated");
    }
}

#[test]
fn a_pixel_tensor_of_the_wrong_shape_is_refused_by_shape() {
    let (mut engine, _) = tiny();
    let prompt = engine
        .model
        .tokenizer
        .encode_prompt(&Task::Caption.prompt(None))
        .unwrap();
    let t = Tensor::from_array((vec![1i64, 4, 2, 2], vec![0f32; 16]))
        .unwrap()
        .into_dyn();
    let e = engine
        .model
        .generate(Pixels::Tensor(t), &[prompt], Strategy::Greedy, 4)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[1, 4, 2, 2]") && e.contains("[images, 3, height, width]"),
        "{e}"
    );
}

#[test]
fn the_engine_takes_coordinates_from_the_generated_ids_and_agrees_with_the_text_parser() {
    use florence_edge::pipeline::{Decoding, TaskRequest};
    use florence_edge::postprocess::{post_process, ImageSize};
    let (mut engine, _) = tiny();
    assert!(
        engine.location_path().contains("generated ids (CPU)"),
        "{}",
        engine.location_path()
    );
    let (w, h) = (64u32, 48u32);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 13 % 256) as u8).collect();
    let frame = RgbFrame::packed(w, h, &rgb).unwrap();
    let tasks = [Task::ObjectDetection, Task::Ocr, Task::Caption];
    let items: Vec<_> = tasks
        .iter()
        .map(|&t| (frame, TaskRequest::new(t)))
        .collect();
    let decoding = Decoding {
        strategy: Strategy::Greedy,
        max_new_tokens: 24,
    };
    let results = engine.run(&items, decoding).expect("batch");
    assert_eq!(engine.route_counts().ids, tasks.len());
    for (r, task) in results.iter().zip(tasks) {
        let text = engine
            .model
            .tokenizer
            .decode_with_special_tokens(&r.token_ids)
            .unwrap();
        assert_eq!(r.raw_text, text, "{task}");
        let size = ImageSize {
            width: w,
            height: h,
        };
        let from_text =
            post_process(&text, florence_edge::pipeline::parse_kind(task), size).unwrap();
        let mut expected = serde_json::Map::new();
        expected.insert(
            task.token().to_string(),
            serde_json::to_value(&from_text).unwrap(),
        );
        assert_eq!(r.result, serde_json::Value::Object(expected), "{task}");
    }
}

/// The GPU check of this file (docs/GPU.md, "The kernels and device memory
/// in the engine"): the CUDA backend with both kernels and the cache in GPU
/// memory gives the CPU backend's tokens and results on the tiny model.
/// FP32 on both sides; a mismatch names the first differing token.
#[test]
#[ignore = "needs an NVIDIA GPU and a GPU build of ONNX Runtime 1.31 (onnxruntime-gpu)"]
fn the_cuda_backend_with_its_kernels_gives_the_cpu_results() {
    use florence_edge::pipeline::{Decoding, TaskRequest};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-florence2");
    let mut opts = LoadOptions::new(&dir);
    opts.backend = Backend::Cuda;
    // TF32 would let a benign argmax flip on the random model fail the
    // token comparison; FP32 maths matches the CPU.
    opts.cuda_tf32 = false;
    let mut gpu = Pipeline::load(&opts).expect("the tiny model on the CUDA backend");
    assert_eq!(
        gpu.model.placement().device().allocation_device(),
        AllocationDevice::CUDA
    );
    if cfg!(feature = "cuda") {
        assert!(gpu.pixel_path().contains("CUDA"), "{}", gpu.pixel_path());
        assert!(
            gpu.location_path().contains("CUDA"),
            "{}",
            gpu.location_path()
        );
    }
    let (mut cpu, _) = tiny();
    let (w, h) = (1920u32, 1080u32);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 31 % 253) as u8).collect();
    let frame = RgbFrame::packed(w, h, &rgb).unwrap();
    let items: Vec<_> = [Task::ObjectDetection, Task::Ocr, Task::Caption]
        .iter()
        .map(|&t| (frame, TaskRequest::new(t)))
        .collect();
    for strategy in [Strategy::Greedy, Strategy::Beam { num_beams: 3 }] {
        let decoding = Decoding {
            strategy,
            max_new_tokens: 32,
        };
        let on_gpu = gpu.run(&items, decoding).expect("CUDA batch");
        let on_cpu = cpu.run(&items, decoding).expect("CPU batch");
        for (g, c) in on_gpu.iter().zip(&on_cpu) {
            let first_difference = g
                .token_ids
                .iter()
                .zip(&c.token_ids)
                .position(|(a, b)| a != b);
            assert_eq!(
                g.token_ids, c.token_ids,
                "{} {strategy:?}: first different token at {first_difference:?}",
                g.task
            );
            assert_eq!(g.result, c.result, "{} {strategy:?}", g.task);
        }
    }
}
