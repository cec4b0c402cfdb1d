"""Frozen vision encoders of REPA (Yu et al. 2025, section 3) and REG, with their exact preprocessing.

``--enc-type`` is REPA's comma-separated list of ``{type}-{arch}-{size}`` names, e.g.
``dinov2-vit-b,clip-vit-L``; ``load_encoders`` returns one frozen ``Encoder`` per name. Each is a
timm ``VisionTransformer`` built here (``pretrained=False``) and filled from the original release
file, whose key names are mapped to timm's below. ``tiny-vit`` is a small random ViT, the same for
a given seed, for tests and the CPU demo; it needs no file.

``Encoder.preprocess(raw)`` is REPA's ``preprocess_raw_image`` (``train.py``): ``x / 255``, the
encoder's mean/std, and a bicubic resize to ``224 * (resolution // 256)`` where REPA has one.
``Encoder.forward(x)`` returns ``(patch_tokens (N, T, D), cls_token (N, D))``:

=============  =====================  =======  ===================================  ====================
family         normalise, resize      input    patch tokens (what REPA aligns to)   cls_token
=============  =====================  =======  ===================================  ====================
dinov2         ImageNet, then resize  224/448  final-normed (``x_norm_patchtokens``)  ``x_norm_clstoken``
dinov1         ImageNet               256      final-normed, class token dropped    final-normed token 0
mocov3         ImageNet               256      final-normed, class token dropped    final-normed token 0
mae            ImageNet               256      last block, no final norm, no cls    last block token 0
clip           resize, then CLIP      224      last block, no ``ln_post``, no cls   last block token 0
jepa           ImageNet, then resize  224      final-normed (I-JEPA has no cls)     mean of patch tokens
tiny           ImageNet               as is    final-normed                         final-normed token 0
=============  =====================  =======  ===================================  ====================

Only the DINOv2 class token is the original's (REG, ``train.py``); the others are this repository's
choice, taken from the same layer as the patch tokens. REPA's ``dinov1`` module is missing from its
release, so DINOv1 follows DINO's own ``forward`` (final norm) with the class token dropped.
Every pretrained grid is 16 x 16 at 256 px (32 x 32 for DINOv2 at 512; tiny-vit: patches of 4 px):
position embeddings are resampled to it
with timm's ``resample_abs_pos_embed`` (bicubic, antialiased) exactly as REPA's ``load_encoders``.
Call the encoders under ``torch.no_grad()`` (and autocast) as REPA does.
"""

from __future__ import annotations

import math
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.layers import resample_abs_pos_embed
from torch import nn

from models import hub

FB = "https://dl.fbaipublicfiles.com"
CLIP_L14_URL = ("https://openaipublic.azureedge.net/clip/models/"
                "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt")
TINY_SEED = 0
TINY_PATCH_SIZE = 4  # tokens line up with a pixel-space /4 model (DiT-Demo/4 at 16 px: 4 x 4)


@dataclass(frozen=True)
class Family:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str | None  # "before" / "after" normalising, to 224 * (resolution // 256); None: no resize
    final_norm: bool  # tokens after the final LayerNorm
    class_token: bool  # the ViT has a class token (token 0)


FAMILIES = {
    "dinov2": Family(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, "after", True, True),
    "dinov1": Family(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, None, True, True),
    "mocov3": Family(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, None, True, True),
    "mae": Family(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, None, False, True),
    "clip": Family(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "before", False, True),
    "jepa": Family(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, "after", True, False),
    "tiny": Family(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, None, True, True),
    "builtin": Family((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), None, True, True),  # sees images in [-1, 1]
}


@dataclass(frozen=True)
class EncoderSpec:
    family: str
    timm_name: str
    embed_dim: int  # REPA's z_dim
    files: tuple[str, ...] = ()  # the release's file name first, then REPA's ./ckpts name
    url: str | None = None
    arch: dict = field(default_factory=dict)  # timm keyword arguments beyond the named model


def _dinov2(size: str, timm_size: str, dim: int) -> EncoderSpec:
    name = f"dinov2_vit{size}14"
    return EncoderSpec("dinov2", f"vit_{timm_size}_patch14_dinov2", dim, (f"{name}_pretrain.pth",),
                       f"{FB}/dinov2/{name}/{name}_pretrain.pth")


def _mocov3(size: str, timm_size: str, dim: int, url: bool = True) -> EncoderSpec:
    file = f"vit-{size}-300ep.pth.tar"  # MoCo v3's ViT-S has 12 heads, timm's 6
    return EncoderSpec("mocov3", f"vit_{timm_size}_patch16_224", dim, (file, f"mocov3_vit{size}.pth"),
                       f"{FB}/moco-v3/vit-{size}-300ep/{file}" if url else None,
                       {"num_heads": 12} if size == "s" else {})


ENCODERS = {
    "dinov2-vit-s": _dinov2("s", "small", 384),
    "dinov2-vit-b": _dinov2("b", "base", 768),
    "dinov2-vit-l": _dinov2("l", "large", 1024),
    "dinov2-vit-g": _dinov2("g", "giant", 1536),
    "dinov1-vit-b": EncoderSpec("dinov1", "vit_base_patch16_224", 768,
                                ("dino_vitbase16_pretrain.pth", "dinov1_vitb.pth"),
                                f"{FB}/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"),
    "clip-vit-L": EncoderSpec("clip", "vit_large_patch14_clip_quickgelu_224", 1024, ("ViT-L-14.pt",), CLIP_L14_URL),
    "mocov3-vit-s": _mocov3("s", "small", 384),
    "mocov3-vit-b": _mocov3("b", "base", 768),
    "mocov3-vit-l": _mocov3("l", "large", 1024, url=False),  # no public ViT-L release known
    "mae-vit-l": EncoderSpec("mae", "vit_large_patch16_224", 1024, ("mae_pretrain_vit_large.pth", "mae_vitl.pth"),
                             f"{FB}/mae/pretrain/mae_pretrain_vit_large.pth"),
    "jepa-vit-h": EncoderSpec("jepa", "vit_huge_patch14_gap_224", 1280, ("IN1K-vit.h.14-300e.pth.tar", "ijepa_vith.pth"),
                              f"{FB}/ijepa/IN1K-vit.h.14-300e.pth.tar"),
    "tiny-vit": EncoderSpec("tiny", "vit_tiny_patch16_224", 32,
                            arch={"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": TINY_PATCH_SIZE}),
    # SimCLR on the built-in images, trained on first use (methods/ssl_encoder.py), cached in encoders/
    "simclr-builtin": EncoderSpec("builtin", "vit_tiny_patch16_224", 96, ("simclr-builtin-vit16-v1.pt",),
                                  arch={"embed_dim": 96, "depth": 4, "num_heads": 3, "patch_size": TINY_PATCH_SIZE}),
}


def input_size(family: str, resolution: int) -> int:
    """The side of the image the ViT sees: REPA resizes to ``224 * (resolution // 256)`` or not at all."""
    return 224 * (resolution // 256) if FAMILIES[family].resize else resolution


class Encoder(nn.Module):
    """A frozen ViT with REPA's preprocessing; ``forward`` gives ``(patch_tokens, cls_token)``."""

    def __init__(self, name: str, model: nn.Module, resolution: int):
        super().__init__()
        spec = ENCODERS[name]
        self.name, self.family, self.resolution = name, spec.family, resolution
        self.embed_dim = model.embed_dim
        self.model = model.requires_grad_(False)
        self.eval()

    def num_tokens(self, resolution: int | None = None) -> int:
        """Patch tokens per image of side ``resolution`` (default: the one built for)."""
        patch = self.model.patch_embed.patch_size[0]
        return (input_size(self.family, resolution or self.resolution) // patch) ** 2

    def preprocess(self, raw: torch.Tensor) -> torch.Tensor:
        """REPA's ``preprocess_raw_image``: ``raw`` (N, 3, H, W) in [0, 255], uint8 or float."""
        fam = FAMILIES[self.family]
        size = input_size(self.family, raw.shape[-1])
        x = raw / 255.0
        mean = torch.tensor(fam.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(fam.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        if fam.resize == "before":
            x = F.interpolate(x, size, mode="bicubic")
        x = (x - mean) / std
        if fam.resize == "after":
            x = F.interpolate(x, size, mode="bicubic")
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fam, m = FAMILIES[self.family], self.model
        x = m.norm_pre(m._pos_embed(m.patch_embed(x)))  # timm's forward_features up to the final norm
        x = m.blocks(x)
        if fam.final_norm:
            x = m.norm(x)
        if not fam.class_token:
            return x, x.mean(1)
        return x[:, 1:], x[:, 0]

    def load_original_state_dict(self, checkpoint: dict, source: str = "checkpoint") -> None:
        """Load a checkpoint in the original release's format (keys mapped, grid resampled), strictly."""
        sd = to_timm_state_dict(self.family, checkpoint)
        prefix = int(FAMILIES[self.family].class_token)
        pos = sd.get("pos_embed")
        if pos is not None and pos.ndim == 3 and math.isqrt(pos.shape[1] - prefix) ** 2 == pos.shape[1] - prefix:
            grid = list(self.model.patch_embed.grid_size)  # a square training grid -> this run's grid
            sd["pos_embed"] = resample_abs_pos_embed(pos.float(), grid, num_prefix_tokens=prefix)
        own = self.model.state_dict()
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        wrong = [k for k in own if k in sd and sd[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            found = (("missing keys", missing), ("unexpected keys", unexpected), ("of another shape", wrong))
            e = ", ".join(f"{len(keys)} {what} (e.g. {keys[0]})" for what, keys in found if keys)
            raise ValueError(f"{source} does not fit {self.name}: {e}; it should be the "
                             f"{ENCODERS[self.name].files[0]} release")
        on_meta = any(p.is_meta for p in self.model.parameters())  # built by load_encoders: take the tensors
        self.model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=on_meta)
        self.model.requires_grad_(False)


def reg_target(patch_tokens: torch.Tensor, cls_token: torch.Tensor) -> torch.Tensor:
    """REG's alignment target (``train.py``): the class token prepended to the patch tokens, (N, 1 + T, D)."""
    return torch.cat([cls_token[:, None], patch_tokens], dim=1)


# Original key names -> timm's. Each returns a flat state dict named as timm's VisionTransformer.
MOCOV3_FIXES = ((r"^blocks\.13\.norm13\.", "blocks.13.norm1."), (r"^blocks\.13\.mlp\.fc13\.", "blocks.13.mlp.fc1."),
                (r"^blocks\.14\.norm14\.", "blocks.14.norm2."), (r"^blocks\.14\.mlp\.fc14\.", "blocks.14.mlp.fc2."))
CLIP_RENAMES = ((r"^conv1\.", "patch_embed.proj."), (r"^ln_pre\.", "norm_pre."), (r"^ln_post\.", "norm."),
                (r"^transformer\.resblocks\.", "blocks."), (r"\.ln_1\.", ".norm1."), (r"\.ln_2\.", ".norm2."),
                (r"\.attn\.in_proj_(weight|bias)$", r".attn.qkv.\1"), (r"\.attn\.out_proj\.", ".attn.proj."),
                (r"\.mlp\.c_fc\.", ".mlp.fc1."), (r"\.mlp\.c_proj\.", ".mlp.fc2."))


def _rename(key: str, rules) -> str:
    for pattern, new in rules:
        key = re.sub(pattern, new, key)
    return key


def to_timm_state_dict(family: str, ckpt: dict) -> dict:
    """The release's checkpoint -> timm names (before the position embedding is resampled)."""
    if family == "dinov2":  # torch.hub's dinov2_vit*14_pretrain.pth; giant has SwiGLU w12/w3
        return {_rename(k, ((r"\.mlp\.w12\.", ".mlp.fc1."), (r"\.mlp\.w3\.", ".mlp.fc2."))): v
                for k, v in ckpt.items() if k != "mask_token"}  # mask_token: masked-image training only
    if family == "mocov3":  # {"state_dict": {"module.base_encoder.*", "module.momentum_encoder.*", ...}}
        pre = "module.base_encoder."
        sd = ckpt.get("state_dict", ckpt)
        sd = {_rename(k[len(pre):], MOCOV3_FIXES): v for k, v in sd.items() if k.startswith(pre)}
        return {k: v for k, v in sd.items() if not k.startswith("head.")}  # head: the projection MLP
    if family == "mae":  # {"model": encoder state dict}
        return dict(ckpt.get("model", ckpt))
    if family == "jepa":  # {"encoder": {"module.*"}, "predictor", "target_encoder", ...}; REPA uses "encoder"
        return {k.removeprefix("module."): v for k, v in ckpt.get("encoder", ckpt).items()}
    if family == "clip":  # OpenAI CLIP (text tower too); the visual tower minus its projection
        sd = {}
        for k, v in ckpt.items():
            if not k.startswith("visual.") or k == "visual.proj":
                continue
            k = k.removeprefix("visual.")
            if k == "class_embedding":
                k, v = "cls_token", v.reshape(1, 1, -1)
            elif k == "positional_embedding":
                k, v = "pos_embed", v[None]
            sd[_rename(k, CLIP_RENAMES)] = v
        return sd
    return dict(ckpt)  # dinov1 (dino_vitbase16_pretrain.pth), tiny: already timm's names


def parse_enc_type(enc_type: str) -> list[str]:
    """REPA's ``--enc-type``: comma-separated names, each one of ``ENCODERS``."""
    names = [n.strip() for n in enc_type.split(",")]
    for n in names:
        if n not in ENCODERS:
            raise ValueError(f"--enc-type {enc_type}: unknown encoder {n!r}; valid names (comma-separate "
                             f"several): {', '.join(ENCODERS)}")
    return names


def check_resolution(name: str, resolution: int) -> None:
    family = ENCODERS[name].family
    if family in ("tiny", "builtin"):
        if resolution % TINY_PATCH_SIZE:
            raise ValueError(f"--resolution {resolution}: {name} needs a multiple of {TINY_PATCH_SIZE}")
    elif resolution not in (256, 512):
        raise ValueError(f"--resolution {resolution}: the pretrained encoders take 256 or 512 px images "
                         "(REPA); use --enc-type tiny-vit for other sizes")
    elif resolution == 512 and family != "dinov2":
        raise ValueError(f"--enc-type {name} at --resolution 512: REPA supports 512 px only with DINOv2 "
                         "(dinov2-vit-{s,b,l,g}); use one of those or --resolution 256")


def build_encoder(name: str, resolution: int = 256, seed: int = TINY_SEED, **arch) -> Encoder:
    """The architecture of ``name`` for ``resolution``; random weights (meta tensors under ``torch.device('meta')``).

    ``arch`` overrides timm arguments (tests build narrow copies of a family). ``tiny-vit`` is
    initialised from ``seed`` without touching the global random state.
    """
    check_resolution(name, resolution)
    spec = ENCODERS[name]
    size = input_size(spec.family, resolution)
    kwargs = dict(pretrained=False, num_classes=0, img_size=size, **{**spec.arch, **arch})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(spec.timm_name, **kwargs)
    return Encoder(name, model, resolution)


def find_weights(name: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """The release file of ``name``: ``weights_dir`` (a file or a folder), else the cache's ``encoders/``,
    torch.hub's and CLIP's caches; downloaded into the first folder unless ``HF_HUB_OFFLINE=1``."""
    spec = ENCODERS[name]
    if weights_dir is not None and Path(weights_dir).is_file():
        return Path(weights_dir)
    folders = [Path(weights_dir)] if weights_dir is not None else [
        hub.cache_dir() / "encoders", Path(torch.hub.get_dir()) / "checkpoints", Path.home() / ".cache" / "clip"]
    for folder in folders:
        for file in spec.files:
            if (folder / file).is_file():
                return folder / file
    target = folders[0] / spec.files[0]
    if spec.url and hub.download(spec.url, target):
        return target
    source = f"download {spec.url}" if spec.url else "no public download is known: use your own checkpoint"
    if spec.family == "builtin":
        source = "train it with python -m methods.ssl_encoder (training scripts do on first use)"
    raise ValueError(f"--enc-type {name}: {spec.files[0]} is not in {', '.join(map(str, folders))} and was not "
                     f"downloaded; {source} and put it in {folders[0]}/ (or set ${hub.CACHE_ENV})")


def read_weights(path: Path) -> dict:
    """``torch.load``, or the state dict of a TorchScript archive (OpenAI's CLIP files)."""
    try:
        with zipfile.ZipFile(path) as z:
            if any(n.endswith("/constants.pkl") for n in z.namelist()):
                with warnings.catch_warnings():  # torch.jit is deprecated; OpenAI's files remain TorchScript
                    warnings.simplefilter("ignore", FutureWarning)
                    return torch.jit.load(str(path), map_location="cpu").state_dict()
    except zipfile.BadZipFile:
        pass
    for mmap in (True, False):  # mmap: I-JEPA's 10 GB file is mostly optimiser state we never touch
        try:  # weights_only=False as the originals: MoCo v3 / I-JEPA files hold more than tensors
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        except Exception as e:  # legacy (non-zip) files cannot be mapped; truncated files fail both ways
            error = e
    raise ValueError(f"{path} could not be read ({type(error).__name__}); delete it and fetch it again")


def load_encoders(enc_type: str, device: torch.device | str = "cpu", resolution: int = 256,
                  weights_dir: str | os.PathLike | None = None) -> list[Encoder]:
    """REPA's ``load_encoders``: one frozen ``Encoder`` per name of ``enc_type``, on ``device``."""
    names = parse_enc_type(enc_type)
    for name in names:
        check_resolution(name, resolution)
    pretrained = [n for n in names if ENCODERS[n].family != "tiny"]
    if weights_dir is not None and Path(weights_dir).is_file() and len(pretrained) > 1:
        raise ValueError(f"the weights file {weights_dir} can serve one encoder, not {', '.join(pretrained)}; "
                         "pass the folder that holds them")
    encoders = []
    for name in names:
        if name not in pretrained:
            encoders.append(build_encoder(name, resolution).to(device))
            continue
        path = find_weights(name, weights_dir)
        with torch.device("meta"):  # no memory, no init: the file fills every tensor
            encoder = build_encoder(name, resolution, weight_init="skip")
        encoder.load_original_state_dict(read_weights(path), source=str(path))
        encoders.append(encoder.to(device))
    return encoders
