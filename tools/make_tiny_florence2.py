#!/usr/bin/env python3
"""Build a random-weight Florence-2 and export it in the onnx-community layout.

The model is transformers' native Florence-2 (``Florence2ForConditionalGeneration``)
with random weights drawn from a fixed seed, so the same command always writes the
same files. ``--size tiny`` gives a 243k-parameter model (a few MB of graphs) that keeps every
contract dimension of the real one (768x768 input, 577 image tokens, the real
special-token order, the real tensor names); ``--size base`` gives the real
Florence-2-base shapes for benchmarks.

Usage:
    tools/make_tiny_florence2.py --out tests/fixtures/tiny-florence2 [--size tiny|base] [--seed N]

The written directory holds:
    config.json generation_config.json preprocessor_config.json
    tokenizer.json tokenizer_config.json special_tokens_map.json
    onnx/{vision_encoder,embed_tokens,encoder_model,decoder_model,
          decoder_with_past_model,decoder_model_merged}.onnx
    onnx/*_quantized.onnx (dynamic int8)

The PyTorch model is rebuilt in memory by ``build_model`` (same seed, same
weights) by tools/make_golden.py and tools/check_onnx_parity.py; no PyTorch
weights are written, so the committed fixture stays small.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from transformers import (  # noqa: E402
    BartConfig,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2VisionConfig,
    GenerationConfig,
)

# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

# Florence-2's processor adds these, in this order, after the BART vocabulary
# (microsoft/Florence-2-*: processing_florence2.py, ``tokens_to_add``).
FLORENCE_ADDED_TOKENS = (
    ["<od>", "</od>", "<ocr>", "</ocr>"]
    + [f"<loc_{i}>" for i in range(1000)]
    + [
        "<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>",
        "<grounding>", "</grounding>", "<seg>", "</seg>", "<sep>",
        "<region_cap>", "</region_cap>", "<region_to_desciption>",
        "</region_to_desciption>", "<proposal>", "</proposal>",
        "<poly>", "</poly>", "<and>",
    ]
)
# transformers 5 (florence-community/Florence-2-*) appends one more special
# token that its processor uses as the image placeholder.
IMAGE_TOKEN = "<image>"

TASK_PROMPTS_WITHOUT_INPUT = {
    "<CAPTION>": "What does the image describe?",
    "<DETAILED_CAPTION>": "Describe in detail what is shown in the image.",
    "<MORE_DETAILED_CAPTION>": "Describe with a paragraph what is shown in the image.",
    "<OD>": "Locate the objects with category name in the image.",
    "<DENSE_REGION_CAPTION>": "Locate the objects in the image, with their descriptions.",
    "<REGION_PROPOSAL>": "Locate the region proposals in the image.",
    "<OCR>": "What is the text in the image?",
    "<OCR_WITH_REGION>": "What is the text in the image, with regions?",
}
TASK_PROMPTS_WITH_INPUT = {
    "<CAPTION_TO_PHRASE_GROUNDING>": "Locate the phrases in the caption: {input}",
    "<REFERRING_EXPRESSION_SEGMENTATION>": "Locate {input} in the image with mask",
    "<REGION_TO_SEGMENTATION>": "What is the polygon mask of region {input}",
    "<OPEN_VOCABULARY_DETECTION>": "Locate {input} in the image.",
    "<REGION_TO_CATEGORY>": "What is the region {input}?",
    "<REGION_TO_DESCRIPTION>": "What does the region {input} describe?",
    "<REGION_TO_OCR>": "What text is in the region {input}?",
}

# Training text for the tiny byte-level BPE: plain English about scenes a
# camera sees, plus every task prompt, so prompts tokenize into a mix of whole
# words and pieces.
CORPUS = """
A green car parked in front of a yellow building. A person with a helmet rides a bicycle
down the street. Two dogs play on the grass near a wooden fence. The image shows a kitchen
with a white table, four chairs and a window. A man in a red jacket is standing next to a
truck. There is a stop sign at the corner of the road, and a bus is waiting at the light.
A cat sleeps on the sofa in the living room. The camera looks at the front door of a house;
a package lies on the steps. Cars and trucks drive on the highway at night. A woman walks
her dog along the river. The sky is blue with a few white clouds. Trees and bushes line the
path in the park. A delivery van stops in the parking lot. People sit at tables outside a
cafe. The text on the sign says open. A red box, a blue circle and a green triangle are
drawn on a grey background. The shelf holds books, bottles and a small plant. Snow covers
the roof of the garage. A boat floats on the lake under a bridge. Children run across the
playground. The light is on in the window of the second floor. A forklift moves pallets in
the warehouse. A helmet, a vest and gloves hang on the wall. The gate is open and a car is
coming in. Numbers on the license plate are hard to read.
"""
EXAMPLE_INPUTS = [
    "a person with a helmet",
    "A green car parked in front of a yellow building.",
    "the red box",
    "person",
]


def train_tokenizer(vocab_size: int, pad_base_to: int | None = None):
    """Byte-level BPE in BART's layout: <s>=0 <pad>=1 </s>=2 <unk>=3 ... <mask>,
    RobertaProcessing (BOS ... EOS), then Florence-2's added tokens in order."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [CORPUS] * 3
    texts += list(TASK_PROMPTS_WITHOUT_INPUT.values()) * 4
    texts += [p.format(input=x) for p in TASK_PROMPTS_WITH_INPUT.values() for x in EXAMPLE_INPUTS]
    tok.train_from_iterator(texts, trainer=trainer)
    if pad_base_to is not None:
        # Real-size vocabulary: unreachable filler pieces up to BART's 50264
        # base entries, so that <mask>, <od>, <loc_N>... get the real ids and the
        # embedding / lm_head have the real shape (51289 + <image>).
        spec = json.loads(tok.to_str())
        vocab = spec["model"]["vocab"]
        n = len(vocab)
        for i in range(n, pad_base_to):
            vocab[f"\u0120unused{i}"] = i
        tok = Tokenizer.from_str(json.dumps(spec))
    # BART's <mask> closes the base vocabulary.
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False)])
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False
    )
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in FLORENCE_ADDED_TOKENS + [IMAGE_TOKEN]]
    )
    assert [tok.token_to_id(t) for t in ["<s>", "<pad>", "</s>", "<unk>"]] == [0, 1, 2, 3]
    return tok


def hf_tokenizer(tok):
    """Wrap the `tokenizers` object as a transformers BART fast tokenizer."""
    from transformers import BartTokenizerFast

    with tempfile.TemporaryDirectory() as d:
        tok.save(os.path.join(d, "tokenizer.json"))
        hf = BartTokenizerFast(
            tokenizer_file=os.path.join(d, "tokenizer.json"),
            bos_token="<s>",
            eos_token="</s>",
            sep_token="</s>",
            cls_token="<s>",
            unk_token="<unk>",
            pad_token="<pad>",
            mask_token="<mask>",
            add_prefix_space=False,
            model_max_length=1024,
            extra_special_tokens={"image_token": IMAGE_TOKEN},
        )
    return hf


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    name: str
    d_model: int
    heads: int
    ffn: int
    enc_layers: int
    dec_layers: int
    vis_embed: tuple
    vis_heads: tuple
    vis_groups: tuple
    vis_depths: tuple
    bpe_vocab: int


SIZES = {
    "tiny": Size("tiny", 32, 2, 64, 2, 2, (16, 16, 32, 32), (1, 2, 2, 2), (1, 2, 2, 2), (1, 1, 1, 1), 400),
    # Florence-2-base: DaViT (128,256,512,1024) depths (1,1,9,1), BART 6+6 layers d=768.
    "base": Size("base", 768, 12, 3072, 6, 6, (128, 256, 512, 1024), (4, 8, 16, 32), (4, 8, 16, 32), (1, 1, 9, 1), 400),
}

# Logit shaping of the tiny model (see shape_logits).
LOGIT_SCALE = {"tiny": 8.0, "base": 1.0}
CLASS_SCORE = {"text": 30.0, "byte": 12.0, "loc": 10.0, "eos": 133.0, "never": -200.0}
POSITION_STD = 1.0
ATTN_SHARPEN = {"encoder_q": 3.0, "cross_q": 4.0, "cross_out": 3.0}


def florence_config(size: Size, vocab_size: int, image_token_id: int) -> Florence2Config:
    vision = Florence2VisionConfig(
        depths=list(size.vis_depths),
        embed_dim=list(size.vis_embed),
        num_heads=list(size.vis_heads),
        num_groups=list(size.vis_groups),
        window_size=12,
        projection_dim=size.d_model,
        drop_path_rate=0.0,
        max_position_embeddings=50,
        max_temporal_embeddings=100,
    )
    text = BartConfig(
        vocab_size=vocab_size,
        d_model=size.d_model,
        encoder_layers=size.enc_layers,
        decoder_layers=size.dec_layers,
        encoder_attention_heads=size.heads,
        decoder_attention_heads=size.heads,
        encoder_ffn_dim=size.ffn,
        decoder_ffn_dim=size.ffn,
        max_position_embeddings=1024,
        activation_function="gelu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        scale_embedding=False,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_bos_token_id=0,
        forced_eos_token_id=2,
        tie_word_embeddings=True,
    )
    return Florence2Config(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=image_token_id,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )


def generation_config() -> GenerationConfig:
    return GenerationConfig(
        bos_token_id=0,
        decoder_start_token_id=2,
        early_stopping=True,
        eos_token_id=2,
        forced_bos_token_id=0,
        forced_eos_token_id=2,
        no_repeat_ngram_size=3,
        num_beams=3,
        pad_token_id=1,
    )


def shape_logits(model, tok, size_name: str, gen: torch.Generator) -> None:
    """Give the random model a preference per token class and well separated logits.

    Random weights give near-uniform logits: near ties make greedy/beam parity
    between runtimes a coin flip, and the model would hardly ever say a run of
    four <loc_N> that the post-processors turn into boxes. The decoder is
    post-LN BART, so its last LayerNorm ends every output state; with tied
    embeddings each token's logit is ``(gamma * x_hat + beta) . E[token]``.
    ``gamma`` gets random signs (so a token does not simply predict itself)
    times LOGIT_SCALE (large gaps against float rounding); one dimension of
    ``beta`` times column 0 of E carries a score per token class: merged text
    pieces, printable single bytes, <loc_N>, </s> (sequences end now and then),
    and a strongly negative score for everything that must never come out
    (pad, unk, mask, task tokens, <image>, unprintable bytes).
    """
    if size_name != "tiny":
        return
    emb = model.model.language_model.shared.weight
    with torch.no_grad():
        emb.normal_(0.0, 1.0, generator=gen)
        vocab = tok.get_vocab()
        byte_chars = _printable_byte_chars()
        loc_ids = [vocab[f"<loc_{i}>"] for i in range(1000)]
        n_base = vocab["<mask>"] + 1
        col = torch.full((emb.shape[0],), CLASS_SCORE["never"])
        for t, i in vocab.items():
            if 4 <= i < n_base - 1:
                if len(t) > 1:
                    col[i] = CLASS_SCORE["text"]
                elif t in byte_chars:
                    col[i] = CLASS_SCORE["byte"]
        col[loc_ids] = CLASS_SCORE["loc"]
        col[2] = CLASS_SCORE["eos"]
        emb[:, 0] = col
        # </s> gets a constant logit (no content part): a sequence ends when
        # every other token scores below it, which happens now and then.
        emb[2, 1:] = 0.0
        last = model.model.language_model.decoder.layers[-1].final_layer_norm
        signs = torch.randint(0, 2, (emb.shape[1],), generator=gen).float() * 2 - 1
        last.weight.copy_(signs * LOGIT_SCALE[size_name])
        last.weight[0] = 0.0
        last.bias.zero_()
        last.bias[0] = 1.0
        pos = model.model.language_model.decoder.embed_positions.weight
        pos.normal_(0.0, POSITION_STD, generator=gen)


def _printable_byte_chars():
    """The byte-level alphabet characters of printable ASCII (letters, digits,
    punctuation, and 'Ġ' for the space)."""
    from tokenizers import pre_tokenizers  # noqa: F401

    # GPT-2 byte-to-unicode: printable ASCII maps to itself, space to U+0120.
    chars = {chr(c) for c in range(33, 127)}
    chars.add("\u0120")
    return chars


def sharpen_attention(model) -> None:
    """Make the random model listen to the prompt and the image.

    With plain random weights, attention over the ~590 encoder positions is
    close to uniform, so every prompt and image give nearly the same tokens and
    a wrong prompt id or pixel would go unnoticed by the goldens. Larger query
    weights concentrate the attention on a few positions that depend on the
    content; a larger cross-attention value path lets it steer the decoder."""
    lm = model.model.language_model
    with torch.no_grad():
        for layer in lm.encoder.layers:
            layer.self_attn.q_proj.weight.mul_(ATTN_SHARPEN["encoder_q"])
        for layer in lm.decoder.layers:
            layer.encoder_attn.q_proj.weight.mul_(ATTN_SHARPEN["cross_q"])
            layer.encoder_attn.out_proj.weight.mul_(ATTN_SHARPEN["cross_out"])


def build_model(size_name: str, seed: int):
    """Return (model, tokenizer_hf, tokenizer_raw) — deterministic for a seed."""
    size = SIZES[size_name]
    tok = train_tokenizer(size.bpe_vocab, 50264 if size_name == "base" else None)
    vocab_size = tok.get_vocab_size()
    image_token_id = tok.token_to_id(IMAGE_TOKEN)
    config = florence_config(size, vocab_size, image_token_id)
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config)
    gen = torch.Generator().manual_seed(seed + 1)
    # transformers' default init (std 0.02) makes the vision tower and the
    # language model nearly constant maps; larger random weights make the
    # outputs depend on the image and the prompt.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "shared" not in name:
                fan_in = p[0].numel()
                p.normal_(0.0, 1.0 / np.sqrt(fan_in), generator=gen)
            elif name.endswith("bias") and "norm" not in name:
                p.normal_(0.0, 0.02, generator=gen)
    if size_name == "tiny":
        sharpen_attention(model)
    shape_logits(model, tok, size_name, gen)
    model.tie_weights()
    model.eval()
    model.generation_config = generation_config()
    return model, hf_tokenizer(tok), tok


# ---------------------------------------------------------------------------
# Export wrappers
# ---------------------------------------------------------------------------


class VisionEncoder(torch.nn.Module):
    """pixel_values -> image_features: DaViT + projection + 2D/temporal position
    embeddings + LayerNorm, i.e. exactly what the encoder receives."""

    def __init__(self, model):
        super().__init__()
        self.m = model.model

    def forward(self, pixel_values):
        return self.m.get_image_features(pixel_values).pooler_output


class EmbedTokens(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.embed = model.model.language_model.get_input_embeddings()

    def forward(self, input_ids):
        return self.embed(input_ids)


class Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.model.language_model.encoder

    def forward(self, attention_mask, inputs_embeds):
        return self.encoder(attention_mask=attention_mask, inputs_embeds=inputs_embeds).last_hidden_state


class Decoder(torch.nn.Module):
    """First step: no past; returns logits and the decoder and encoder KV."""

    def __init__(self, model):
        super().__init__()
        self.decoder = model.model.language_model.decoder
        self.lm_head = model.lm_head

    def forward(self, encoder_attention_mask, encoder_hidden_states, inputs_embeds):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = self.decoder(
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            cache=cache,
            use_cache=True,
        )
        logits = self.lm_head(out.last_hidden_state)
        flat = [logits]
        for sa, ca in zip(cache.self_attention_cache.layers, cache.cross_attention_cache.layers):
            flat += [sa.keys, sa.values, ca.keys, ca.values]
        return tuple(flat)


class DecoderWithPast(torch.nn.Module):
    """Later steps: past decoder KV grows by one, encoder KV is read only.

    Like optimum's export it has no encoder_hidden_states input (the cross
    attention reads the cached encoder KV) and returns only the decoder KV."""

    def __init__(self, model):
        super().__init__()
        self.decoder = model.model.language_model.decoder
        self.lm_head = model.lm_head
        self.d_model = model.config.text_config.d_model

    def forward(self, encoder_attention_mask, inputs_embeds, *past):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        n = len(past) // 4
        self_data = [(past[4 * i], past[4 * i + 1]) for i in range(n)]
        cross_data = [(past[4 * i + 2], past[4 * i + 3]) for i in range(n)]
        cache = EncoderDecoderCache(DynamicCache(self_data), DynamicCache(cross_data))
        for i in range(n):
            cache.is_updated[i] = True
        enc_k = past[2]
        # Only its presence (cross attention on) and its length matter; the
        # values come from the cache.
        dummy_states = enc_k.new_zeros(()).expand(enc_k.shape[0], enc_k.shape[2], self.d_model)
        out = self.decoder(
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=dummy_states,
            encoder_attention_mask=encoder_attention_mask,
            cache=cache,
            use_cache=True,
        )
        logits = self.lm_head(out.last_hidden_state)
        flat = [logits]
        for sa in cache.self_attention_cache.layers:
            flat += [sa.keys, sa.values]
        return tuple(flat)


def _export(module, args, path, input_names, output_names, dynamic_axes):
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=input_names,
        output_names=output_names,
        dynamic_axes=dynamic_axes,
        opset_version=17,
        do_constant_folding=True,
        dynamo=False,
    )


def export_onnx(model, out: Path) -> None:
    cfg = model.config.text_config
    n_layers = cfg.decoder_layers
    heads = cfg.decoder_attention_heads
    hd = cfg.d_model // heads
    d = cfg.d_model
    onnx_dir = out / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    b = 2
    px = torch.randn(b, 3, 768, 768)
    with torch.no_grad():
        _export(
            VisionEncoder(model), (px,), onnx_dir / "vision_encoder.onnx",
            ["pixel_values"], ["image_features"],
            {"pixel_values": {0: "batch_size"}, "image_features": {0: "batch_size"}},
        )
        _fix_vision_output_dims(onnx_dir / "vision_encoder.onnx", model)
        ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 9, 2, 1]])
        _export(
            EmbedTokens(model), (ids,), onnx_dir / "embed_tokens.onnx",
            ["input_ids"], ["inputs_embeds"],
            {"input_ids": {0: "batch_size", 1: "sequence_length"},
             "inputs_embeds": {0: "batch_size", 1: "sequence_length"}},
        )
        s = 7
        mask = torch.ones(b, s, dtype=torch.int64)
        mask[1, -2:] = 0
        emb = torch.randn(b, s, d)
        _export(
            Encoder(model), (mask, emb), onnx_dir / "encoder_model.onnx",
            ["attention_mask", "inputs_embeds"], ["last_hidden_state"],
            {"attention_mask": {0: "batch_size", 1: "encoder_sequence_length"},
             "inputs_embeds": {0: "batch_size", 1: "encoder_sequence_length"},
             "last_hidden_state": {0: "batch_size", 1: "encoder_sequence_length"}},
        )
        enc_h = torch.randn(b, s, d)
        dec_in = torch.randn(b, 3, d)
        present_names = []
        for i in range(n_layers):
            present_names += [f"present.{i}.decoder.key", f"present.{i}.decoder.value",
                              f"present.{i}.encoder.key", f"present.{i}.encoder.value"]
        dyn = {
            "encoder_attention_mask": {0: "batch_size", 1: "encoder_sequence_length"},
            "encoder_hidden_states": {0: "batch_size", 1: "encoder_sequence_length"},
            "inputs_embeds": {0: "batch_size", 1: "decoder_sequence_length"},
            "logits": {0: "batch_size", 1: "decoder_sequence_length"},
        }
        for nme in present_names:
            dyn[nme] = {0: "batch_size", 2: "decoder_sequence_length" if ".decoder." in nme else "encoder_sequence_length_out"}
        _export(
            Decoder(model), (mask, enc_h, dec_in), onnx_dir / "decoder_model.onnx",
            ["encoder_attention_mask", "encoder_hidden_states", "inputs_embeds"],
            ["logits"] + present_names, dyn,
        )
        past = []
        past_names = []
        for i in range(n_layers):
            past += [torch.randn(b, heads, 4, hd), torch.randn(b, heads, 4, hd),
                     torch.randn(b, heads, s, hd), torch.randn(b, heads, s, hd)]
            past_names += [f"past_key_values.{i}.decoder.key", f"past_key_values.{i}.decoder.value",
                           f"past_key_values.{i}.encoder.key", f"past_key_values.{i}.encoder.value"]
        dec_present = [n for n in present_names if ".decoder." in n]
        dyn = {
            "encoder_attention_mask": {0: "batch_size", 1: "encoder_sequence_length"},
            "inputs_embeds": {0: "batch_size", 1: "decoder_sequence_length"},
            "logits": {0: "batch_size", 1: "decoder_sequence_length"},
        }
        for nme in past_names:
            dyn[nme] = {0: "batch_size", 2: "past_decoder_sequence_length" if ".decoder." in nme else "encoder_sequence_length_out"}
        for nme in dec_present:
            dyn[nme] = {0: "batch_size", 2: "past_decoder_sequence_length + 1"}
        _export(
            DecoderWithPast(model), (mask, torch.randn(b, 1, d), *past),
            onnx_dir / "decoder_with_past_model.onnx",
            ["encoder_attention_mask", "inputs_embeds"] + past_names,
            ["logits"] + dec_present, dyn,
        )
    merge_decoders(onnx_dir / "decoder_model.onnx", onnx_dir / "decoder_with_past_model.onnx",
                   onnx_dir / "decoder_model_merged.onnx")


def _fix_vision_output_dims(path: Path, model) -> None:
    """The tracer names image_features' token axis after a LayerNorm node; it is
    the fixed 577 (24*24 spatial + 1 temporal token at 768x768)."""
    import onnx

    m = onnx.load(str(path))
    dims = m.graph.output[0].type.tensor_type.shape.dim
    dims[1].Clear()
    dims[1].dim_value = 577
    dims[2].Clear()
    dims[2].dim_value = model.config.vision_config.projection_dim
    onnx.save(m, str(path))


def merge_decoders(no_past_path: Path, with_past_path: Path, out_path: Path) -> None:
    """One graph with an If on ``use_cache_branch`` (bool[1]), as optimum merges them.

    Inputs are the union (encoder_attention_mask, encoder_hidden_states,
    inputs_embeds, every past_key_values.*, use_cache_branch); outputs are the
    no-past graph's. In the with-past branch the present.*.encoder.* outputs
    are empty constants: callers keep the encoder KV from the first step."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    a = onnx.load(str(no_past_path))
    b = onnx.load(str(with_past_path))
    inputs = {i.name: copy.deepcopy(i) for i in a.graph.input}
    for i in b.graph.input:
        inputs.setdefault(i.name, copy.deepcopy(i))
    past_inputs = [copy.deepcopy(i) for i in b.graph.input if i.name.startswith("past_key_values")]
    # Shared weights: move both graphs' initializers to the outer graph, keyed by
    # content so that identical tensors are stored once.
    outer_inits = {}
    by_digest = {}

    def hoist(graph, prefix):
        rename = {}
        for init in graph.initializer:
            arr = numpy_helper.to_array(init)
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in by_digest:
                rename[init.name] = by_digest[key]
                continue
            new = init.name if init.name not in outer_inits else f"{prefix}{init.name}"
            t = numpy_helper.from_array(arr, new)
            outer_inits[new] = t
            by_digest[key] = new
            rename[init.name] = new
        del graph.initializer[:]
        for node in graph.node:
            for i, nm in enumerate(node.input):
                if nm in rename:
                    node.input[i] = rename[nm]
        for o in graph.output:
            if o.name in rename:  # an output that is a bare initializer
                graph.node.append(helper.make_node("Identity", [rename[o.name]], [o.name]))
        return graph

    ga = hoist(a.graph, "no_past_")
    gb = hoist(b.graph, "with_past_")

    out_names = [o.name for o in ga.output]
    no_past_outputs = [copy.deepcopy(o) for o in ga.output]
    heads_dim = {o.name: [dd.dim_value for dd in o.type.tensor_type.shape.dim] for o in ga.output}
    b_out = {o.name for o in gb.output}
    # Subgraph outputs must be distinct from outer names: rename each branch's outputs.
    def suffix_outputs(graph, tag):
        mapping = {o.name: f"{o.name}_{tag}" for o in graph.output}
        for node in graph.node:
            for i, nm in enumerate(node.output):
                if nm in mapping:
                    node.output[i] = mapping[nm]
            for i, nm in enumerate(node.input):
                if nm in mapping:
                    node.input[i] = mapping[nm]
        for o in graph.output:
            o.name = mapping[o.name]
        return mapping

    suffix_outputs(ga, "no_past")
    suffix_outputs(gb, "with_past")
    # with-past branch: add empty encoder presents, order outputs like the no-past branch.
    gb_outputs = {o.name: o for o in gb.output}
    new_outputs = []
    for name in out_names:
        if name in b_out:
            new_outputs.append(gb_outputs[f"{name}_with_past"])
        else:
            shape = heads_dim[name]
            empty = np.zeros((0, shape[1], 0, shape[3]), dtype=np.float32)
            cname = f"{name}_with_past"
            gb.node.append(helper.make_node("Constant", [], [cname], value=numpy_helper.from_array(empty)))
            new_outputs.append(helper.make_tensor_value_info(cname, TensorProto.FLOAT, None))
    del gb.output[:]
    gb.output.extend(new_outputs)
    # Branch subgraphs take no inputs: they read the outer graph's inputs.
    del ga.input[:]
    del gb.input[:]
    for o in ga.output:
        o.type.tensor_type.ClearField("shape")
    for o in gb.output:
        o.type.tensor_type.ClearField("shape")
    ga.name = "no_past_branch"
    gb.name = "with_past_branch"

    # the encoder past has the same dims as the decoder's present.*.encoder
    ordered = [inputs["encoder_attention_mask"], inputs["encoder_hidden_states"], inputs["inputs_embeds"]] + past_inputs
    use_cache = helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])
    if_node = helper.make_node("If", ["use_cache_branch"], out_names, name="optimum::if",
                               then_branch=gb, else_branch=ga)
    outputs = []
    for o in no_past_outputs:
        vi = copy.deepcopy(o)
        if ".encoder." in o.name:
            # empty in the with-past branch: only the rank is fixed
            for dd, nm in zip(vi.type.tensor_type.shape.dim, ["batch_size", None, "encoder_sequence_length_out", None]):
                if nm:
                    dd.dim_param = nm
        if ".decoder." in o.name:
            vi.type.tensor_type.shape.dim[2].dim_param = "present_decoder_sequence_length"
        if o.name == "logits":
            vi.type.tensor_type.shape.dim[1].dim_param = "decoder_sequence_length"
        outputs.append(vi)
    graph = helper.make_graph([if_node], "decoder_model_merged", ordered + [use_cache], outputs,
                              initializer=list(outer_inits.values()))
    model = helper.make_model(graph, opset_imports=a.opset_import, producer_name="florence-edge/make_tiny_florence2")
    model.ir_version = a.ir_version
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))


def quantize(onnx_dir: Path, names) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for name in names:
        src = onnx_dir / f"{name}.onnx"
        dst = onnx_dir / f"{name}_quantized.onnx"
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


# ---------------------------------------------------------------------------
# Config files (the real onnx-community/Florence-2-base-ft keys, our dims)
# ---------------------------------------------------------------------------


def write_configs(model, hf_tok, out: Path, size: Size) -> None:
    tc = model.config.text_config
    vocab_size = tc.vocab_size
    text_config = {
        "vocab_size": vocab_size,
        "activation_dropout": 0.1,
        "activation_function": "gelu",
        "add_bias_logits": False,
        "add_final_layer_norm": False,
        "attention_dropout": 0.1,
        "bos_token_id": 0,
        "classif_dropout": 0.1,
        "classifier_dropout": 0.0,
        "d_model": tc.d_model,
        "decoder_attention_heads": tc.decoder_attention_heads,
        "decoder_ffn_dim": tc.decoder_ffn_dim,
        "decoder_layerdrop": 0.0,
        "decoder_layers": tc.decoder_layers,
        "decoder_start_token_id": 2,
        "dropout": 0.1,
        "early_stopping": True,
        "encoder_attention_heads": tc.encoder_attention_heads,
        "encoder_ffn_dim": tc.encoder_ffn_dim,
        "encoder_layerdrop": 0.0,
        "encoder_layers": tc.encoder_layers,
        "eos_token_id": 2,
        "forced_eos_token_id": 2,
        "forced_bos_token_id": 0,
        "gradient_checkpointing": False,
        "init_std": 0.02,
        "is_encoder_decoder": True,
        "label2id": {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2},
        "id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"},
        "max_position_embeddings": tc.max_position_embeddings,
        "no_repeat_ngram_size": 3,
        "normalize_before": False,
        "num_hidden_layers": tc.encoder_layers,
        "pad_token_id": 1,
        "scale_embedding": False,
        "num_beams": 3,
    }
    vc = model.config.vision_config
    vision_config = {
        "model_type": "davit",
        "drop_path_rate": 0.1,
        "patch_size": list(vc.patch_size),
        "patch_stride": list(vc.patch_stride),
        "patch_padding": list(vc.patch_padding),
        "patch_prenorm": list(vc.patch_prenorm),
        "enable_checkpoint": False,
        "dim_embed": list(vc.embed_dim),
        "num_heads": list(vc.num_heads),
        "num_groups": list(vc.num_groups),
        "depths": list(vc.depths),
        "window_size": vc.window_size,
        "projection_dim": vc.projection_dim,
        "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": vc.max_temporal_embeddings},
        "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": vc.max_position_embeddings},
        "image_feature_source": ["spatial_avg_pool", "temporal_avg_pool"],
    }
    config = {
        "_name_or_path": f"florence-edge/florence2-{size.name}-random",
        "architectures": ["Florence2ForConditionalGeneration"],
        "bos_token_id": 0,
        "eos_token_id": 2,
        "ignore_index": -100,
        "model_type": "florence2",
        "pad_token_id": 1,
        "projection_dim": vc.projection_dim,
        "text_config": text_config,
        "vision_config": vision_config,
        "vocab_size": vocab_size,
        "torch_dtype": "float32",
        "transformers_version": "4.41.0.dev0",
        "is_encoder_decoder": True,
        # Not in the original file: transformers 5's id of the <image> placeholder.
        "image_token_id": model.config.image_token_id,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {
        "bos_token_id": 0,
        "decoder_start_token_id": 2,
        "early_stopping": True,
        "eos_token_id": 2,
        "forced_bos_token_id": 0,
        "forced_eos_token_id": 2,
        "no_repeat_ngram_size": 3,
        "num_beams": 3,
        "pad_token_id": 1,
        "transformers_version": "4.41.0.dev0",
    }
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    pre = {
        "_valid_processor_keys": [
            "images", "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
            "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb",
            "return_tensors", "data_format", "input_data_format",
        ],
        "crop_size": {"height": 768, "width": 768},
        "do_center_crop": False,
        "do_convert_rgb": None,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_processor_type": "CLIPImageProcessor",
        "image_seq_length": 577,
        "image_std": [0.229, 0.224, 0.225],
        "processor_class": "Florence2Processor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": 768, "width": 768},
    }
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")

    hf_tok.save_pretrained(str(out))
    # Keep only the files of the onnx-community layout (+ special_tokens_map).
    tc_path = out / "tokenizer_config.json"
    tcfg = json.loads(tc_path.read_text())
    tcfg.update({
        "add_prefix_space": False,
        "errors": "replace",
        "clean_up_tokenization_spaces": True,
        "model_max_length": 1024,
        "tokenizer_class": "BartTokenizer",
        "processor_class": "Florence2Processor",
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
        "additional_special_tokens": FLORENCE_ADDED_TOKENS,
        "extra_special_tokens": {"image_token": IMAGE_TOKEN},
    })
    tc_path.write_text(json.dumps(tcfg, indent=2, ensure_ascii=False) + "\n")
    stm = {
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
        "unk_token": "<unk>", "pad_token": "<pad>",
        "mask_token": {"content": "<mask>", "lstrip": True, "normalized": False, "rstrip": False, "single_word": False},
        "additional_special_tokens": FLORENCE_ADDED_TOKENS,
    }
    (out / "special_tokens_map.json").write_text(json.dumps(stm, indent=2) + "\n")
    for extra in ["vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja"]:
        p = out / extra
        if p.exists():
            p.unlink()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--no-quantized", action="store_true", help="skip the *_quantized.onnx variants")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model, hf_tok, _ = build_model(args.size, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_configs(model, hf_tok, args.out, SIZES[args.size])
    export_onnx(model, args.out)
    if not args.no_quantized:
        quantize(args.out / "onnx", ["vision_encoder", "encoder_model", "decoder_model", "decoder_with_past_model"])
    n_params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"out": str(args.out), "size": args.size, "seed": args.seed, "parameters": n_params}))
    return 0


DEFAULT_SEED = 2024

if __name__ == "__main__":
    sys.exit(main())
