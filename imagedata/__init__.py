"""Datasets for training: the built-in procedural set, CIFAR-10, an image folder, cached latents,
REPA/REG's layout, or DMD2's image LMDB."""

from __future__ import annotations

from pathlib import Path

from .latents import LatentDataset, is_latent_cache
from .repa import is_repa_layout

BUILTIN_SIZE = 100_000  # images per epoch of the built-in dataset (rendered on demand)
CIFAR10_ROOT = "datasets/cifar10"  # where --dataset cifar10 looks (and downloads) without --data-path


def resolve_dataset_kind(dataset: str | None, data_path: str | None) -> str:
    """``builtin`` | ``cifar10`` | ``folder`` | ``latents`` | ``repa`` | ``lmdb``; a ``--data-path`` holding a latent
    cache means latents, one holding ``vae-sd/`` or ``imagenet_256_vae/`` (``imagedata/repa.py``) means repa, one holding
    ``cifar-10-batches-py/`` means cifar10, one holding an LMDB (``data.mdb``, DMD2's layout) means lmdb."""
    if dataset in ("builtin", "cifar10"):
        return dataset
    if not data_path:
        raise ValueError("no training data: pass --data-path /path/to/imagenet/train (or a latent cache), "
                         "or --dataset builtin for the built-in procedural images")
    if not Path(data_path).exists():
        raise ValueError(f"--data-path {data_path} does not exist")
    # An interrupted cache (moments but no manifest) counts too, so LatentDataset can say what happened.
    looks_cached = is_latent_cache(data_path) or (Path(data_path) / "moments.npy").is_file()
    if dataset == "lmdb" or (dataset is None and (Path(data_path) / "data.mdb").is_file()):
        return "lmdb"
    if dataset == "latents" or (dataset is None and looks_cached):
        return "latents"
    if dataset == "repa" or (dataset is None and is_repa_layout(data_path)):
        return "repa"
    if dataset is None and (Path(data_path) / "cifar-10-batches-py").is_dir():
        return "cifar10"
    return "folder"


def build_dataset(kind: str, data_path: str | None, image_size: int, num_classes: int,
                  num_images: int | None = None, latents_name: str | None = None, size_flag: str = "--image-size"):
    """The dataset for ``kind``, checked against the resolution and the number of classes asked for; images
    come unflipped (the training loop flips with its own RNG).

    ``num_images`` sizes the built-in set (default ``BUILTIN_SIZE``); its first images are the same
    whatever the size, so a small set is a prefix of the large one. REPA-E's ``h5`` is ``images.h5`` of
    ``data_path``, ``h5-latents`` that beside the cached latents ``{latents_name}.h5``; ``lmdb-latents`` is
    DMD2's Stable Diffusion LMDB (latents and prompts).
    """
    dataset = _open(kind, data_path, image_size, num_classes, num_images, latents_name)
    stored = getattr(dataset, "image_size", image_size)  # latents and stored images have one resolution
    if stored != image_size:
        raise ValueError(f"the images in {data_path} are {stored} px, not {size_flag} {image_size}")
    count = getattr(dataset, "num_classes", None) or len(getattr(dataset, "classes", []))
    if count > num_classes:
        raise ValueError(f"the data has {count} classes, more than the model's {num_classes}: pass data of at most "
                         f"{num_classes} classes, or a model of {count}")
    return dataset


def _open(kind: str, data_path: str | None, image_size: int, num_classes: int, num_images: int | None,
          latents_name: str | None):
    if kind == "builtin":
        from .procedural import ProceduralImages

        return ProceduralImages(num_images or BUILTIN_SIZE, resolution=image_size, num_classes=num_classes, seed=0)
    if kind == "cifar10":
        from .cifar10 import CIFAR10Images

        return CIFAR10Images(data_path or CIFAR10_ROOT, image_size)
    if kind == "latents":
        return LatentDataset(data_path)
    from .folder import ImageFolderDataset, validate_image_folder
    from .h5 import H5Images, H5ImagesAndLatents
    from .lmdb import LMDBImages, LMDBLatentsPrompts
    from .repa import REPADataset

    if kind == "h5-latents":
        return H5ImagesAndLatents(data_path, latents_name)
    stored = {"repa": REPADataset, "lmdb": LMDBImages, "lmdb-latents": LMDBLatentsPrompts, "h5": H5Images}
    if kind in stored:
        return stored[kind](data_path)
    validate_image_folder(data_path)
    return ImageFolderDataset(data_path, image_size, flip=False)


def class_names(kind: str | None, num_classes: int, dataset=None) -> list[str]:
    """What to call each class in sample grids: the built-in dataset's and CIFAR-10's names, an image
    folder's sub-folder names, else the class index."""
    if kind == "builtin":
        from .procedural import CLASS_NAMES as names
    elif kind == "cifar10":
        from .cifar10 import CLASSES as names
    else:
        names = getattr(dataset, "classes", None) or []
    names = [name.replace("_", " ") for name in list(names)[:num_classes]]
    return names + [str(i) for i in range(len(names), num_classes)]
