#!/usr/bin/env python3
"""Golden outputs of the Hugging Face PyTorch reference for the tiny Florence-2.

Rebuilds the PyTorch model of tools/make_tiny_florence2.py (same size and seed,
so the same weights as the exported ONNX graphs), reads the tokenizer and the
preprocessor settings from the model directory, draws the synthetic test images,
and writes for every image x every task of DESIGN.md §3 the prompt, its ids,
a pixel_values summary, greedy and beam (3) token ids exactly as `generate`
returns them, the decoded text and the processor's post-processed result; plus
two batched cases.

Usage:
    tools/make_golden.py --model tests/fixtures/tiny-florence2 \
        --images tests/fixtures/images --out tests/fixtures/golden [--seed N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_florence2 as mk  # noqa: E402

MAX_NEW_TOKENS = 24
NUM_BEAMS = 3

# (file stem, width, height): different sizes and aspect ratios, one tiny, one
# already 768x768 (its resize is the identity).
IMAGES = [
    ("landscape_640x480", 640, 480),
    ("wide_427x240", 427, 240),
    ("portrait_320x577", 320, 577),
    ("square_768x768", 768, 768),
    ("tiny_23x17", 23, 17),
]

TEXT_INPUTS = {
    "<CAPTION_TO_PHRASE_GROUNDING>": "A green car parked in front of a yellow building.",
    "<REFERRING_EXPRESSION_SEGMENTATION>": "the red box",
    "<OPEN_VOCABULARY_DETECTION>": "a person with a helmet",
}
REGION_TASKS = ["<REGION_TO_SEGMENTATION>", "<REGION_TO_CATEGORY>", "<REGION_TO_DESCRIPTION>", "<REGION_TO_OCR>"]
TASKS = list(mk.TASK_PROMPTS_WITHOUT_INPUT) + list(mk.TASK_PROMPTS_WITH_INPUT)

POST_PROCESSOR_CONFIG = {
    "ocr": {
        "pattern": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>",
        "area_threshold": 0.0,
    },
    "phrase_grounding": {"banned_grounding_tokens": ["the image", "image", "the", "a", "an"]},
    "pure_text": {},
    "description_with_bboxes": {},
    "description_with_polygons": {},
    "polygons": {},
    "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}


def draw_image(w: int, h: int, seed: int) -> Image.Image:
    """Smooth gradients plus a few flat shapes: compressible PNGs whose resize
    still exercises the bicubic filter (edges) and every channel."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255.0 * xx / max(w - 1, 1)
    g = 255.0 * yy / max(h - 1, 1)
    b = 127.5 + 127.5 * np.sin(2 * math.pi * (xx + yy) / max(w + h, 2) * 2 + seed)
    img = np.stack([r, g, b], -1)
    # red box at the region-task box
    x0, y0, x1, y1 = region_box(w, h)
    img[y0:y1, x0:x1] = [220, 30, 30]
    # green disc
    cx, cy, rad = 0.7 * w, 0.35 * h, 0.15 * min(w, h) + 1
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= rad * rad] = [40, 200, 60]
    # dark bar near the bottom (text-like stripe)
    img[int(0.8 * h): int(0.8 * h) + max(1, h // 20), int(0.1 * w): int(0.9 * w)] = [20, 20, 20]
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def region_box(w: int, h: int):
    """Pixel box (x0, y0, x1, y1) used for the region tasks of an image."""
    return (w // 4, h // 4, max(w // 4 + 1, w // 2), max(h // 4 + 1, h // 2))


def quantize_box(box, w, h):
    """floor(v * 1000 / S) clamped to [0, 999] (DESIGN.md §3), checked against
    the processor's own quantizer."""
    out = []
    for v, s in zip(box, (w, h, w, h)):
        out.append(min(999, max(0, (v * 1000) // s)))
    return out


def make_processor(model_dir: Path, tokenizer):
    from transformers import Florence2Processor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    ip = CLIPImageProcessorPil(
        do_resize=pre["do_resize"],
        size=pre["size"],
        resample=pre["resample"],
        do_center_crop=pre["do_center_crop"],
        crop_size=pre["crop_size"],
        do_rescale=pre["do_rescale"],
        rescale_factor=pre["rescale_factor"],
        do_normalize=pre["do_normalize"],
        image_mean=pre["image_mean"],
        image_std=pre["image_std"],
        do_convert_rgb=True,
    )
    ip.image_seq_length = pre["image_seq_length"]
    return Florence2Processor(image_processor=ip, tokenizer=tokenizer, post_processor_config=POST_PROCESSOR_CONFIG)


def pixel_summary(pv: torch.Tensor) -> dict:
    flat = pv.detach().double().flatten()
    n = flat.numel()
    idx = [int(i) for i in np.linspace(0, n - 1, 64).round()]
    return {
        "shape": list(pv.shape),
        "dtype": str(pv.dtype).replace("torch.", ""),
        "sum": float(flat.sum()),
        "abs_sum": float(flat.abs().sum()),
        "first16": [float(v) for v in pv.flatten()[:16]],
        "strided_indices": idx,
        "strided_values": [float(pv.flatten()[i]) for i in idx],
    }


def task_prompt(task: str, w: int, h: int):
    """(processor text, text input, region dict or None)."""
    if task in TEXT_INPUTS:
        return task + TEXT_INPUTS[task], TEXT_INPUTS[task], None
    if task in REGION_TASKS:
        box = region_box(w, h)
        q = quantize_box(box, w, h)
        s = "".join(f"<loc_{v}>" for v in q)
        return task + s, s, {"pixel_box": list(box), "loc_bins": q}
    return task, None, None


def gaps_greedy(scores) -> list:
    out = []
    for s in scores:
        top = s.float().topk(2, dim=-1).values
        out.append((top[:, 0] - top[:, 1]).tolist())
    return out


class BeamGapRecorder:
    """Wraps transformers' beam step to record, per step and batch row, the
    smallest difference between adjacent candidates among the best
    2*num_beams+1 accumulated log-probs (the scores beam search ranks); -inf
    (banned, forced) and the -1e9 start scores of the copies of beam 0 are not
    real candidates."""

    def __init__(self, model):
        self.model = model
        self.gaps = []

    def __enter__(self):
        inner = self.model._get_top_k_continuations

        def wrapped(accumulated_log_probs, beams_to_keep, **kw):
            top = accumulated_log_probs.float().topk(beams_to_keep + 1, dim=-1).values
            for row in top:
                vals = row[row > -1e8]
                if vals.numel() > 1:
                    self.gaps.append(float((vals[:-1] - vals[1:]).min()))
            return inner(accumulated_log_probs=accumulated_log_probs, beams_to_keep=beams_to_keep, **kw)

        self.model._get_top_k_continuations = wrapped
        return self

    def __exit__(self, *exc):
        del self.model._get_top_k_continuations
        return False


def finite_min(rows):
    vals = [v for row in rows for v in row if math.isfinite(v)]
    return min(vals) if vals else None


def run_generate(model, inputs, num_beams, gaps=None):
    if num_beams > 1:
        with BeamGapRecorder(model) as rec:
            out = _generate(model, inputs, num_beams)
        if gaps is not None:
            gaps.extend(rec.gaps)
        return out
    return _generate(model, inputs, num_beams)


def _generate(model, inputs, num_beams):
    with torch.no_grad():
        out = model.generate(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs["pixel_values"],
            max_new_tokens=MAX_NEW_TOKENS,
            num_beams=num_beams,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    return out


def decode_result(proc, seqs, tasks, sizes):
    texts = proc.batch_decode(seqs, skip_special_tokens=False)
    parsed = [proc.post_process_generation(t, task=task, image_size=sz) for t, task, sz in zip(texts, tasks, sizes)]
    return texts, parsed


def strip_pad(ids, pad=1):
    ids = list(ids)
    while ids and ids[-1] == pad:
        ids.pop()
    return ids


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--seed", type=int, default=mk.DEFAULT_SEED)
    ap.add_argument("--only", help="comma separated image stems (debug)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    from transformers import AutoTokenizer

    model, mem_tok, _ = mk.build_model(args.size, args.seed)
    tok = AutoTokenizer.from_pretrained(str(args.model))
    assert tok.get_vocab() == mem_tok.get_vocab(), "tokenizer.json differs from the one the model was built with"
    assert tok.image_token_id == model.config.image_token_id
    proc = make_processor(args.model, tok)

    args.images.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "image_processor": type(proc.image_processor).__name__,
        "image_processor_note": "Pillow backend (slow path; torchvision is not installed, so transformers 5 "
        "falls back to CLIPImageProcessorPil): PIL bicubic resize of uint8 RGB, then rescale and normalize.",
        "attn_implementation": model.config._attn_implementation,
        "seed": args.seed,
        "size": args.size,
        "max_new_tokens": MAX_NEW_TOKENS,
        "num_beams": NUM_BEAMS,
        "generation_config": model.generation_config.to_diff_dict(),
    }
    index = {"environment": env, "images": [], "cases": [], "batches": []}
    unbatched = {}
    overall_greedy_gap = math.inf
    overall_beam_gap = math.inf
    stems = set(args.only.split(",")) if args.only else None
    for i, (stem, w, h) in enumerate(IMAGES):
        if stems and stem not in stems:
            continue
        img = draw_image(w, h, i)
        png = args.images / f"{stem}.png"
        img.save(png, optimize=True)
        img = Image.open(png).convert("RGB")
        index["images"].append({"file": png.name, "width": w, "height": h})
        cases = []
        for task in TASKS:
            text, text_input, region = task_prompt(task, w, h)
            prompt = proc._construct_prompts([text])[0]
            inputs = proc(text=text, images=img, return_tensors="pt")
            n_img = proc.num_image_tokens
            ids = inputs["input_ids"][0].tolist()
            assert ids[:n_img] == [tok.image_token_id] * n_img
            prompt_ids = ids[n_img:]
            assert prompt_ids == tok(prompt).input_ids, "processor ids != tokenizer.encode(prompt)"
            if region:
                # the processor's quantizer agrees with floor(v * 1000 / S)
                q = proc.post_processor.quantize(torch.tensor([region["pixel_box"]], dtype=torch.float64), (w, h))
                assert q[0].tolist() == region["loc_bins"], (q, region)
            g = run_generate(model, inputs, 1)
            bg = []
            b = run_generate(model, inputs, NUM_BEAMS, bg)
            gtexts, gparsed = decode_result(proc, g.sequences, [task], [(w, h)])
            btexts, bparsed = decode_result(proc, b.sequences, [task], [(w, h)])
            ggaps = gaps_greedy(g.scores)
            # step 0 is the forced BOS and the last may be the forced EOS: both
            # set every other score to -inf, so their gaps are infinite.
            gmin = finite_min(ggaps)
            bmin = min(bg) if bg else None
            overall_greedy_gap = min(overall_greedy_gap, gmin if gmin is not None else math.inf)
            overall_beam_gap = min(overall_beam_gap, bmin if bmin is not None else math.inf)
            case = {
                "image": png.name,
                "image_size": [w, h],
                "task": task,
                "text_input": text_input,
                "region": region,
                "processor_text": text,
                "prompt": prompt,
                "prompt_input_ids": prompt_ids,
                "encoder_attention_mask_len": len(ids),
                "pixel_values": pixel_summary(inputs["pixel_values"]),
                "max_new_tokens": MAX_NEW_TOKENS,
                "greedy": {
                    "token_ids": g.sequences[0].tolist(),
                    "text": gtexts[0],
                    "post_processed": gparsed[0],
                    "min_top1_top2_gap": gmin,
                    "top1_top2_gap_per_step": [row[0] for row in ggaps],
                },
                "beam": {
                    "num_beams": NUM_BEAMS,
                    "token_ids": b.sequences[0].tolist(),
                    "text": btexts[0],
                    "post_processed": bparsed[0],
                    "min_adjacent_candidate_gap": bmin,
                },
            }
            unbatched[(png.name, task)] = (g.sequences[0].tolist(), b.sequences[0].tolist())
            cases.append(case)
            print(f"{stem} {task}: greedy {len(case['greedy']['token_ids'])} ids gap {gmin:.3f} | beam gap {bmin:.3f}",
                  file=sys.stderr)
        path = args.out / f"{stem}.json"
        path.write_text(json.dumps({"environment": env, "cases": cases}, indent=1) + "\n")
        index["cases"].append(path.name)

    # Batches: the same task over three images, and mixed prompts (padding).
    if not stems:
        batches = [
            ("batch_same_task", [(IMAGES[0], "<OD>"), (IMAGES[2], "<OD>"), (IMAGES[4], "<OD>")]),
            ("batch_mixed_prompts", [(IMAGES[1], "<CAPTION>"), (IMAGES[0], "<OPEN_VOCABULARY_DETECTION>"),
                                     (IMAGES[3], "<REGION_TO_CATEGORY>")]),
        ]
        for name, members in batches:
            imgs, texts, tasks, sizes, files = [], [], [], [], []
            for (stem, w, h), task in members:
                files.append(f"{stem}.png")
                imgs.append(Image.open(args.images / f"{stem}.png").convert("RGB"))
                texts.append(task_prompt(task, w, h)[0])
                tasks.append(task)
                sizes.append((w, h))
            inputs = proc(text=texts, images=imgs, return_tensors="pt", padding=True)
            n_img = proc.num_image_tokens
            g = run_generate(model, inputs, 1)
            bg = []
            b = run_generate(model, inputs, NUM_BEAMS, bg)
            gtexts, gparsed = decode_result(proc, g.sequences, tasks, sizes)
            btexts, bparsed = decode_result(proc, b.sequences, tasks, sizes)
            rows = []
            for r in range(len(members)):
                ug, ub = unbatched[(files[r], tasks[r])]
                rows.append({
                    "image": files[r],
                    "image_size": list(sizes[r]),
                    "task": tasks[r],
                    "processor_text": texts[r],
                    "prompt_input_ids": inputs["input_ids"][r, n_img:].tolist(),
                    "attention_mask": inputs["attention_mask"][r, n_img:].tolist(),
                    "greedy": {"token_ids": g.sequences[r].tolist(), "text": gtexts[r], "post_processed": gparsed[r],
                               "equals_unbatched": strip_pad(g.sequences[r].tolist()) == strip_pad(ug)},
                    "beam": {"token_ids": b.sequences[r].tolist(), "text": btexts[r], "post_processed": bparsed[r],
                             "equals_unbatched": strip_pad(b.sequences[r].tolist()) == strip_pad(ub)},
                })
            gmin = finite_min(gaps_greedy(g.scores))
            bmin = min(bg) if bg else None
            batch = {
                "name": name,
                "padding_side": tok.padding_side,
                "pad_token_id": tok.pad_token_id,
                "max_new_tokens": MAX_NEW_TOKENS,
                "num_beams": NUM_BEAMS,
                "pixel_values_sum_per_row": [float(inputs["pixel_values"][r].double().sum()) for r in range(len(members))],
                "rows": rows,
                "greedy_min_top1_top2_gap": gmin,
                "beam_min_adjacent_candidate_gap": bmin,
            }
            overall_greedy_gap = min(overall_greedy_gap, gmin)
            overall_beam_gap = min(overall_beam_gap, bmin)
            (args.out / f"{name}.json").write_text(json.dumps(batch, indent=1) + "\n")
            index["batches"].append(f"{name}.json")
            print(name, [(row["greedy"]["equals_unbatched"], row["beam"]["equals_unbatched"]) for row in rows],
                  file=sys.stderr)

    index["min_greedy_top1_top2_gap"] = overall_greedy_gap
    index["min_beam_adjacent_candidate_gap"] = overall_beam_gap
    (args.out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    print(json.dumps({"min_greedy_gap": overall_greedy_gap, "min_beam_gap": overall_beam_gap}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
