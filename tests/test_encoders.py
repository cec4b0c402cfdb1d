"""REPA / REG encoders: names, preprocessing, release key formats, loading and errors.

Parity with the original code (torch.hub DINOv2, REPA's MoCo v3 / MAE / I-JEPA modules, OpenAI CLIP)
is recorded by tests/fixtures/record_encoders.py (see its docstring to re-record). Tests never
download: each points the cache at a temporary folder and sets ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from models.encoders import (
    ENCODERS,
    build_encoder,
    load_encoders,
    parse_enc_type,
    read_weights,
    reg_target,
    to_timm_state_dict,
)

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "encoders_reference.pt"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
# name: (embed_dim, depth, heads, patch) of the original release; MoCo v3's ViT-S has 12 heads
ORIGINAL = {
    "dinov2-vit-s": (384, 12, 6, 14), "dinov2-vit-b": (768, 12, 12, 14), "dinov2-vit-l": (1024, 24, 16, 14),
    "dinov2-vit-g": (1536, 40, 24, 14), "dinov1-vit-b": (768, 12, 12, 16), "clip-vit-L": (1024, 24, 16, 14),
    "mocov3-vit-s": (384, 12, 12, 16), "mocov3-vit-b": (768, 12, 12, 16), "mocov3-vit-l": (1024, 24, 16, 16),
    "mae-vit-l": (1024, 24, 16, 16), "jepa-vit-h": (1280, 32, 16, 14),
}  # fmt: skip


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DIFFUSION_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "cache" / "encoders"


def release_layout(name: str) -> dict:
    """A checkpoint with the key names, wrappers and shapes of the original release, on the meta device."""
    dim, depth, _, patch = ORIGINAL[name]
    family = ENCODERS[name].family
    e = lambda *shape: torch.empty(shape, device="meta")
    grid = 37 if family == "dinov2" else 16 if family in ("jepa", "clip") else 14  # 518 px; 224 px
    hidden = 4 * dim
    vit = {"cls_token": e(1, 1, dim), "pos_embed": e(1, 1 + grid**2, dim), "patch_embed.proj.weight": e(dim, 3, patch, patch),
           "patch_embed.proj.bias": e(dim), "norm.weight": e(dim), "norm.bias": e(dim)}  # fmt: skip
    for i in range(depth):
        b = f"blocks.{i}."
        vit |= {b + "norm1.weight": e(dim), b + "norm1.bias": e(dim), b + "attn.qkv.weight": e(3 * dim, dim),
                b + "attn.qkv.bias": e(3 * dim), b + "attn.proj.weight": e(dim, dim), b + "attn.proj.bias": e(dim),
                b + "norm2.weight": e(dim), b + "norm2.bias": e(dim), b + "mlp.fc1.weight": e(hidden, dim),
                b + "mlp.fc1.bias": e(hidden), b + "mlp.fc2.weight": e(dim, hidden), b + "mlp.fc2.bias": e(dim)}  # fmt: skip
    if family == "dinov2":
        vit["mask_token"] = e(1, dim)
        for i in range(depth):
            vit |= {f"blocks.{i}.ls1.gamma": e(dim), f"blocks.{i}.ls2.gamma": e(dim)}
            if name == "dinov2-vit-g":  # SwiGLUFFNFused: hidden (int(4 * 1536 * 2 / 3) + 7) // 8 * 8 = 4096
                for k in ("weight", "bias"):
                    del vit[f"blocks.{i}.mlp.fc1.{k}"], vit[f"blocks.{i}.mlp.fc2.{k}"]
                vit |= {f"blocks.{i}.mlp.w12.weight": e(8192, dim), f"blocks.{i}.mlp.w12.bias": e(8192),
                        f"blocks.{i}.mlp.w3.weight": e(dim, 4096), f"blocks.{i}.mlp.w3.bias": e(dim)}
        return vit
    if family == "mocov3":
        sd = {f"module.base_encoder.{k}": v for k, v in vit.items()}
        head = {"head.0.weight": e(4096, dim), "head.1.weight": e(4096), "head.3.weight": e(256, 4096)}
        sd |= {f"module.base_encoder.{k}": v for k, v in head.items()}
        sd |= {f"module.momentum_encoder.{k}": v for k, v in {**vit, **head}.items()}
        return {"epoch": 300, "arch": "vit_base", "state_dict": sd, "optimizer": {}}
    if family == "mae":
        return {"model": vit}
    if family == "jepa":
        del vit["cls_token"]
        vit["pos_embed"] = e(1, grid**2, dim)
        enc = {f"module.{k}": v for k, v in vit.items()}
        return {"encoder": enc, "predictor": {"module.mask_token": e(1, 1, 384)}, "target_encoder": enc, "epoch": 300}
    if family == "clip":
        sd = {"visual.class_embedding": e(dim), "visual.positional_embedding": e(1 + grid**2, dim),
              "visual.conv1.weight": e(dim, 3, patch, patch), "visual.ln_pre.weight": e(dim), "visual.ln_pre.bias": e(dim),
              "visual.ln_post.weight": e(dim), "visual.ln_post.bias": e(dim), "visual.proj": e(dim, 768),
              "positional_embedding": e(77, 768), "text_projection": e(768, 768), "logit_scale": e(),
              "token_embedding.weight": e(49408, 768), "transformer.resblocks.0.ln_1.weight": e(768)}  # fmt: skip
        for i in range(depth):
            b = f"visual.transformer.resblocks.{i}."
            sd |= {b + "ln_1.weight": e(dim), b + "ln_1.bias": e(dim), b + "attn.in_proj_weight": e(3 * dim, dim),
                   b + "attn.in_proj_bias": e(3 * dim), b + "attn.out_proj.weight": e(dim, dim),
                   b + "attn.out_proj.bias": e(dim), b + "ln_2.weight": e(dim), b + "ln_2.bias": e(dim),
                   b + "mlp.c_fc.weight": e(hidden, dim), b + "mlp.c_fc.bias": e(hidden),
                   b + "mlp.c_proj.weight": e(dim, hidden), b + "mlp.c_proj.bias": e(dim)}  # fmt: skip
        return sd
    return vit  # dinov1: dino_vitbase16_pretrain.pth is the bare backbone


def test_enc_type_is_a_comma_separated_list_of_repa_names():
    assert parse_enc_type("dinov2-vit-b,clip-vit-L") == ["dinov2-vit-b", "clip-vit-L"]
    assert parse_enc_type("mocov3-vit-b, tiny-vit") == ["mocov3-vit-b", "tiny-vit"]
    assert set(ENCODERS) == {*ORIGINAL, "tiny-vit", "simclr-builtin"}  # two of this repository's own
    with pytest.raises(ValueError, match=r"unknown encoder 'dinov2-vit-x'.*dinov2-vit-s, dinov2-vit-b"):
        parse_enc_type("dinov2-vit-b,dinov2-vit-x")


@pytest.mark.parametrize("name", list(ORIGINAL))
def test_release_checkpoint_loads_strictly_into_the_original_architecture(name):
    """Full-size layout on the meta device: dims, depth, heads, token count, every key and shape."""
    dim, depth, heads, patch = ORIGINAL[name]
    with torch.device("meta"):
        encoder = build_encoder(name, 256, weight_init="skip")
    vit = encoder.model
    assert (encoder.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads, vit.patch_embed.patch_size[0]) == (
        dim, depth, heads, patch)  # fmt: skip
    assert encoder.num_tokens(256) == 256 and vit.pos_embed.shape[1] == 256 + (ENCODERS[name].family != "jepa")
    encoder.load_original_state_dict(release_layout(name))
    other = "dinov2-vit-s" if name != "dinov2-vit-s" else "dinov2-vit-b"
    with pytest.raises(ValueError, match=rf"does not fit {name}: \d+ .* \(e\.g\. .*{ENCODERS[name].files[0]} release$"):
        encoder.load_original_state_dict(release_layout(other))


def test_dinov2_at_512_has_a_32x32_grid():
    with torch.device("meta"):
        encoder = build_encoder("dinov2-vit-b", 512, weight_init="skip")
    encoder.load_original_state_dict(release_layout("dinov2-vit-b"))
    assert encoder.num_tokens() == 1024 and encoder.model.pos_embed.shape == (1, 1025, 768)


@pytest.mark.parametrize(("name", "resolution", "size", "stats"), [
    ("dinov2-vit-b", 256, 224, IMAGENET), ("dinov2-vit-s", 512, 448, IMAGENET), ("clip-vit-L", 256, 224, CLIP),
    ("jepa-vit-h", 256, 224, IMAGENET), ("mocov3-vit-b", 256, 256, IMAGENET), ("mae-vit-l", 256, 256, IMAGENET),
    ("dinov1-vit-b", 256, 256, IMAGENET), ("tiny-vit", 32, 32, IMAGENET),
])  # fmt: skip
def test_preprocessing_is_repas_formula(name, resolution, size, stats):
    """x / 255, the family's mean / std, bicubic resize to 224 * (resolution // 256) or none."""
    with torch.device("meta"):
        encoder = build_encoder(name, resolution, weight_init="skip")
    value = torch.tensor([10, 128, 250], dtype=torch.uint8)
    raw = value.view(1, 3, 1, 1).expand(2, 3, resolution, resolution)
    x = encoder.preprocess(raw)
    assert x.shape == (2, 3, size, size) and x.dtype == torch.float32
    for c in range(3):  # a constant image stays constant under bicubic resampling
        expected = (value[c].item() / 255 - stats[0][c]) / stats[1][c]
        torch.testing.assert_close(x[:, c], torch.full_like(x[:, c], expected), atol=1e-5, rtol=0)
    ramp = (torch.arange(resolution) * 255 / (resolution - 1)).round().expand(1, 3, resolution, resolution)
    assert torch.equal(encoder.preprocess(ramp.to(torch.uint8)), encoder.preprocess(ramp.clone()))
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in stats)
    normalised = (ramp / 255 - mean) / std
    if size != resolution:
        normalised = torch.nn.functional.interpolate(normalised, size=(size, size), mode="bicubic", align_corners=False)
    torch.testing.assert_close(encoder.preprocess(ramp), normalised, atol=1e-5, rtol=0)


def test_tiny_vit_is_frozen_deterministic_and_leaves_the_global_rng_alone(offline_cache):
    state = torch.get_rng_state()
    (a,) = load_encoders("tiny-vit", "cpu", resolution=16)
    assert torch.equal(torch.get_rng_state(), state)
    (b,) = load_encoders("tiny-vit", "cpu", resolution=16)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    other = build_encoder("tiny-vit", 16, seed=1)
    assert not torch.equal(a.model.pos_embed, other.model.pos_embed)
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    raw = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    patches, cls = a(a.preprocess(raw))
    assert patches.shape == (3, a.num_tokens(), a.embed_dim) == (3, 16, 32) and cls.shape == (3, 32)
    assert reg_target(patches, cls).shape == (3, 17, 32)
    torch.testing.assert_close(a(a.preprocess(raw[:1]))[0], patches[:1])


def test_reg_target_puts_the_class_token_first():
    patches, cls = torch.randn(2, 4, 3), torch.randn(2, 3)
    target = reg_target(patches, cls)
    assert torch.equal(target[:, 0], cls) and torch.equal(target[:, 1:], patches)


def test_mocov3_keeps_the_base_encoder_and_repairs_its_key_names():
    t = torch.zeros(1)
    sd = {f"module.base_encoder.{k}": t for k in ("blocks.13.norm13.weight", "blocks.13.mlp.fc13.bias",
                                                   "blocks.14.norm14.bias", "blocks.14.mlp.fc14.weight",
                                                   "blocks.2.norm1.weight", "head.0.weight", "pos_embed")}
    sd |= {"module.momentum_encoder.pos_embed": t, "module.predictor.0.weight": t}
    assert set(to_timm_state_dict("mocov3", {"state_dict": sd})) == {
        "blocks.13.norm1.weight", "blocks.13.mlp.fc1.bias", "blocks.14.norm2.bias", "blocks.14.mlp.fc2.weight",
        "blocks.2.norm1.weight", "pos_embed"}  # fmt: skip


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated; the file format stays
def test_clip_torchscript_release_is_read_as_a_state_dict(tmp_path):
    """OpenAI ships ViT-L-14.pt as a TorchScript archive (clip.load uses torch.jit.load)."""
    holder = nn.Module()
    holder.visual = nn.Linear(2, 2)
    torch.jit.save(torch.jit.script(holder), tmp_path / "ViT-L-14.pt")
    assert set(read_weights(tmp_path / "ViT-L-14.pt")) == {"visual.weight", "visual.bias"}


def narrow(monkeypatch, name: str, **arch) -> None:
    """Make ``load_encoders`` build a narrow copy of ``name`` (the recorded checkpoints are narrow)."""
    monkeypatch.setitem(ENCODERS, name, dataclasses.replace(ENCODERS[name], arch={**ENCODERS[name].arch, **arch}))


def reference() -> dict:
    if not REFERENCE.is_file():
        pytest.skip("tests/fixtures/encoders_reference.pt not recorded (tests/fixtures/record_encoders.py)")
    return torch.load(REFERENCE, weights_only=True)


def test_narrow_originals_give_the_recorded_tokens():
    """Each family, built by the original code and put through REPA's pipeline, against ours (fp32, 1e-5)."""
    ref = reference()
    from fixtures.record_encoders import raw_images

    for name, case in ref["cases"].items():
        encoder = build_encoder(name, case["resolution"], weight_init="skip", **case["arch"])
        encoder.load_original_state_dict(case["checkpoint"])
        with torch.no_grad():
            patches, cls = encoder(encoder.preprocess(raw_images(case["resolution"])))
        assert patches.shape[1] == encoder.num_tokens(), name
        tokens = patches[:, ref["token_index"][case["resolution"]]]
        torch.testing.assert_close(tokens, case["patch"]["tokens"], atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(patches.mean(1), case["patch"]["token_mean"], atol=1e-5, rtol=1e-5, msg=name)
        if case["cls_token"] is not None:  # DINOv2's x_norm_clstoken (REG) and MoCo v3's token 0
            torch.testing.assert_close(cls, case["cls_token"], atol=1e-5, rtol=1e-5, msg=name)


def test_load_encoders_finds_release_and_repa_file_names(offline_cache, monkeypatch, tmp_path):
    ref = reference()
    for name in ("dinov2-vit-g", "mocov3-vit-s"):
        narrow(monkeypatch, name, **ref["cases"][name]["arch"])
    offline_cache.mkdir(parents=True)
    torch.save(ref["cases"]["dinov2-vit-g"]["checkpoint"], offline_cache / "dinov2_vitg14_pretrain.pth")
    repa_ckpts = tmp_path / "ckpts"  # REPA's ./ckpts/mocov3_vit{s}.pth
    repa_ckpts.mkdir()
    torch.save(ref["cases"]["mocov3-vit-s"]["checkpoint"], repa_ckpts / "mocov3_vits.pth")

    dino, = load_encoders("dinov2-vit-g", "cpu", resolution=512)
    moco, = load_encoders("mocov3-vit-s", "cpu", weights_dir=repa_ckpts)
    again, = load_encoders("mocov3-vit-s", "cpu", weights_dir=repa_ckpts / "mocov3_vits.pth")
    assert (dino.num_tokens(), dino.embed_dim, moco.num_tokens()) == (1024, 8, 256)
    assert torch.equal(moco.model.pos_embed, again.model.pos_embed)
    assert not any(p.requires_grad for e in (dino, moco) for p in e.parameters()) and not dino.training
    from fixtures.record_encoders import raw_images

    with torch.no_grad():
        _, cls = dino(dino.preprocess(raw_images(512)))
    torch.testing.assert_close(cls, ref["cases"]["dinov2-vit-g"]["cls_token"], atol=1e-5, rtol=1e-5)


def test_missing_weights_say_which_file_where_and_from_where(offline_cache):
    with pytest.raises(ValueError) as e:
        load_encoders("dinov2-vit-b", "cpu")
    message = str(e.value)
    assert "\n" not in message
    assert "dinov2_vitb14_pretrain.pth" in message and str(offline_cache) in message
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth" in message
    assert not offline_cache.exists() or not any(offline_cache.iterdir())  # nothing half-downloaded


def test_resolution_is_checked_per_encoder(offline_cache):
    with pytest.raises(ValueError, match=r"clip-vit-L at --resolution 512: REPA supports 512 px only with DINOv2"):
        load_encoders("dinov2-vit-b,clip-vit-L", "cpu", resolution=512)
    with pytest.raises(ValueError, match=r"--resolution 384: .* 256 or 512"):
        load_encoders("dinov2-vit-b", "cpu", resolution=384)
    with pytest.raises(ValueError, match=r"tiny-vit needs a multiple of 4"):
        load_encoders("tiny-vit", "cpu", resolution=18)
    with pytest.raises(ValueError, match=r"can serve one encoder"):
        load_encoders("dinov2-vit-b,mae-vit-l", "cpu", weights_dir=__file__)


def test_unreadable_weights_file_says_fetch_it_again(offline_cache, tmp_path):
    broken = tmp_path / "dinov2_vits14_pretrain.pth"
    broken.write_bytes(b"truncated")
    with pytest.raises(ValueError, match=r"could not be read .*fetch it again"):
        load_encoders("dinov2-vit-s", "cpu", weights_dir=broken)
