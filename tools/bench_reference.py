#!/usr/bin/env python3
"""Time the Hugging Face reference and a plain Python + onnxruntime pipeline on CPU.

For a model directory written by tools/make_tiny_florence2.py (the PyTorch
model is rebuilt from the same --size and --seed), on one synthetic 1920x1080
image, greedy decoding with max_new_tokens 32, it times per stage:
image processor, vision encoder, text encoder, one decoder step (mean over the
steps of a KV-cached loop) and the whole `generate`, for the eager and the sdpa
attention implementations; then the same stages over the exported FP32 ONNX
graphs (decoder_model + decoder_with_past_model). Prints one JSON document.

Usage:
    tools/bench_reference.py --model DIR --size tiny|base [--seed N] [--repeat 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_onnx_parity as cp  # noqa: E402
import make_golden as mg  # noqa: E402
import make_tiny_florence2 as mk  # noqa: E402

TASK = "<OD>"


def timed(fn, repeat):
    """Median wall time in ms over `repeat` runs after one warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def bench_torch(model, proc, image, max_new_tokens, repeat, attn):
    model.set_attn_implementation(attn)
    res = {}
    ms, inputs = timed(lambda: proc(text=TASK, images=image, return_tensors="pt"), repeat)
    res["image_processor_ms"] = ms
    with torch.no_grad():
        ms, feats = timed(lambda: model.get_image_features(inputs["pixel_values"]).pooler_output, repeat)
        res["vision_encoder_ms"] = ms
        lm = model.model.language_model
        n_img = proc.num_image_tokens
        emb = lm.get_input_embeddings()(inputs["input_ids"])
        emb = torch.cat([feats, emb[:, n_img:]], dim=1)
        ms, enc = timed(lambda: lm.encoder(inputs_embeds=emb, attention_mask=inputs["attention_mask"]), repeat)
        res["encoder_ms"] = ms

        def decode_loop():
            from transformers.cache_utils import DynamicCache, EncoderDecoderCache

            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            ids = torch.tensor([[2]])
            t_steps = []
            for _ in range(max_new_tokens):
                t0 = time.perf_counter()
                out = model(encoder_outputs=enc, attention_mask=inputs["attention_mask"], decoder_input_ids=ids,
                            cache=cache, use_cache=True)
                ids = out.logits[:, -1:].argmax(-1)
                t_steps.append((time.perf_counter() - t0) * 1e3)
            return t_steps

        steps = decode_loop()
        steps = decode_loop()
        res["decoder_step_ms_mean"] = statistics.mean(steps[1:])
        res["decoder_first_step_ms"] = steps[0]

        def gen():
            return model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)

        ms, out = timed(gen, repeat)
        res["generate_ms"] = ms
        res["generated_tokens"] = int(out.shape[1] - 1)
        res["token_ids"] = out[0].tolist()
    return res


def bench_onnx(model_dir, image, max_new_tokens, repeat, threads, tok):
    m = cp.Florence2Onnx(model_dir)
    res = {}
    ms, pv = timed(lambda: m.pixel_values([image]), repeat)
    res["image_processor_ms"] = ms
    ms, feats = timed(lambda: m.vision.run(["image_features"], {"pixel_values": pv})[0], repeat)
    res["vision_encoder_ms"] = ms
    prompt = np.array([tok(mk.TASK_PROMPTS_WITHOUT_INPUT[TASK]).input_ids], dtype=np.int64)

    def enc():
        emb = m.embed.run(["inputs_embeds"], {"input_ids": prompt})[0]
        x = np.concatenate([feats, emb], axis=1)
        mask = np.ones(x.shape[:2], dtype=np.int64)
        return m.encoder.run(["last_hidden_state"], {"attention_mask": mask, "inputs_embeds": x})[0], mask

    ms, (hidden, mask) = timed(enc, repeat)
    res["embed_and_encoder_ms"] = ms
    ms, seqs = timed(lambda: m.greedy(hidden, mask, max_new_tokens, merged=False), repeat)
    n = len(seqs[0]) - 1
    res["greedy_decode_ms"] = ms
    res["generated_tokens"] = n
    res["decoder_step_ms_mean"] = ms / max(n, 1)

    def whole():
        p = m.pixel_values([image])
        f = m.vision.run(["image_features"], {"pixel_values": p})[0]
        emb = m.embed.run(["inputs_embeds"], {"input_ids": prompt})[0]
        x = np.concatenate([f, emb], axis=1)
        mk_ = np.ones(x.shape[:2], dtype=np.int64)
        h = m.encoder.run(["last_hidden_state"], {"attention_mask": mk_, "inputs_embeds": x})[0]
        return m.greedy(h, mk_, max_new_tokens, merged=False)

    ms, seqs = timed(whole, repeat)
    res["whole_pipeline_ms"] = ms
    res["token_ids"] = seqs[0]
    res["onnxruntime"] = __import__("onnxruntime").__version__
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--size", default="tiny", choices=sorted(mk.SIZES))
    ap.add_argument("--seed", type=int, default=mk.DEFAULT_SEED)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    model, _, _ = mk.build_model(args.size, args.seed)
    tok = AutoTokenizer.from_pretrained(str(args.model))
    proc = mg.make_processor(args.model, tok)
    image = mg.draw_image(1920, 1080, 0)
    report = {
        "model_dir": str(args.model),
        "size": args.size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "image": "synthetic 1920x1080",
        "task": TASK,
        "max_new_tokens": args.max_new_tokens,
        "repeat_median_of": args.repeat,
        "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "note": "stages in ms; the decoder step of the torch loop includes lm_head; "
        "whole generate includes vision + encoder.",
    }
    for attn in ("eager", "sdpa"):
        report[f"torch_{attn}"] = bench_torch(model, proc, image, args.max_new_tokens, args.repeat, attn)
    report["onnxruntime_fp32"] = bench_onnx(args.model, image, args.max_new_tokens, args.repeat, args.threads, tok)
    # Same greedy tokens from both? (transformers' generate applies the
    # generation config's no_repeat_ngram / forced BOS/EOS, as the ONNX loop does.)
    ref = report["torch_sdpa"].pop("token_ids")
    report["torch_eager"].pop("token_ids")
    report["onnxruntime_fp32"]["tokens_equal_torch"] = report["onnxruntime_fp32"].pop("token_ids") == ref
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
