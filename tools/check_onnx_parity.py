#!/usr/bin/env python3
"""Check that the exported ONNX graphs reproduce the PyTorch goldens token for token.

Needs only numpy, Pillow, tokenizers and onnxruntime (no torch): it is the same
pipeline the Rust core implements, written plainly in Python.

For every golden case it
  * preprocesses the PNG as DESIGN.md §3 says (Pillow bicubic to 768x768 on
    uint8, float32(u8 * rescale), (x - mean) / std, CHW) and compares with the
    golden pixel_values summary,
  * tokenizes the prompt with tokenizer.json and compares with the golden ids,
  * runs greedy decoding twice, with decoder_model + decoder_with_past_model and
    with decoder_model_merged, and compares the ids with the golden greedy ids;
and does the same for the batched goldens (greedy, padded prompts).

Usage:
    tools/check_onnx_parity.py --model tests/fixtures/tiny-florence2 \
        --golden tests/fixtures/golden --images tests/fixtures/images [--suffix _quantized]
Exit status 0 when everything matches.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from tokenizers import Tokenizer


class Florence2Onnx:
    def __init__(self, model_dir: Path, suffix: str = ""):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 2

        def load(name, sfx=suffix):
            path = model_dir / "onnx" / f"{name}{sfx}.onnx"
            if not path.exists():
                path = model_dir / "onnx" / f"{name}.onnx"
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        self.vision = load("vision_encoder")
        self.embed = load("embed_tokens", "")
        self.encoder = load("encoder_model")
        self.decoder = load("decoder_model")
        self.decoder_past = load("decoder_with_past_model")
        self.merged = load("decoder_model_merged", "")
        self.pre = json.loads((model_dir / "preprocessor_config.json").read_text())
        self.gen = json.loads((model_dir / "generation_config.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.past_inputs = [i for i in self.merged.get_inputs() if i.name.startswith("past_key_values")]
        self.n_layers = len(self.past_inputs) // 4
        shp = self.past_inputs[0].shape
        self.heads, self.head_dim = shp[1], shp[3]

    # -- preprocessing ------------------------------------------------------
    def pixel_values(self, images) -> np.ndarray:
        h, w = self.pre["size"]["height"], self.pre["size"]["width"]
        mean = np.array(self.pre["image_mean"], dtype=np.float32)
        std = np.array(self.pre["image_std"], dtype=np.float32)
        rescale = np.float32(self.pre["rescale_factor"])
        out = []
        for img in images:
            img = img.convert("RGB")
            if img.size != (w, h):
                img = img.resize((w, h), resample=Image.Resampling(self.pre["resample"]))
            a = np.asarray(img).astype(np.float32) * rescale
            a = (a - mean) / std
            out.append(a.transpose(2, 0, 1))
        return np.stack(out).astype(np.float32)

    # -- encoder ------------------------------------------------------------
    def encode(self, pixel_values, prompt_ids, prompt_mask):
        feats = self.vision.run(["image_features"], {"pixel_values": pixel_values})[0]
        emb = self.embed.run(["inputs_embeds"], {"input_ids": prompt_ids})[0]
        inputs_embeds = np.concatenate([feats, emb], axis=1)
        mask = np.concatenate([np.ones(feats.shape[:2], dtype=np.int64), prompt_mask], axis=1)
        hidden = self.encoder.run(["last_hidden_state"], {"attention_mask": mask, "inputs_embeds": inputs_embeds})[0]
        return hidden, mask

    # -- logits processing (transformers' order) ----------------------------
    def process(self, logits, seqs, max_length):
        n = self.gen["no_repeat_ngram_size"]
        for b, seq in enumerate(seqs):
            if n and len(seq) + 1 >= n:
                prefix = tuple(seq[len(seq) - n + 1:])
                for i in range(len(seq) - n + 1):
                    if tuple(seq[i:i + n - 1]) == prefix:
                        logits[b, seq[i + n - 1]] = -np.inf
            if len(seq) == 1:
                logits[b, :] = -np.inf
                logits[b, self.gen["forced_bos_token_id"]] = 0
            if len(seq) == max_length - 1:
                logits[b, :] = -np.inf
                logits[b, self.gen["forced_eos_token_id"]] = 0
        return logits

    def greedy(self, hidden, mask, max_new_tokens, merged: bool):
        batch = hidden.shape[0]
        start = self.gen["decoder_start_token_id"]
        eos, pad = self.gen["eos_token_id"], self.gen["pad_token_id"]
        seqs = [[start] for _ in range(batch)]
        done = [False] * batch
        max_length = 1 + max_new_tokens
        dec_kv = enc_kv = None
        for step in range(max_new_tokens):
            last = np.array([[s[-1]] for s in seqs], dtype=np.int64)
            emb = self.embed.run(["inputs_embeds"], {"input_ids": last})[0]
            if merged:
                feeds = {"encoder_attention_mask": mask, "encoder_hidden_states": hidden, "inputs_embeds": emb,
                         "use_cache_branch": np.array([step > 0])}
                for i in range(self.n_layers):
                    for kind, kv in (("decoder", dec_kv), ("encoder", enc_kv)):
                        for j, part in enumerate(("key", "value")):
                            name = f"past_key_values.{i}.{kind}.{part}"
                            if kv is None:
                                feeds[name] = np.zeros((batch, self.heads, 0, self.head_dim), np.float32)
                            else:
                                feeds[name] = kv[i][j]
                outs = self.merged.run(None, feeds)
                names = [o.name for o in self.merged.get_outputs()]
            else:
                sess = self.decoder if step == 0 else self.decoder_past
                declared = {i.name for i in sess.get_inputs()}
                feeds = {"encoder_attention_mask": mask, "encoder_hidden_states": hidden, "inputs_embeds": emb}
                if step > 0:
                    for i in range(self.n_layers):
                        for kind, kv in (("decoder", dec_kv), ("encoder", enc_kv)):
                            feeds[f"past_key_values.{i}.{kind}.key"] = kv[i][0]
                            feeds[f"past_key_values.{i}.{kind}.value"] = kv[i][1]
                feeds = {k: v for k, v in feeds.items() if k in declared}
                outs = sess.run(None, feeds)
                names = [o.name for o in sess.get_outputs()]
            res = dict(zip(names, outs))
            dec_kv = [(res[f"present.{i}.decoder.key"], res[f"present.{i}.decoder.value"]) for i in range(self.n_layers)]
            if step == 0:
                # encoder KV from the first step only; later steps return empty ones.
                enc_kv = [(res[f"present.{i}.encoder.key"], res[f"present.{i}.encoder.value"])
                          for i in range(self.n_layers)]
            logits = res["logits"][:, -1, :].astype(np.float32).copy()
            logits = self.process(logits, seqs, max_length)
            nxt = logits.argmax(axis=-1)
            for b in range(batch):
                seqs[b].append(pad if done[b] else int(nxt[b]))
                done[b] = done[b] or int(nxt[b]) == eos
            if all(done):
                break
        return seqs


    # -- beam search (transformers 5 vectorised beam search, ported) ---------
    def decoder_step(self, step, emb, hidden, mask, dec_kv, enc_kv, merged):
        batch = emb.shape[0]
        if merged:
            feeds = {"encoder_attention_mask": mask, "encoder_hidden_states": hidden, "inputs_embeds": emb,
                     "use_cache_branch": np.array([step > 0])}
            for i in range(self.n_layers):
                for kind, kv in (("decoder", dec_kv), ("encoder", enc_kv)):
                    for j, part in enumerate(("key", "value")):
                        name = f"past_key_values.{i}.{kind}.{part}"
                        feeds[name] = (np.zeros((batch, self.heads, 0, self.head_dim), np.float32)
                                       if kv is None else kv[i][j])
            sess = self.merged
        else:
            sess = self.decoder if step == 0 else self.decoder_past
            feeds = {"encoder_attention_mask": mask, "encoder_hidden_states": hidden, "inputs_embeds": emb}
            if step > 0:
                for i in range(self.n_layers):
                    for kind, kv in (("decoder", dec_kv), ("encoder", enc_kv)):
                        feeds[f"past_key_values.{i}.{kind}.key"] = kv[i][0]
                        feeds[f"past_key_values.{i}.{kind}.value"] = kv[i][1]
            declared = {i.name for i in sess.get_inputs()}
            feeds = {k: v for k, v in feeds.items() if k in declared}
        outs = sess.run(None, feeds)
        res = dict(zip([o.name for o in sess.get_outputs()], outs))
        new_dec = [(res[f"present.{i}.decoder.key"], res[f"present.{i}.decoder.value"]) for i in range(self.n_layers)]
        if step == 0:
            enc_kv = [(res[f"present.{i}.encoder.key"], res[f"present.{i}.encoder.value"]) for i in range(self.n_layers)]
        return res["logits"][:, -1, :].astype(np.float32), new_dec, enc_kv

    def beam_search(self, hidden, mask, max_new_tokens, num_beams, merged, gaps=None, decision_gaps=None):
        """Returns the sequences exactly as transformers' generate(num_beams=...) does
        (rows padded with pad_token_id to the longest). `gaps` collects, per step,
        the smallest difference between adjacent candidates among the best
        2*num_beams+1 accumulated scores (how close the ranking came to a tie);
        `decision_gaps` only the gaps at ranks where a decision is made (kept
        candidates, top num_beams, continuing beams, kept finished hypotheses,
        the best one)."""
        if decision_gaps is None:
            decision_gaps = []
        batch = hidden.shape[0]
        nb = num_beams
        start = self.gen["decoder_start_token_id"]
        eos, pad = self.gen["eos_token_id"], self.gen["pad_token_id"]
        length_penalty = float(self.gen.get("length_penalty", 1.0))
        early_stopping = self.gen.get("early_stopping", False)
        max_length = 1 + max_new_tokens
        keep = 2 * nb  # (1 eos token + 1) * num_beams
        # every beam reads the same encoder states
        hidden_b = np.repeat(hidden, nb, axis=0)
        mask_b = np.repeat(mask, nb, axis=0)
        running = np.full((batch, nb, max_length), pad, dtype=np.int64)
        running[:, :, 0] = start
        sequences = running.copy()
        running_scores = np.zeros((batch, nb), np.float32)
        running_scores[:, 1:] = -1e9
        beam_scores = np.full((batch, nb), -1e9, np.float32)
        finished = np.zeros((batch, nb), bool)
        heuristic_unsat = np.ones((batch, 1), bool)
        running_bi = np.full((batch, nb, max_length - 1), -1, np.int64)
        beam_indices = running_bi.copy()
        cur_len = 1
        dec_kv = enc_kv = None
        step = 0
        while True:
            flat = running[:, :, :cur_len].reshape(batch * nb, cur_len)
            emb = self.embed.run(["inputs_embeds"], {"input_ids": flat[:, -1:].copy()})[0]
            logits, dec_kv, enc_kv = self.decoder_step(step, emb, hidden_b, mask_b, dec_kv, enc_kv, merged)
            m = logits.max(axis=-1, keepdims=True)
            logp = logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))
            logp = self.process(logp, [list(r) for r in flat], max_length)
            vocab = logp.shape[-1]
            acc = (logp.reshape(batch, nb, vocab) + running_scores[:, :, None]).reshape(batch, nb * vocab)
            # stable top-k like torch.topk on CPU: by score, ties by index
            order = np.argsort(-acc, axis=-1, kind="stable")
            top_idx = order[:, :keep]
            top_lp = np.take_along_axis(acc, top_idx, axis=-1)
            if gaps is not None:
                cand = np.take_along_axis(acc, order[:, :keep + 1], axis=-1)
                # boundaries that decide something: which candidates are kept
                # (keep), which count as the top num_beams (finished or not)
                for row in cand:
                    for i in (nb - 1, keep - 1):
                        if row[i + 1] > -1e8:
                            decision_gaps.append(float(row[i] - row[i + 1]))
                    vals = row[row > -1e8]
                    if len(vals) > 1:
                        gaps.append(float(np.min(vals[:-1] - vals[1:])))
            src_beam = top_idx // vocab
            tok = top_idx % vocab
            top_seq = np.take_along_axis(running, src_beam[:, :, None], axis=1).copy()
            top_bi = np.take_along_axis(running_bi, src_beam[:, :, None], axis=1).copy()
            top_seq[:, :, cur_len] = tok
            top_bi[:, :, cur_len - 1] = src_beam + np.arange(batch)[:, None] * nb
            hits = (tok == eos) | (cur_len + 1 >= max_length)
            # running beams for the next step
            run_lp = top_lp + hits.astype(np.float32) * -1.0e9
            srt = -np.sort(-run_lp, axis=-1)
            for row in srt:  # which open candidates continue
                if row[nb] > -1e8:
                    decision_gaps.append(float(row[nb - 1] - row[nb]))
            nxt = np.argsort(-run_lp, axis=-1, kind="stable")[:, :nb]
            running = np.take_along_axis(top_seq, nxt[:, :, None], axis=1)
            running_scores = np.take_along_axis(run_lp, nxt, axis=-1)
            running_bi = np.take_along_axis(top_bi, nxt[:, :, None], axis=1)
            # finished hypotheses
            top_mask = np.zeros(keep, bool)
            top_mask[:nb] = True
            just = hits & top_mask[None, :]
            fin_lp = top_lp / ((cur_len + 1 - 1) ** length_penalty)
            full = np.all(finished, axis=-1, keepdims=True) & (early_stopping is True)
            fin_lp = fin_lp + full.astype(np.float32) * -1.0e9
            fin_lp = fin_lp + (~heuristic_unsat).astype(np.float32) * -1.0e9
            fin_lp = fin_lp + (~just).astype(np.float32) * -1.0e9
            m_seq = np.concatenate([sequences, top_seq], axis=1)
            m_sc = np.concatenate([beam_scores, fin_lp.astype(np.float32)], axis=1)
            m_bi = np.concatenate([beam_indices, top_bi], axis=1)
            m_fin = np.concatenate([finished, just], axis=1)
            srt = -np.sort(-m_sc, axis=-1)
            for row in srt:  # which finished hypotheses are kept, and the best one
                for i in (0, nb - 1):
                    if row[i + 1] > -1e8:
                        decision_gaps.append(float(row[i] - row[i + 1]))
            sel = np.argsort(-m_sc, axis=-1, kind="stable")[:, :nb]
            sequences = np.take_along_axis(m_seq, sel[:, :, None], axis=1)
            beam_scores = np.take_along_axis(m_sc, sel, axis=-1)
            beam_indices = np.take_along_axis(m_bi, sel[:, :, None], axis=1)
            finished = np.take_along_axis(m_fin, sel, axis=-1)
            # reorder only the decoder KV by beam
            flat_src = running_bi[:, :, cur_len - 1].reshape(-1)
            dec_kv = [(k[flat_src], v[flat_src]) for k, v in dec_kv]
            cur_len += 1
            step += 1
            # early-stop heuristic and loop condition
            if early_stopping == "never" and length_penalty > 0.0:
                best_len = max_length - 1
            else:
                best_len = cur_len - 1
            best_running = running_scores[:, :1] / (best_len ** length_penalty)
            worst_fin = np.where(finished, beam_scores.min(axis=1, keepdims=True), -1.0e9)
            heuristic_unsat = heuristic_unsat & np.any(best_running > worst_fin, axis=-1, keepdims=True)
            improvement = np.any(heuristic_unsat)
            open_beam = not (np.all(finished) and early_stopping is True)
            valid = not np.all(hits)
            if not (improvement and open_beam and valid) or cur_len >= max_length:
                break
        gen_len = int(((beam_indices[:, 0, :] + 1) != 0).sum(axis=1).max())
        return sequences[:, 0, :1 + gen_len].tolist()


def check(args) -> int:
    m = Florence2Onnx(args.model, args.suffix)
    index = json.loads((args.golden / "index.json").read_text())
    failures = 0
    total = 0
    beam_gaps = []
    decision_gaps = []
    pix_err = 0.0
    for name in index["cases"]:
        doc = json.loads((args.golden / name).read_text())
        for case in doc["cases"]:
            img = Image.open(args.images / case["image"])
            pv = m.pixel_values([img])
            pvs = case["pixel_values"]
            flat = pv.reshape(-1)
            err = max(abs(float(flat[i]) - v) for i, v in zip(pvs["strided_indices"], pvs["strided_values"]))
            err = max(err, max(abs(float(a) - b) for a, b in zip(flat[:16], pvs["first16"])))
            pix_err = max(pix_err, err)
            ids = m.tokenizer.encode(case["prompt"]).ids
            if ids != case["prompt_input_ids"]:
                print(f"FAIL prompt ids {case['image']} {case['task']}: {ids} != {case['prompt_input_ids']}")
                failures += 1
            prompt = np.array([case["prompt_input_ids"]], dtype=np.int64)
            hidden, mask = m.encode(pv, prompt, np.ones_like(prompt))
            for merged in (False, True):
                total += 1
                got = m.greedy(hidden, mask, case["max_new_tokens"], merged)[0]
                want = case["greedy"]["token_ids"]
                if got != want:
                    failures += 1
                    print(f"FAIL greedy {'merged' if merged else 'split'} {case['image']} {case['task']}\n  got  {got}\n  want {want}")
            if not args.no_beam:
                total += 1
                got = m.beam_search(hidden, mask, case["max_new_tokens"], case["beam"]["num_beams"], False, beam_gaps, decision_gaps)[0]
                want = case["beam"]["token_ids"]
                if got != want:
                    failures += 1
                    print(f"FAIL beam split {case['image']} {case['task']}\n  got  {got}\n  want {want}")
    for name in index["batches"]:
        doc = json.loads((args.golden / name).read_text())
        rows = doc["rows"]
        imgs = [Image.open(args.images / r["image"]) for r in rows]
        pv = m.pixel_values(imgs)
        width = max(len(r["prompt_input_ids"]) for r in rows)
        ids = np.array([r["prompt_input_ids"] for r in rows], dtype=np.int64)
        att = np.array([r["attention_mask"] for r in rows], dtype=np.int64)
        assert ids.shape[1] == width
        hidden, mask = m.encode(pv, ids, att)
        for merged in (False, True):
            total += 1
            got = m.greedy(hidden, mask, doc["max_new_tokens"], merged)
            want = [r["greedy"]["token_ids"] for r in rows]
            if got != want:
                failures += 1
                print(f"FAIL batch greedy {name} {'merged' if merged else 'split'}\n  got  {got}\n  want {want}")
        if not args.no_beam:
            total += 1
            got = m.beam_search(hidden, mask, doc["max_new_tokens"], doc["num_beams"], True, beam_gaps, decision_gaps)
            want = [r["beam"]["token_ids"] for r in rows]
            if got != want:
                failures += 1
                print(f"FAIL batch beam merged {name}\n  got  {got}\n  want {want}")
    print(json.dumps({"suffix": args.suffix or "fp32", "decodes_checked": total, "mismatches": failures,
                      "max_pixel_values_abs_error": pix_err,
                      "onnx_beam_min_adjacent_candidate_gap": min(beam_gaps) if beam_gaps else None,
                      "onnx_beam_min_decision_gap": min(decision_gaps) if decision_gaps else None}))
    return 1 if failures else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--golden", required=True, type=Path)
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--no-beam", action="store_true", help="greedy only")
    ap.add_argument("--suffix", default="", help="graph variant, e.g. _quantized (expected to drift)")
    return check(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
