"""SiT / REPA / REG against the original code (recorded by tests/fixtures/record_sit_reference.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models import MODEL_NAMES, create_model
from models.dit import DiT
from models.sit import SiT, SiT_models

FIXTURES = Path(__file__).parent / "fixtures"
KEYS = json.loads((FIXTURES / "sit_keys.json").read_text())
DIT_KEYS = json.loads((FIXTURES / "dit_keys.json").read_text())
REF = torch.load(FIXTURES / "sit_tiny_reference.pt")
TOL = dict(atol=1e-5, rtol=1e-5)
DIT_TOL = dict(atol=2e-4, rtol=1e-5)  # the DiT fixture's outputs are larger: see tests/test_models.py


def build_meta(config: dict) -> SiT:
    with torch.device("meta"):
        return create_model(config["name"], **config["kwargs"])


def original_tiny(key: str) -> SiT:
    """Our model with the weights of the recorded tiny REPA or REG model."""
    ref = REF[key]
    config = {k: v for k, v in ref["config"].items() if k != "decoder_hidden_size"}
    if key == "reg":
        config["cls_token_dim"] = config["z_dims"][0]
    model = SiT(**config)
    assert torch.equal(
        model.pos_embed.data, ref["state_dict"]["pos_embed"]
    )  # same fixed table (REG: zero row)
    model.load_state_dict({k: v.float() for k, v in ref["state_dict"].items()}, strict=True)
    return model


def randomised(model: SiT) -> SiT:
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("config", list(KEYS["configs"]))
def test_state_dict_keys_shapes_order_and_counts_match_original(config):
    ref = KEYS["configs"][config]
    model = build_meta(ref)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == ref["keys"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == ref["num_trainable"]
    assert sum(p.numel() for p in model.projectors.parameters()) == ref["num_projector_params"]


@pytest.mark.parametrize("config", list(KEYS["configs"]))
def test_original_checkpoint_layout_loads_strict(config):
    ref = KEYS["configs"][config]
    model = build_meta(ref)
    state = {k: torch.zeros(shape, device="meta") for k, shape in ref["keys"]}
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_released_xl2_parameter_counts():
    repa, reg = KEYS["configs"]["REPA SiT-XL/2"], KEYS["configs"]["REG SiT-XL/2"]
    assert repa["num_params"] == 683_242_512
    assert repa["num_params"] - repa["num_projector_params"] == 675_111_184  # DiT-XL/2 minus the sigma half
    assert reg["num_params"] == 685_017_360
    assert reg["num_params"] - reg["num_projector_params"] == 676_886_032  # REG paper: 677M


@pytest.mark.parametrize("size", ["XL", "L", "B", "S"])
@pytest.mark.parametrize("patch", [2, 4, 8])
def test_learn_sigma_sit_has_dit_layout(size, patch):
    """The original SiT checkpoints (SiT-XL-2-256x256.pt) have DiT's keys: learned sigma, no projectors."""
    ref = DIT_KEYS["configs"][f"DiT-{size}/{patch}@32"]
    with torch.device("meta"):
        model = create_model(f"SiT-{size}/{patch}", input_size=32, z_dims=(), learn_sigma=True)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == ref["keys"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]


def test_learn_sigma_sit_returns_the_first_half_of_original_dit_output():
    """Original SiT = DiT's network with the sigma half dropped; checked on the recorded DiT outputs."""
    ref = torch.load(FIXTURES / "dit_tiny_reference.pt")
    model = SiT(**ref["config"], z_dims=(), learn_sigma=True).eval()
    model.load_state_dict({k: v.float() for k, v in ref["state_dict"].items()}, strict=True)
    with torch.no_grad():
        out, zs = model(ref["x"], ref["t"].float(), ref["y"])
    assert zs == [] and out.shape == (8, 4, 8, 8)
    torch.testing.assert_close(out, ref["out"][:, :4], **DIT_TOL)


def test_tiny_repa_matches_original_outputs():
    ref = REF["repa"]
    model = original_tiny("repa")
    with torch.no_grad():
        out, zs = model.eval()(REF["x"], REF["t"], REF["y"])
        torch.testing.assert_close(out, ref["out"], **TOL)
        assert [z.shape for z in zs] == [(8, 16, 8), (8, 16, 12)]  # one per encoder, after block 2
        torch.testing.assert_close(zs, ref["zs"], **TOL)
        torch.manual_seed(REF["train_seed"])  # label dropout draws the same random numbers as the original
        out, zs = model.train()(REF["x"], REF["t"], REF["y"])
        torch.testing.assert_close(out, ref["out_train"], **TOL)
        torch.testing.assert_close(zs, ref["zs_train"], **TOL)


def test_tiny_reg_matches_original_outputs():
    ref = REF["reg"]
    model = original_tiny("reg")
    with torch.no_grad():
        out, zs, cls_out = model.eval()(REF["x"], REF["t"], REF["y"], cls_token=ref["cls_token"])
        assert zs[0].shape == (8, 17, 12) and cls_out.shape == (8, 12)  # zs cover the class token too
        torch.testing.assert_close(out, ref["out"], **TOL)
        torch.testing.assert_close(zs, ref["zs"], **TOL)
        torch.testing.assert_close(cls_out, ref["cls_out"], **TOL)
        torch.manual_seed(REF["train_seed"])
        out, zs, cls_out = model.train()(REF["x"], REF["t"], REF["y"], cls_token=ref["cls_token"])
        torch.testing.assert_close(out, ref["out_train"], **TOL)
        torch.testing.assert_close(zs, ref["zs_train"], **TOL)
        torch.testing.assert_close(cls_out, ref["cls_out_train"], **TOL)


def test_plain_sit_is_repa_without_projectors():
    ref = REF["repa"]
    config = {k: v for k, v in ref["config"].items() if k not in ("decoder_hidden_size", "z_dims")}
    model = SiT(**config, z_dims=()).eval()
    state = {k: v.float() for k, v in ref["state_dict"].items() if not k.startswith("projectors.")}
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out, zs = model(REF["x"], REF["t"], REF["y"])
    assert zs == []
    torch.testing.assert_close(out, ref["out"], **TOL)


def test_label_dropout_replaces_labels_by_the_null_class():
    model = randomised(
        SiT(
            input_size=8,
            hidden_size=32,
            depth=2,
            num_heads=4,
            num_classes=10,
            z_dims=(8,),
            encoder_depth=1,
            projector_dim=16,
            class_dropout_prob=1.0,
        )
    )
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([0.1, 0.5, 0.9])
    with torch.no_grad():
        dropped, zs_dropped = model.train()(x, t, torch.tensor([0, 4, 9]))
        null, zs_null = model.eval()(x, t, torch.full((3,), 10))
        kept, _ = model.eval()(x, t, torch.tensor([0, 4, 9]))
    assert model.y_embedder.embedding_table.num_embeddings == 11
    torch.testing.assert_close(dropped, null)
    torch.testing.assert_close(zs_dropped, zs_null)
    assert not torch.allclose(kept, null)  # eval mode keeps the labels


def test_adaln_zero_init_gives_zero_outputs_and_reg_cls_row_is_zero():
    torch.manual_seed(0)
    model = create_model("SiT-Ti/2", input_size=8, num_classes=10, z_dims=(12,), cls_token_dim=12).eval()
    assert model.pos_embed.shape == (1, 17, 64) and model.pos_embed[0, 0].eq(0).all()
    assert not model.pos_embed.requires_grad
    out, zs, cls_out = model(
        torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 10]), torch.randn(2, 12)
    )
    assert out.eq(0).all() and cls_out.eq(0).all()
    assert zs[0].shape == (2, 17, 12) and zs[0].abs().sum() > 0  # projectors are xavier, not zero


def test_qk_norm_normalises_each_head():
    model = create_model("SiT-Ti/2", input_size=8, qk_norm=True)
    attn = model.blocks[0].attn
    assert isinstance(attn.q_norm, torch.nn.LayerNorm) and attn.q_norm.normalized_shape == (16,)
    assert [k for k in attn.state_dict()] == [
        "qkv.weight",
        "qkv.bias",
        "q_norm.weight",
        "q_norm.bias",
        "k_norm.weight",
        "k_norm.bias",
        "proj.weight",
        "proj.bias",
    ]
    assert list(create_model("DiT-Ti/2", input_size=8).blocks[0].attn.state_dict()) == [
        "qkv.weight",
        "qkv.bias",
        "proj.weight",
        "proj.bias",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(encoder_depth=0), "encoder_depth 0 must be between 1 and depth 2"),
        (dict(encoder_depth=3), "encoder_depth 3 must be between 1 and depth 2"),
        (dict(z_dims=(768, 0)), "z_dims must be positive"),
        (dict(z_dims=(), cls_token_dim=768), r"cls_token_dim 768 must equal z_dims\[0\]"),
        (dict(z_dims=(1024,), cls_token_dim=768), r"pass z_dims=\[768\]"),
    ],
)
def test_bad_configurations_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        create_model("SiT-Ti/2", input_size=8, **kwargs)
    assert "\n" not in str(err.value)


def test_plain_sit_ignores_encoder_depth():
    model = create_model("SiT-Ti/2", input_size=8, z_dims=(), encoder_depth=99)
    assert len(model.projectors) == 0


def test_class_token_must_match_the_model():
    x, t, y = torch.randn(1, 4, 8, 8), torch.rand(1), torch.tensor([0])
    reg = create_model("SiT-Ti/2", input_size=8, z_dims=(12,), cls_token_dim=12)
    with pytest.raises(ValueError, match="REG model .* pass cls_token"):
        reg(x, t, y)
    repa = create_model("SiT-Ti/2", input_size=8, z_dims=(12,))
    with pytest.raises(ValueError, match="cls_token given to a model without one"):
        repa(x, t, y, cls_token=torch.randn(1, 12))


def test_registry_sizes_and_create_model():
    expected = {
        "XL": (28, 1152, 16),
        "L": (24, 1024, 16),
        "B": (12, 768, 12),
        "S": (12, 384, 6),
        "Ti": (2, 64, 4),
        "Demo": (6, 128, 4),
    }
    assert set(SiT_models) <= set(MODEL_NAMES)
    assert {"SiT-Ti/1", "SiT-Ti/2", "SiT-Ti/4", "SiT-Demo/2", "SiT-Demo/4", "SiT-Demo/8"} <= set(SiT_models)
    for name, ctor in SiT_models.items():
        size, patch = name[len("SiT-") :].split("/")
        assert (ctor.keywords["depth"], ctor.keywords["hidden_size"], ctor.keywords["num_heads"]) == expected[
            size
        ]
        assert ctor.keywords["patch_size"] == int(patch)
    with torch.device("meta"):
        model = create_model(
            "SiT-XL/2", input_size=32, num_classes=1000, z_dims=[768], encoder_depth=8, cls_token_dim=768
        )
    assert isinstance(model, SiT) and not isinstance(model, DiT)
    assert model.encoder_depth == 8 and model.z_dims == (768,) and model.cls_token_dim == 768
    assert create_model("SiT-Demo/4", input_size=16).encoder_depth == 2  # tiny defaults fit their depth


def test_legacy_repa_checkpoints_load_with_legacy_and_are_named_without(tmp_path):
    import argparse

    from models.pretrained import resolve_sampling_config

    model = create_model("SiT-Ti/4", input_size=16, num_classes=10, in_channels=3, z_dims=[32], encoder_depth=1)
    weights = model.state_dict()
    legacy = {(f"decoder_blocks.{int(k.split('.')[1]) - 1}.{k.split('.', 2)[2]}"
               if k.startswith("blocks.") and int(k.split(".")[1]) >= 1 else k): v for k, v in weights.items()}
    assert any(k.startswith("decoder_blocks.0.") for k in legacy)
    ckpt = tmp_path / "legacy.pt"
    torch.save(legacy, ckpt)  # REPA's raw state dict, as its first releases

    def resolve(**flags):
        args = argparse.Namespace(ckpt=str(ckpt), model="SiT-Ti/4", image_size=16, num_classes=10, vae="none",
                                  default_vae="ema", path_type=None, projector_embed_dims=None, cls=None, **flags)
        return resolve_sampling_config(args)

    state_dict, _ = resolve(legacy=True, encoder_depth=1)
    assert state_dict.keys() == weights.keys()
    assert all(torch.equal(state_dict[k], weights[k]) for k in weights)
    with pytest.raises(ValueError, match="legacy checkpoints .*pass --legacy"):
        resolve(legacy=False, encoder_depth=1)
    torch.save(weights, ckpt)
    with pytest.raises(ValueError, match="no decoder_blocks"):
        resolve(legacy=True, encoder_depth=1)
