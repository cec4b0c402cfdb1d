"""Tiny random Stable Diffusion models in diffusers' folder layout (SD1.5's and SDXL's parts, a character-level CLIP
tokenizer), for offline demos and tests: every code path of a real model, none of its pictures.

``build_sd(root)``: ``unet/`` (cross-attention UNet, 8 x 8 latents), ``scheduler/`` (SD's scaled-linear DDPM),
``tokenizer/`` + ``text_encoder/`` (CLIP, width 32), ``vae/`` (``AutoencoderKL``, 64 px images); ``build_sdxl(root)``
adds SDXL's parts over it: a UNet with pooled text and time ids, ``tokenizer_2/`` + ``text_encoder_2/`` (CLIP with
projection). Weights are drawn from fixed seeds, so a folder is the same wherever it is built.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _tokenizer(root: Path) -> int:
    """A CLIP tokenizer of single letters (saved in ``tokenizer/``); its vocabulary size."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=77).save_pretrained(
        root / "tokenizer")
    return len(vocab)


def build_sd(root: str | Path) -> Path:
    """A tiny random model in SD1.5's layout at ``root``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                         norm_num_groups=8, attention_head_dim=4).save_pretrained(root / "unet")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(root / "scheduler")
    vocab = _tokenizer(root)
    CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                 num_attention_heads=4, bos_token_id=0, eos_token_id=1, pad_token_id=1)
                  ).save_pretrained(root / "text_encoder")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
                  layers_per_block=1, norm_num_groups=4, sample_size=64).save_pretrained(root / "vae")
    return root


def build_sdxl(root: str | Path) -> Path:
    """SDXL's parts over a folder ``build_sd`` made: its UNet replaced, the second text encoder added."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    root = Path(root)
    torch.manual_seed(1)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                         norm_num_groups=8, attention_head_dim=4, addition_embed_type="text_time",
                         addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8
                         ).save_pretrained(root / "unet")
    CLIPTokenizer.from_pretrained(root / "tokenizer").save_pretrained(root / "tokenizer_2")
    vocab = len(json.loads((root / "vocab.json").read_text()))
    config = dict(vocab_size=vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  bos_token_id=0, eos_token_id=1, pad_token_id=1)
    CLIPTextModel(CLIPTextConfig(**config)).save_pretrained(root / "text_encoder")
    CLIPTextModelWithProjection(CLIPTextConfig(**config, projection_dim=16)).save_pretrained(root / "text_encoder_2")
    return root
