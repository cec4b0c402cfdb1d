"""The TF 2015-12-05 Inception graph of the ADM evaluator, as a PyTorch module.

ADM's ``evaluations/evaluator.py`` feeds float NHWC images in [0, 255] into the graph
``classify_image_graph_def.pb`` at ``ExpandDims:0``; the graph then resizes them to
299 x 299 (``ResizeBilinear``, TF1 legacy: ``align_corners=False`` without half-pixel
centres), computes ``(x - 128) / 128`` and runs Inception-v3. The evaluator reads three
tensors, all returned here:

- ``pool_3:0``: the 2048-d average pool (FID, precision/recall).
- ``mixed_6/conv:0``: the ReLU output of the 1 x 1 branch of ``mixed_6`` (torchvision's
  ``Mixed_6d.branch1x1``: ``mixed``, ``mixed_1``, ``mixed_2`` are Mixed_5b-d, ``mixed_3``
  is Mixed_6a, so ``mixed_6`` is Mixed_6d), 192 x 17 x 17; sFID keeps its first 7
  channels, flattened in TF's HWC order: 17 * 17 * 7 = 2023 values.
- ``softmax/logits/MatMul``'s weight: the IS uses ``softmax(pool_3 @ W)`` with no bias.

The building blocks, with the graph's quirks (average pools that exclude padding, a max
pool in the last block) and TF1's bilinear resize, come from torch-fidelity, whose own
tests compare them with TensorFlow (docs/evaluation.md). The weights are the port of the
graph that torch-fidelity and pytorch-fid distribute (same file, same SHA-256 prefix).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import hub

WEIGHTS_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + WEIGHTS_FILES[0]
WEIGHTS_ENV = "DIFFUSION_LAB_INCEPTION"
INPUT_SIZE = 299
POOL_DIM = 2048
SPATIAL_CHANNELS = 7  # ADM keeps spatial[..., :7]
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS
NUM_CLASSES = 1008


def tf1_resize_bilinear(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """TF1 ``ResizeBilinear`` (legacy, ``align_corners=False``) of float NCHW images to ``size`` x ``size``.

    Source coordinate of output pixel ``i`` is ``i * in / out`` (no half-pixel offset),
    its neighbours ``floor`` and ``floor + 1`` clamped to the last pixel.
    """
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    return interpolate_bilinear_2d_like_tensorflow1x(x, size=(size, size), align_corners=False)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """NCHW images in [0, 255] (uint8 or float) → the graph's 299 x 299 input, ``(x - 128) / 128``."""
    return (tf1_resize_bilinear(images.float()) - 128) / 128


class InceptionV3(nn.Module):
    """Inception-v3 with the TF graph's parameter names as torchvision / pytorch-fid / torch-fidelity spell them.

    ``forward`` returns ``(pool_3 (N, 2048), mixed_6/conv[..., :7] flattened HWC (N, 2023))``;
    ``class_probabilities(pool_3)`` the IS softmax over 1008 classes. Randomly initialised
    until ``load_state_dict`` (see ``load_inception``).
    """

    feature_dims = (POOL_DIM, SPATIAL_DIM)

    def __init__(self):
        # torch_fidelity's package import pulls in torchvision's model zoo (~3 s): only when a network is built
        from torch_fidelity.feature_extractor_inceptionv3 import (
            BasicConv2d,
            InceptionA,
            InceptionB,
            InceptionC,
            InceptionD,
            InceptionE_1,
            InceptionE_2,
        )

        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)  # TF "mixed_6": its branch1x1 is mixed_6/conv
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE_1(1280)
        self.Mixed_7c = InceptionE_2(2048)
        self.fc = nn.Linear(POOL_DIM, NUM_CLASSES)  # TF softmax/weights, softmax/biases
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = preprocess(images)  # (N, 3, 299, 299)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 64, 73, 73)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)  # (N, 192, 35, 35)
        x = self.Mixed_6a(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))  # (N, 768, 17, 17)
        x = self.Mixed_6c(self.Mixed_6b(x))
        # mixed_6/conv:0 is the ReLU output of Mixed_6d's 1x1 branch; computing it apart (0.8% of the
        # network's FLOPs) keeps the blocks untouched. NCHW -> NHWC so the flattening order is TF's.
        spatial = self.Mixed_6d.branch1x1(x)[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(self.Mixed_6e(self.Mixed_6d(x)))))  # (N, 2048, 8, 8)
        pool = x.mean(dim=(2, 3))  # pool_3: 8 x 8 average, VALID
        return pool, spatial

    def class_probabilities(self, pool: torch.Tensor) -> torch.Tensor:
        """ADM's IS input: ``softmax(pool_3 @ W)`` with the 1008-way weight and no bias."""
        return torch.softmax(pool.float() @ self.fc.weight.T, dim=1)


def find_weights(path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The weights file: ``path``, else ``$DIFFUSION_LAB_INCEPTION``, else the cache, else downloaded into it.

    Searched: ``$DIFFUSION_LAB_CACHE`` (default ``~/.cache/diffusion-lab``) and torch.hub's
    ``checkpoints`` folder (where torch-fidelity and pytorch-fid keep it), under either name.
    No download when ``download`` is false or ``DIFFUSION_LAB_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``.
    """
    path = path or os.environ.get(WEIGHTS_ENV)
    if path:
        if not Path(path).is_file():
            raise ValueError(f"Inception weights {path} do not exist; pass the file {WEIGHTS_FILES[0]} "
                             f"(from {WEIGHTS_URL})")
        return Path(path)
    cache = hub.cache_dir()
    folders = (cache, Path(torch.hub.get_dir()) / "checkpoints")
    for folder in folders:
        for name in WEIGHTS_FILES:
            if (folder / name).is_file():
                return folder / name
    target = cache / WEIGHTS_FILES[0]
    if download and hub.download(WEIGHTS_URL, target, hash_prefix="6726825d"):
        return target
    raise ValueError(f"Inception weights {WEIGHTS_FILES[0]} not found in {cache}/ and not downloadable: fetch "
                     f"{WEIGHTS_URL} on a machine with internet and put it in {cache}/ (or pass "
                     f"--inception-weights FILE / set {WEIGHTS_ENV})")


def load_inception(path: str | os.PathLike | None = None, device="cpu", download: bool = True) -> InceptionV3:
    """The ported Inception with its weights (``find_weights``), in eval mode on ``device``."""
    file = find_weights(path, download)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        model = InceptionV3()
        model.load_state_dict(state)
    except Exception as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{file} is not the ported Inception ({WEIGHTS_FILES[0]}): {message}") from error
    return model.to(device)


@contextlib.contextmanager
def exact_float32():
    """Turn TF32 off for matmuls and convolutions inside the block (the features are compared with
    TensorFlow's float32 ones), restoring the previous settings after."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
