"""Loading weights for sampling: this repository's checkpoints, the official releases and the originals' own.

A checkpoint written here carries its ``sampling_record`` (``sampling_record``: model, resolution, classes,
codec, prediction, noise schedule or path and time convention, a generator's noise levels), which sampling reads
as it is. Every other format has one named reader (``FORMATS``): the raw state dicts of the releases (official
DiT-XL/2, SiT, REPA's ``last.pt``, DMD2's ImageNet-64 generators), EDM's network pickles, and the checkpoints
that record their training flags instead (REPA's, REG's, REPA-E's, SiT's ``train.py``, and this repository's
before the record), which share one layout and one reader. The flags of the sampling command (``Query``) win
over what a checkpoint says; a SiT's projector sizes, class token, qk-norm and learned-sigma half are read from
its weights.
"""

from __future__ import annotations

import os
from argparse import Namespace
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from common.checkpoint import load_checkpoint
from diffusion import NOISE_SCHEDULES
from models import create_model, hub
from models.weights import load_weights, model_state_dict

OFFICIAL = {256: "DiT-XL-2-256x256.pt", 512: "DiT-XL-2-512x512.pt"}
SIT_PATH_TYPES = {"Linear": "linear", "GVP": "cosine"}  # SiT's train.py --path-type -> REPA's path of that shape
REPAE_VAES = ("f8d4", "f16d32", "tiny-f4d4")  # the trainable VAEs of models/vae.py (REPA-E)
OFFICIAL_URL = "https://dl.fbaipublicfiles.com/DiT/models/{}"
SIT_RELEASE = "SiT-XL-2-256x256.pt"  # SiT's download.py: its one release, fetched from this address
SIT_RELEASE_URL = ("https://www.dl.dropboxusercontent.com/scl/fi/as9oeomcbub47de5g4be0/SiT-XL-2-256.pt"
                   "?rlkey=uxzxmpicu46coq3msb17b9ofa&dl=0")
PRETRAINED_DIR = Path(os.environ.get("DIFFUSION_LAB_PRETRAINED", "pretrained_models"))


def find_official(image_size: int, model: str = "DiT-XL/2") -> Path:
    """The official DiT-XL/2 file (or SiT-XL/2's release, 256 px only): in the working folder, in
    ``pretrained_models/``, or downloaded there."""
    sit = model == "SiT-XL/2"
    if model not in ("DiT-XL/2", "SiT-XL/2"):
        raise ValueError(f"only DiT-XL/2 and SiT-XL/2 have official weights, not {model}; pass --ckpt")
    if image_size not in ((256,) if sit else OFFICIAL):
        raise ValueError(f"official {model} weights exist for --image-size {'256' if sit else '256 or 512'}, not "
                         f"{image_size}; pass --ckpt for your own model")
    name = SIT_RELEASE if sit else OFFICIAL[image_size]
    url = SIT_RELEASE_URL if sit else OFFICIAL_URL.format(name)
    for candidate in (Path(name), PRETRAINED_DIR / name):
        if candidate.is_file():
            return candidate
    target = PRETRAINED_DIR / name
    if not hub.download(url, target):
        where = " (or from huggingface.co/nyu-visionx/SiT-collections)" if sit else ""
        raise ValueError(f"{name} is not in ./ or {PRETRAINED_DIR}/ and cannot be downloaded; fetch {url}{where} "
                         f"and put it in {PRETRAINED_DIR}/ (or pass --ckpt)")
    return target


# DMD2's ImageNet-64 network (main/edm/edm_network.py): EDM's ADM with dropout off; its released generators are
# raw EDMPrecond state dicts of it, sampled in one step from sigma 80 (DMD2's --conditioning_sigma)
EDM_IMAGENET64 = dict(img_resolution=64, img_channels=3, label_dim=1000, use_fp16=False, sigma_min=0,
                      sigma_max=float("inf"), sigma_data=0.5, model_type="DhariwalUNet", augment_dim=0,
                      model_channels=192, channel_mult=[1, 2, 3, 4], channel_mult_emb=4, num_blocks=3,
                      attn_resolutions=[32, 16, 8], dropout=0.0, label_dropout=0)
DMD2_CONDITIONING_SIGMA = 80.0


def merge_lora(state_dict: dict, scale: float) -> dict:
    """A plain state dict from one with peft LoRA adapters (``train_dmd2.py --generator_lora``): each adapted
    layer's ``W = W_base + scale B A`` (``scale = lora_alpha / lora_rank``; for a convolution, B is 1x1)."""
    from models.lora import lora_delta

    merged = {}
    for key, value in state_dict.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        if ".base_layer." not in key:
            merged[key] = value
            continue
        layer, name = key.split(".base_layer.")
        merged[f"{layer}.{name}"] = value
        if name == "weight":
            down, up = state_dict[f"{layer}.lora_A.default.weight"], state_dict[f"{layer}.lora_B.default.weight"]
            merged[f"{layer}.{name}"] = (value.float() + scale * lora_delta(down, up)).to(value.dtype)
    return merged


def is_edm_weights(state_dict: dict) -> bool:
    """EDMPrecond's names (``model.enc.64x64_conv.weight``, ``model.map_noise``...)."""
    return any(k.startswith("model.enc.") for k in state_dict) and "model.out_conv.weight" in state_dict


def edm_config(path: Path, kwargs: dict, generator_sigmas=None) -> dict:
    """The sampling config of an EDM network (pixel space, no VAE)."""
    kwargs = {k: v for k, v in kwargs.items() if k not in ("class_name", "in_channels", "input_size")}
    if generator_sigmas:  # a distilled generator samples in fp32, as DMD2 evaluates (main/edm/test_folder_edm.py)
        kwargs["use_fp16"] = False
    cfg = {"model": "EDM", "image_size": kwargs["img_resolution"], "num_classes": kwargs.get("label_dim", 0),
           "vae": "none", "ckpt": str(path), "dataset": None, "model_kwargs": kwargs}
    if generator_sigmas:
        cfg["generator_sigmas"] = [float(s) for s in generator_sigmas]
    return cfg


@dataclass
class Query:
    """What a sampling command says about its checkpoint (None: what the checkpoint records, then the default):
    ``ckpt`` (None: the official DiT-XL/2 at ``image_size``), the model, resolution, classes and VAE, the SiT's
    interpolant path and REPA's encoder depth, projector sizes, REG's class token and ``--legacy`` blocks."""

    ckpt: str | None = None
    model: str | None = None
    image_size: int | None = None
    num_classes: int | None = None
    vae: str | None = None
    path_type: str | None = None
    encoder_depth: int | None = None
    projector_embed_dims: str | None = None
    cls: int | None = None
    legacy: bool = False
    default_model: str = "DiT-XL/2"
    default_vae: str = "ema"

    @classmethod
    def of(cls, args) -> Query:
        """The query of a script's parsed flags (those it has)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None})


def sampling_record(network, model: str, image_size: int, num_classes: int, vae: str, *, dataset=None,
                    noise_schedule: str | None = None, path_type: str | None = None, vae_weights=None,
                    **extra) -> dict:
    """What a checkpoint of this repository records for sampling it (``ckpt["sampling_record"]``, written by the
    method): the model, resolution, classes, dataset and codec (``vae``; REPA-E's VAEs: ``vae_weights``, "vae"
    for the checkpoint's own tuned VAE or the file it trained on), what the network predicts, its DDPM noise
    schedule (eps) or interpolant path and time convention (velocity); ``extra``: a generator's noise levels,
    LoRA scale."""
    from diffusion.network import contract

    declared = contract(network)
    prediction = declared.prediction
    record = {"model": model, "image_size": image_size, "num_classes": num_classes, "vae": vae, "dataset": dataset,
              "prediction": prediction}
    if prediction == "eps":
        record["noise_schedule"] = noise_schedule or "linear"
    if prediction == "velocity" or declared.transport:
        record.update(path_type=path_type or "linear", time_convention=getattr(network, "time_convention", "repa"))
    if declared.transport:  # SiT's own transport: its path, target and eps
        record["transport"] = dict(declared.transport)
    if vae_weights is not None:
        record["vae_weights"] = vae_weights
    return {**record, **extra}


def resolve_sampling_config(args) -> tuple[dict, dict]:
    """``sampling_config`` of a sampling script's flags."""
    return sampling_config(Query.of(args))


def sampling_config(query: Query) -> tuple[dict, dict]:
    """``(state dict, settings)`` to sample a checkpoint with: the query's flags over what the checkpoint
    records (``read_record``), over the official defaults."""
    if query.ckpt is None:
        path = find_official(query.image_size or 256, query.model or query.default_model)
    else:
        path = Path(query.ckpt)
    if path.suffix == ".pkl":  # EDM's network pickle (edm-imagenet-64x64-cond-adm.pkl, network-snapshot-*.pkl)
        from models.edm_pickle import load_edm_pickle

        state_dict, init_kwargs = load_edm_pickle(path)
        return state_dict, edm_config(path, init_kwargs)
    ckpt = load_checkpoint(path)
    state_dict = model_state_dict(ckpt, prefer="ema")
    fmt, record = read_record(ckpt, state_dict, query)
    if record.get("model") == "diffusers":
        teacher = record.get("sd_model", "a Stable Diffusion teacher")
        raise ValueError(f"{path} is a text-to-image generator (train_dmd2.py on {teacher}): sample it with "
                         f"sample.py --ckpt {path} --prompt 'a prompt'")
    if record.get("model") and query.model and query.model != record["model"]:
        raise ValueError(f"{path} holds a {record['model']} (it was trained with --model {record['model']}), not a "
                         f"{query.model}: leave out --model")
    defaults = {"model": query.default_model, "image_size": 256, "num_classes": 1000, "vae": query.default_vae}
    cfg = {k: next(x for x in (getattr(query, k), record.get(k), v) if x is not None) for k, v in defaults.items()}
    if cfg["model"].startswith("SiT-") and path.name in OFFICIAL.values():
        raise ValueError(f"{path.name} is the official DiT-XL/2 release, not a SiT: sample it with --model DiT-XL/2 "
                         "and --sampler ddpm or ddim")
    if "lora_alpha" in record:  # a LoRA generator (train_dmd2.py --generator_lora)
        state_dict = merge_lora(state_dict, float(record["lora_alpha"]) / float(record["lora_rank"]))
    if record.get("prediction") == "x0":  # EDM: ours (from train_dmd2.py) or DMD2's released generator
        return state_dict, edm_config(path, record["model_kwargs"], record.get("generator_sigmas"))
    cfg.update(ckpt=str(path), dataset=record.get("dataset"), format=fmt)
    if record.get("generator_sigmas"):  # a distilled generator (train_dmd2.py)
        cfg["generator_sigmas"] = [float(s) for s in record["generator_sigmas"]]
    if cfg["vae"] in REPAE_VAES:  # REPA-E: the tuned VAE is in the checkpoint, or (ldm-only) in --vae-ckpt
        weights = record.get("vae_weights")
        cfg["vae_weights"] = ckpt["vae"] if weights == "vae" and isinstance(ckpt.get("vae"), dict) else weights
    if cfg["model"].startswith("SiT-"):
        state_dict = legacy_blocks(state_dict, record, query)
        cfg["model_kwargs"] = sit_kwargs(state_dict, record, query)
        cfg["model_kwargs"]["time_convention"] = record.get("time_convention") or "repa"
        if record.get("transport"):
            cfg["model_kwargs"]["transport"] = record["transport"]
        cfg["path_type"] = query.path_type or record.get("path_type") or "linear"
    else:
        cfg["model_kwargs"] = recorded_shape(ckpt) if cfg["model"].startswith("UNet") else {}
        cfg["noise_schedule"] = NOISE_SCHEDULES[record.get("noise_schedule") or "linear"]
    return state_dict, cfg


def read_record(ckpt, state_dict: dict, query: Query) -> tuple[str, dict]:
    """``(format, what the checkpoint says about sampling it)``: this repository's own record, else one reader
    per foreign format, which the checkpoint's shape names (``FORMATS``)."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("sampling_record"), dict):
        return "diffusion-lab", {**trained_flags(ckpt), **ckpt["sampling_record"]}
    for name, (matches, read) in FORMATS.items():
        if matches(ckpt, state_dict, query):
            return name, read(ckpt, state_dict, query)
    raise ValueError("no reader for this checkpoint")  # "flags" matches every checkpoint that records its flags


def trained_flags(ckpt) -> dict:
    """The flags a checkpoint was trained with (``args``, a dict or an argparse Namespace), REPA's / REG's
    ``--resolution`` as ``image_size``."""
    trained = ckpt.get("args") if isinstance(ckpt, dict) else None
    trained = dict(vars(trained) if isinstance(trained, Namespace) else trained or {})
    if "image_size" not in trained and "resolution" in trained:
        trained["image_size"] = trained["resolution"]
    return trained


def _raw(ckpt) -> bool:
    return not trained_flags(ckpt)


def read_dmd2_release(ckpt, state_dict, query) -> dict:
    """DMD2's released ImageNet-64 generators: raw EDMPrecond state dicts, one step from sigma 80."""
    return {"model": "EDM", "prediction": "x0", "model_kwargs": EDM_IMAGENET64,
            "generator_sigmas": [DMD2_CONDITIONING_SIGMA]}


def read_release(ckpt, state_dict, query) -> dict:
    """Raw state dicts: the official DiT-XL/2 files, SiT's release (SiT's time: the learned-sigma half and no
    projectors) and REPA's ``last.pt`` (projectors; REPA's time); which network, the flags say."""
    out, embed = state_dict.get("final_layer.linear.weight"), state_dict.get("x_embedder.proj.weight")
    sit_release = out is not None and embed is not None and "projectors.0.0.weight" not in state_dict and \
        out.shape[0] == 2 * embed.shape[1] * embed.shape[-1] ** 2
    return {"time_convention": "sit" if sit_release else "repa"}


def read_flags(ckpt, state_dict, query) -> dict:
    """Checkpoints that record their training flags: REPA's, REG's, REPA-E's, SiT's ``train.py`` (its
    capitalised ``--path-type``: SiT's time), DiT-style ones, and this repository's before it wrote a sampling
    record (a generator's noise levels, its network's arguments and an EDM network beside the flags)."""
    trained = trained_flags(ckpt)
    record = {k: trained[k] for k in ("model", "image_size", "num_classes", "vae", "dataset", "noise_schedule",
                                      "encoder_depth", "bn_momentum", "lora_alpha", "lora_rank") if k in trained}
    if trained.get("model", "").startswith("SiT-"):
        sit_time = trained.get("path_type") in (*SIT_PATH_TYPES, "VP")  # SiT's capitalised names: its time
        record.update(sit_path(trained), time_convention="sit" if sit_time else "repa")
    if trained.get("vae") in REPAE_VAES:
        record["vae_weights"] = "vae" if isinstance(ckpt.get("vae"), dict) else trained.get("vae_ckpt")
    recorded = ckpt.get("model_kwargs") or {}
    if "time_convention" in recorded:  # a SiT generator of train_dmd2.py
        record["time_convention"] = recorded["time_convention"]
    if ckpt.get("generator_sigmas"):
        record["generator_sigmas"] = ckpt["generator_sigmas"]
    if trained.get("model") == "EDM" or is_edm_weights(state_dict):
        record.update(prediction="x0", model_kwargs=recorded)
    return record


def sit_path(trained: dict) -> dict:
    """The interpolant path a SiT was trained on: REPA's ``--path-type`` (linear, cosine) or SiT's
    ``train.py`` ones (Linear, GVP: the same paths in SiT's time), linear when unrecorded. SiT's VP path and
    score or noise targets also record SiT's transport, which only SiT's samplers read."""
    path_type, prediction = trained.get("path_type") or "linear", trained.get("prediction", "v")
    record = {"path_type": SIT_PATH_TYPES.get(path_type, path_type)}
    if path_type == "VP" or prediction not in ("v", "velocity"):
        from diffusion.sit_transport import create_transport

        made = create_transport(path_type, prediction, trained.get("loss_weight"), trained.get("train_eps"),
                                trained.get("sample_eps"))
        record["transport"] = {"path_type": path_type, "prediction": prediction, "loss_weight": made.loss_weight,
                               "train_eps": made.train_eps, "sample_eps": made.sample_eps}
    return record


# The foreign formats, in the order they are told apart: name -> (matches(ckpt, state_dict, query), reader).
FORMATS = {
    "DMD2 release": (lambda ckpt, sd, q: _raw(ckpt) and is_edm_weights(sd), read_dmd2_release),
    "DiT / SiT / REPA release": (lambda ckpt, sd, q: _raw(ckpt), read_release),
    "flags": (lambda ckpt, sd, q: True, read_flags),
}


def load_codec(cfg: dict, device) -> torch.nn.Module:
    """The decoder for ``cfg["vae"]``: REPA-E's VAE architectures (``f8d4``, ``f16d32``) with the checkpoint's
    tuned weights (or the ``--vae-ckpt`` it trained on), else ``models.vae.load_vae``."""
    from models.vae import VAE_models, VAECodec, load_vae, load_vae_weights

    if cfg["vae"] not in REPAE_VAES:
        return load_vae(cfg["vae"], device)
    if cfg.get("vae_weights") is None:
        raise ValueError(f"{cfg['ckpt']}: a {cfg['vae']} VAE, but neither the checkpoint nor its args say which "
                         "weights; sample a train_repae.py / train_ldm_only.py checkpoint")
    vae = VAE_models[cfg["vae"]]()
    load_vae_weights(vae, cfg["vae_weights"])
    return VAECodec(vae.to(device).eval())


def legacy_blocks(state_dict: dict, trained: dict, query: Query) -> dict:
    """REPA's ``--legacy``: its first checkpoints split the blocks into ``blocks`` (the first
    ``encoder_depth``) and ``decoder_blocks``; ``decoder_blocks.N`` is ``blocks.(N + encoder_depth)``."""
    legacy = any(k.startswith("decoder_blocks.") for k in state_dict)
    if not query.legacy:
        if legacy:
            raise ValueError("this is one of REPA's legacy checkpoints (decoder_blocks.*): pass --legacy and its "
                             "--encoder-depth, as REPA's generate.py needs")
        return state_dict
    if not legacy:
        raise ValueError("--legacy: the checkpoint has no decoder_blocks.* to rename; leave the flag out")
    depth = query.encoder_depth or trained.get("encoder_depth")
    if depth is None:
        raise ValueError("--legacy needs --encoder-depth (where REPA's legacy checkpoint splits its blocks)")
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith("decoder_blocks."):
            _, index, rest = key.split(".", 2)
            key = f"blocks.{int(index) + int(depth)}.{rest}"
        renamed[key] = value
    return renamed


def sit_kwargs(state_dict: dict, trained: dict, query: Query) -> dict:
    """SiT arguments from the weights (projectors, class token, qk-norm, learned sigma), checked
    against ``--projector-embed-dims`` / ``--cls`` when given, plus the encoder depth."""
    z_dims = []
    while f"projectors.{len(z_dims)}.4.weight" in state_dict:
        z_dims.append(int(state_dict[f"projectors.{len(z_dims)}.4.weight"].shape[0]))
    cls_dim = int(state_dict["cls_projectors2.weight"].shape[1]) if "cls_projectors2.weight" in state_dict else None
    given = query.projector_embed_dims
    if given is not None and [int(z) for z in str(given).split(",")] != z_dims:
        raise ValueError(f"--projector-embed-dims {given} does not match the checkpoint, whose projectors give "
                         f"{','.join(map(str, z_dims)) or 'nothing (plain SiT)'}; pass that or leave the flag out")
    given_cls = query.cls
    if given_cls is not None and cls_dim is not None and given_cls != cls_dim:
        raise ValueError(f"--cls {given_cls} does not match the checkpoint's class token size {cls_dim} "
                         "(REG: the encoder's dimension, 768 for DINOv2-B); pass --cls {cls_dim}")
    channels = state_dict["x_embedder.proj.weight"].shape[1]
    patch = state_dict["x_embedder.proj.weight"].shape[-1]
    out_channels = state_dict["final_layer.linear.weight"].shape[0] // (patch * patch)
    kwargs = dict(z_dims=z_dims, cls_token_dim=cls_dim, learn_sigma=out_channels == 2 * channels,
                  qk_norm="blocks.0.attn.q_norm.weight" in state_dict)
    if "bn.running_var" in state_dict:  # REPA-E's latent BatchNorm: sampling de-normalises with its statistics
        kwargs["bn_momentum"] = float(trained.get("bn_momentum", 0.1))
    depth = query.encoder_depth or trained.get("encoder_depth")
    if depth is not None:
        kwargs["encoder_depth"] = int(depth)
    return kwargs


def recorded_shape(ckpt: dict) -> dict:
    """A U-Net's shape (channels, multipliers, embeddings) as train.py recorded it in ``model_kwargs``."""
    recorded = ckpt.get("model_kwargs", {}) if isinstance(ckpt, dict) else {}
    return {k: v for k, v in recorded.items() if k not in ("input_size", "num_classes", "in_channels")}


def build_for_sampling(state_dict: dict, cfg: dict, codec, device) -> torch.nn.Module:
    """Create the model for ``cfg`` and load ``state_dict`` strictly; error names the mismatch."""
    if cfg["model"] == "EDM":
        from models.edm_unet import EDMPrecond

        with torch.device("meta"):
            model = EDMPrecond(**cfg["model_kwargs"])
        load_weights(model, state_dict, cfg["ckpt"], assign=True)
        if cfg.get("generator_sigmas"):
            model.generator_sigmas = cfg["generator_sigmas"]
        return model.to(device).eval()
    if cfg["image_size"] % 8 != 0:
        raise ValueError(f"--image-size {cfg['image_size']} is not divisible by 8")
    table = state_dict.get("y_embedder.embedding_table.weight")
    dropout = {} if table is None or len(table) > cfg["num_classes"] else {"class_dropout_prob": 0.0}  # no null class
    with torch.device("meta"):
        model = create_model(cfg["model"], input_size=cfg["image_size"] // codec.downsample,
                             num_classes=cfg["num_classes"], in_channels=codec.latent_channels,
                             **{**cfg.get("model_kwargs", {}), **dropout})
    load_weights(model, state_dict, cfg["ckpt"], assign=True)
    if cfg.get("generator_sigmas"):
        model.generator_sigmas = cfg["generator_sigmas"]
    return model.to(device).eval()
