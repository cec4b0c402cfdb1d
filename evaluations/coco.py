"""DMD2's text-to-image FID (``main/coco_eval/coco_evaluator.py`` ``compute_fid``, on its copy of clean-fid).

Every image, generated or a file of the reference folder (COCO val2014 for SD1.5, DMD2's COCO-10k subset for SDXL),
goes through DMD2's transform, then clean-fid's "clean" resize, then the Inception pool features:

1. DMD2's transform: a centre crop to the short side (``CenterCropLongEdge``) and a Lanczos resize to ``eval_res``
   (256 for SD1.5, 512 for SDXL); or, for the patch FID, a centre 299 x 299 crop of images at least that large.
2. clean-fid's resize: each channel as a float32 PIL image, bicubic to 299 x 299, clipped to [0, 255]
   (``make_resizer("PIL", False, "bicubic", (299, 299))``), no quantisation.
3. The pool_3 features of the 2015-12-05 Inception graph, whose port ``evaluations/inception.py`` is (clean-fid's
   torchscript holds the same graph); at 299 px its own resize is the identity.

The Fréchet distance of the two feature sets is ``evaluations.frechet``'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLEAN_SIZE = 299
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}  # clean-fid's EXTENSIONS, as files


def dmd2_transform(image: np.ndarray, eval_res: int | None, patch: bool = False) -> np.ndarray:
    """DMD2's ``resize_and_center_crop`` of one uint8 HWC image."""
    from torchvision.transforms import functional

    pil = Image.fromarray(image)
    if patch:
        return np.array(functional.center_crop(pil, CLEAN_SIZE) if min(pil.size) >= CLEAN_SIZE else pil)
    pil = functional.center_crop(pil, min(pil.size))
    if eval_res is not None:
        pil = pil.resize((eval_res, eval_res), Image.LANCZOS)
    return np.array(pil)


def clean_resize(image: np.ndarray, size: int = CLEAN_SIZE) -> np.ndarray:
    """clean-fid's "clean" resize of one uint8 HWC image: per channel, float32 PIL bicubic, clipped (float32 HWC)."""
    channels = [np.asarray(Image.fromarray(image[:, :, c].astype(np.float32), mode="F").resize(
        (size, size), resample=Image.BICUBIC)).clip(0, 255) for c in range(3)]
    return np.stack(channels, axis=2).astype(np.float32)


def reference_files(folder: str) -> list[Path]:
    """The image files of a reference folder (sorted, recursively, as clean-fid lists them)."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--ref_dir {folder}: no such folder (DMD2's COCO reference images, e.g. val2014/)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"--ref_dir {folder}: no images in it")
    return files


def clean_features(images, model, eval_res: int | None, patch: bool = False, batch_size: int = 32) -> np.ndarray:
    """pool_3 features (N, 2048, float64) of uint8 HWC images (arrays or files) after DMD2's transform and clean-fid's
    resize."""
    import torch

    device = next(model.parameters()).device
    out, batch = [], []

    def flush():
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(device)
        with torch.no_grad():
            out.append(model(x)[0].double().cpu().numpy())
        batch.clear()

    for item in images:
        image = np.array(Image.open(item).convert("RGB")) if isinstance(item, (str, Path)) else np.asarray(item)
        batch.append(clean_resize(dmd2_transform(image, eval_res, patch)))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.concatenate(out)


def coco_fid(generated: np.ndarray, ref_dir: str, model, eval_res: int | None, patch: bool = False) -> float:
    """DMD2's COCO FID of uint8 NHWC ``generated`` against the images in ``ref_dir``."""
    from evaluations.features import compute_statistics
    from evaluations.frechet import frechet_distance

    fake = clean_features(generated, model, eval_res, patch)
    real = clean_features(reference_files(ref_dir), model, eval_res, patch)
    return float(frechet_distance(*compute_statistics(fake), *compute_statistics(real)))


CLIP_MODEL, CLIP_WEIGHTS = "ViT-g-14", "laion2b_s12b_b42k"  # DMD2's "ViT-G/14" CLIP score
PREFIX = "A photo depicts "  # DMD2 prepends it to every caption (arXiv 2104.08718)


def load_clip(device="cpu", name: str = CLIP_MODEL, weights: str | None = CLIP_WEIGHTS):
    """``(model, preprocess, tokenizer)`` of open_clip's ``name`` with ``weights`` (downloaded once through
    open_clip's cache); offline without them, one line that says where they come from."""
    import open_clip

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights, device=device)
    except Exception as err:  # open_clip raises many kinds when the hub is out of reach
        raise ValueError(f"the CLIP score's {name} ({weights}) could not be loaded ({str(err).splitlines()[0]}); "
                         "run once with internet, which caches it through open_clip") from None
    return model.eval().float(), preprocess, open_clip.get_tokenizer(name)


def prefixed_tokens(captions: list[str], tokenizer):
    """DMD2's tokens: each caption's, with ``PREFIX``'s three tokens after the start token, cut to 77 and ended
    with the end token where the cut left a word."""
    import torch

    tokens = tokenizer(list(captions))
    prefix = tokenizer([PREFIX])[:, 1:4].expand(tokens.shape[0], -1)
    joined = torch.cat([tokens[:, :1], prefix, tokens[:, 1:]], dim=1)[:, :77]
    last = joined[:, 76:77].clone()
    last[last > 0] = tokenizer.eot_token_id
    return torch.cat([joined[:, :76], last], dim=1)


def clip_score(images: np.ndarray, captions: list[str], model, preprocess, tokenizer, batch_size: int = 64) -> float:
    """DMD2's ``compute_clip_score``: each uint8 HWC image centre-cropped to its short side and Lanczos-resized to
    256 px, then CLIP's own preprocessing; the mean cosine similarity of image and prefixed caption embeddings."""
    import torch

    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    device = next(model.parameters()).device
    sims = []
    for start in range(0, len(images), batch_size):
        pils = [Image.fromarray(dmd2_transform(np.asarray(image), 256)) for image in images[start:start + batch_size]]
        x = torch.stack([preprocess(pil) for pil in pils]).to(device)
        tokens = prefixed_tokens(captions[start:start + batch_size], tokenizer).to(device)
        with torch.no_grad():
            sims.append(torch.nn.functional.cosine_similarity(model.encode_image(x), model.encode_text(tokens), dim=1))
    return float(torch.cat(sims).mean())
