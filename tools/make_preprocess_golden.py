#!/usr/bin/env python3
"""Golden data for src/preprocess: what Pillow and the Hugging Face image processor produce.

Writes tests/fixtures/preprocess/golden.json. Inputs are not stored: both sides generate them
from a seed with splitmix64 (see `seeded_bytes`, mirrored in src/preprocess/golden_tests.rs).

  /opt/fe-venv/bin/python tools/make_preprocess_golden.py            # write the fixture
  /opt/fe-venv/bin/python tools/make_preprocess_golden.py --bench    # time HF and Pillow

Reference semantics (transformers 5, CLIPImageProcessor on the Pillow path, use_fast=False):
PIL resize BICUBIC (reducing_gap=None) -> float32(float64(u8) * rescale) -> (x - mean) / std
in float32 -> CHW.
"""

import argparse
import hashlib
import json
import pathlib
import sys
import time

import numpy as np
import PIL
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "preprocess" / "golden.json"

GAMMA = np.uint64(0x9E3779B97F4A7C15)
FULL_BYTES_MAX = 4096

# The file onnx-community/Florence-2-base-ft ships (same as microsoft/Florence-2-base-ft).
FLORENCE2_CONFIG = {
    "crop_size": {"height": 768, "width": 768},
    "do_center_crop": False,
    "do_convert_rgb": None,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 768, "width": 768},
}

# (source w, h, output w, h, pattern, seed)
RESIZE_CASES = [
    (23, 17, 31, 29, "noise", 1),
    (31, 29, 23, 17, "noise", 2),
    (1, 1, 3, 2, "noise", 3),
    (2, 3, 5, 7, "noise", 4),
    (2, 3, 768, 768, "noise", 5),
    (1, 1, 768, 768, "noise", 6),
    (1000, 10, 3, 1, "noise", 7),
    (23, 17, 31, 29, "binary", 8),
    (45, 33, 17, 61, "binary", 9),
    (320, 577, 768, 768, "noise", 10),
    (577, 320, 100, 700, "noise", 11),
    (640, 480, 768, 768, "noise", 12),
    (1280, 720, 768, 768, "noise", 13),
    (1920, 1080, 768, 768, "noise", 14),
    (1920, 1080, 768, 768, "binary", 15),
    (1920, 1080, 768, 768, "smooth", 16),
    (3840, 2160, 768, 768, "noise", 17),
    (768, 500, 768, 768, "noise", 18),
    (500, 768, 768, 768, "noise", 19),
    (768, 768, 768, 768, "noise", 20),
    # Pillow 13 runs the vertical pass first when the height loses more than twice as many
    # pixels as the width: portrait cameras, and these.
    (1080, 1920, 768, 768, "noise", 21),
    (232, 66, 214, 25, "noise", 22),
    (193, 203, 296, 117, "binary", 23),
    (45, 300, 40, 20, "smooth", 24),
]

# Random small sizes (both passes, either order, up and down), fixed by this seed.
RANDOM_CASES = 80
RANDOM_SEED = 20261128


def random_cases():
    rng = np.random.default_rng(RANDOM_SEED)
    cases = []
    for i in range(RANDOM_CASES):
        sw, sh, dw, dh = (int(v) for v in rng.integers(1, 97, size=4))
        cases.append((sw, sh, dw, dh, ["noise", "binary", "smooth"][i % 3], 100 + i))
    return cases


# (source w, h, pattern, seed) run through the real HF processor with FLORENCE2_CONFIG.
PROCESSOR_CASES = [
    (23, 17, "noise", 31),
    (640, 480, "noise", 32),
    (1920, 1080, "smooth", 33),
    (768, 768, "noise", 34),
    (1080, 1920, "noise", 35),
]


def seeded_bytes(seed: int, n: int) -> np.ndarray:
    """splitmix64 outputs for counters 1, 2, ... as little-endian bytes, first n of them."""
    words = (n + 7) // 8
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.arange(1, words + 1, dtype=np.uint64) * GAMMA
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z.astype("<u8").view(np.uint8)[:n]


def make_image(w: int, h: int, pattern: str, seed: int) -> np.ndarray:
    raw = seeded_bytes(seed, w * h * 3).reshape(h, w, 3)
    if pattern == "noise":
        return raw.copy()
    if pattern == "binary":
        return ((raw & 1) * 255).astype(np.uint8)
    if pattern == "smooth":
        y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
        return ((x * 3 + y * 2 + c * 85 + (raw & 3)) & 255).astype(np.uint8)
    raise ValueError(pattern)


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def pil_resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img, "RGB").resize((w, h), Image.Resampling.BICUBIC, reducing_gap=None))


def hf_processor():
    # use_fast=False: the Pillow backend (CLIPImageProcessorPil in transformers 5; the slow
    # CLIPImageProcessor in transformers 4).
    kwargs = {k: v for k, v in FLORENCE2_CONFIG.items() if k != "image_processor_type"}
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        return CLIPImageProcessorPil(**kwargs)
    except ImportError:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor(**kwargs)


def numpy_lut() -> np.ndarray:
    cfg = FLORENCE2_CONFIG
    x = (np.arange(256).astype(np.float64) * cfg["rescale_factor"]).astype(np.float32)
    mean = np.array(cfg["image_mean"], dtype=np.float32)
    std = np.array(cfg["image_std"], dtype=np.float32)
    return (x[None, :] - mean[:, None]) / std[:, None]


def write_fixture() -> None:
    import torch
    import transformers

    resize = []
    named = len(RESIZE_CASES)
    for i, (sw, sh, dw, dh, pattern, seed) in enumerate(RESIZE_CASES + random_cases()):
        out = pil_resize(make_image(sw, sh, pattern, seed), dw, dh)
        assert out.shape == (dh, dw, 3) and out.dtype == np.uint8
        case = {"src": [sw, sh], "dst": [dw, dh], "pattern": pattern, "seed": seed,
                "sha256": sha256(out.tobytes())}
        if i < named and out.size <= FULL_BYTES_MAX:
            case["bytes_hex"] = out.tobytes().hex()
        resize.append(case)

    processor = hf_processor()
    processed = []
    for sw, sh, pattern, seed in PROCESSOR_CASES:
        img = Image.fromarray(make_image(sw, sh, pattern, seed), "RGB")
        pv = processor(images=img, return_tensors="np")["pixel_values"]
        assert pv.shape == (1, 3, 768, 768) and pv.dtype == np.float32, (pv.shape, pv.dtype)
        f16 = torch.from_numpy(pv).half().numpy()
        idx = [0, 1, 767, 768 * 384 + 383, 768 * 768 + 5, 2 * 768 * 768 + 768 * 767 + 767]
        flat = pv.reshape(-1)
        processed.append({
            "src": [sw, sh], "pattern": pattern, "seed": seed,
            "f32_sha256": sha256(pv.astype("<f4").tobytes()),
            "f16_sha256": sha256(f16.astype("<f2").tobytes()),
            "samples": [[i, int(flat[i:i + 1].view(np.uint32)[0])] for i in idx],
        })

    lut = numpy_lut()
    fixture = {
        "generator": "tools/make_preprocess_golden.py",
        "versions": {"pillow": PIL.__version__, "numpy": np.__version__,
                     "transformers": transformers.__version__, "torch": torch.__version__},
        "config": FLORENCE2_CONFIG,
        "lut_f32_bits": [[int(v) for v in row.view(np.uint32)] for row in lut],
        "resize": resize,
        "processor": processed,
    }
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes, {len(resize)} resize cases, "
          f"{len(processed)} processor cases)")


def bench(iterations: int) -> None:
    import transformers

    processor = hf_processor()
    print(f"pillow {PIL.__version__}, numpy {np.__version__}, transformers {transformers.__version__}, "
          f"{type(processor).__name__}; {iterations} iterations; "
          "wall median / best [thread CPU median], ms")
    for sw, sh in [(1920, 1080), (1280, 720), (640, 480), (768, 768), (1080, 1920)]:
        arr = make_image(sw, sh, "noise", 99)
        img = Image.fromarray(arr, "RGB")
        jobs = {
            "pil_resize": lambda: img.resize((768, 768), Image.Resampling.BICUBIC, reducing_gap=None),
            "hf_processor": lambda: processor(images=img, return_tensors="np"),
        }
        cells = []
        for name, job in jobs.items():
            job()
            wall, cpu = [], []
            for _ in range(iterations):
                c, t = time.thread_time(), time.perf_counter()
                job()
                wall.append(time.perf_counter() - t)
                cpu.append(time.thread_time() - c)
            cells.append(f"{name} {np.median(wall) * 1e3:.2f} / {min(wall) * 1e3:.2f} "
                         f"[{np.median(cpu) * 1e3:.2f}]")
        print(f"{sw}x{sh} -> 768x768: " + ", ".join(cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", action="store_true", help="time HF processor and Pillow resize")
    parser.add_argument("--iterations", type=int, default=15)
    args = parser.parse_args()
    if args.bench:
        bench(args.iterations)
    else:
        write_fixture()
    return 0


if __name__ == "__main__":
    sys.exit(main())
