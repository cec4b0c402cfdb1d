"""Proxy metrics for the built-in dataset: a small CNN's class accuracy and Fréchet distance.

Design, "The built-in dataset": a classifier trained once on freshly rendered procedural
images (seed 1234; held out: seed 1235) scores generated samples on a CPU.
**class_accuracy** is the fraction of samples classified as the class they were asked
for; **proxy_fd** is the Fréchet distance (``evaluations/frechet.py``, ADM semantics)
between the samples' 64-d features and those of 2,000 reference images (seed 4321)
rendered at the samples' resolution. Like FID it depends on the sample count: compare
runs at equal N only.

Inputs of any size are resized to 32 x 32 (bilinear, antialiased) inside the network,
so one classifier serves every resolution. Features are averaged over the image and
its mirror, so the metrics do not depend on whether training used ``--flip`` (which
turns diagonal stripes the other way). Classifier and reference statistics are cached
in ``$DIFFUSION_LAB_CACHE`` (default ``~/.cache/diffusion-lab``), written atomically.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluations.frechet import feature_statistics, frechet_distance
from imagedata.procedural import check_num_classes, render_batch, to_tensor
from models import hub

VERSION = 1
INPUT_RESOLUTION = 32
FEATURE_DIM = 64
CLASSIFIER_SEED = 1234  # training images; the training data of generators uses seed 0
HELD_OUT_SEED = 1235
REFERENCE_SEED = 4321
REFERENCE_SIZE = 2000


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True))


class ProxyClassifier(nn.Module):
    """A 5-conv CNN on 32 x 32 inputs in [-1, 1]; ``features`` is the 64-d penultimate layer."""

    def __init__(self, num_classes: int = 10, width: int = 16, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.num_classes, self.width = num_classes, width
        self.trunk = nn.Sequential(
            _block(3, width), nn.MaxPool2d(2),  # 16 x 16
            _block(width, 2 * width), _block(2 * width, 2 * width), nn.MaxPool2d(2),  # 8 x 8
            _block(2 * width, 4 * width), _block(4 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.embed = nn.Linear(4 * width, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    @staticmethod
    def resize(x: torch.Tensor) -> torch.Tensor:
        """Any resolution → 32 x 32 (bilinear, antialiased, ``align_corners=False``)."""
        if x.shape[-2:] == (INPUT_RESOLUTION, INPUT_RESOLUTION):
            return x
        size = (INPUT_RESOLUTION, INPUT_RESOLUTION)
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (before the ReLU), averaged over ``x`` and its horizontal mirror."""
        x = self.resize(x)
        both = self.embed(self.trunk(torch.cat([x, x.flip(-1)])))
        return 0.5 * (both[: len(x)] + both[len(x) :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))

    def single_view_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of 32 x 32 inputs without the mirror average (training uses random flips instead)."""
        return self.head(F.relu(self.embed(self.trunk(x))))


class ProxyFeatures(nn.Module):
    """The classifier's ``features`` in the Inception port's calling convention, uint8 NCHW images in, ``(features,)``
    out: FD on these features is the offline demos' stand-in for FID (``evaluations.watch_text --proxy``)."""

    def __init__(self, classifier: ProxyClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.classifier.features(x.float() / 127.5 - 1),)


def _rendered(seed: int, num_classes: int, stop: int, resolution: int = INPUT_RESOLUTION, start: int = 0):
    indices = np.arange(start, stop)
    return to_tensor(render_batch(indices, seed, resolution, num_classes)), indices % num_classes


def _training_images(num_images: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Half rendered at 32 px, a quarter each at 16 and 64 px, all resized to 32 as the network does."""
    cuts = [0, num_images // 2, 3 * num_images // 4, num_images]
    parts = [_rendered(CLASSIFIER_SEED, num_classes, b, r, a) for a, b, r in zip(cuts, cuts[1:], (32, 16, 64))]
    labels = torch.from_numpy(np.concatenate([y for _, y in parts]))
    return torch.cat([ProxyClassifier.resize(x) for x, _ in parts]), labels


@torch.no_grad()
def classify(classifier: ProxyClassifier, x: torch.Tensor, batch_size: int = 500) -> tuple[np.ndarray, ...]:
    """``(features float64 (N, 64), predicted labels (N,))`` of float NCHW images in [-1, 1]."""
    device = next(classifier.parameters()).device
    feats, preds = [], []
    for i in range(0, len(x), batch_size):
        f = classifier.features(x[i : i + batch_size].to(device).float())
        feats.append(f.double().cpu())
        preds.append(classifier.head(F.relu(f)).argmax(1).cpu())
    return torch.cat(feats).numpy(), torch.cat(preds).numpy()


def accuracy(classifier: ProxyClassifier, x: torch.Tensor, y) -> float:
    return float(np.mean(classify(classifier, x)[1] == np.asarray(y)))


@contextmanager
def trainable(device) -> Iterator[None]:
    """Gradients in fp32 whatever the caller runs under (``no_grad``, ``inference_mode``, autocast):
    the classifier is trained on first use, which may be inside an evaluation."""
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(torch.device(device).type, enabled=False):
        yield


def train_proxy_classifier(
    num_classes: int = 10,
    num_images: int = 12000,
    steps: int = 400,
    batch_size: int = 64,
    lr: float = 3e-3,
    width: int = 16,
    noise: float = 0.2,
    num_held_out: int = 2000,
    device: str = "cpu",
) -> tuple[ProxyClassifier, float]:
    """Train the proxy classifier deterministically; returns ``(classifier in eval mode, held-out accuracy)``.

    Adam with a linear decay to zero on mini-batches of ``num_images`` images (seed
    1234), randomly mirrored, plus Gaussian noise of a random std up to ``noise`` so
    that imperfect samples are still recognised. Held out: seed 1235 at 32 px. Smaller
    settings give a quick classifier for tests.
    """
    check_num_classes(num_classes)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums whatever the core count; the net is too small to gain from more
    try:
        with torch.random.fork_rng(devices=[]), trainable(device):
            torch.manual_seed(CLASSIFIER_SEED)
            classifier = ProxyClassifier(num_classes, width).to(device)
            x, y = _training_images(num_images, num_classes)
            opt = torch.optim.Adam(classifier.parameters(), lr=lr)
            schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / steps)
            for _ in range(steps):
                index = torch.randint(0, len(x), (batch_size,))
                xb = torch.where(torch.rand(batch_size, 1, 1, 1) < 0.5, x[index], x[index].flip(-1))
                xb = xb + noise * torch.rand(batch_size, 1, 1, 1) * torch.randn_like(xb)
                loss = F.cross_entropy(classifier.single_view_logits(xb.to(device)), y[index].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
    finally:
        torch.set_num_threads(threads)
    classifier.eval()
    return classifier, accuracy(classifier, *_rendered(HELD_OUT_SEED, num_classes, num_held_out))


def _atomic_save(path: Path, save) -> None:
    """``save(tmp)`` then rename over ``path``: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")  # np.savez wants the .npz suffix
    save(tmp)
    os.replace(tmp, path)


def classifier_path(num_classes: int = 10, cache_dir=None) -> Path:
    """``<cache>/proxy_classifier_v1.pt`` (10 classes) or ``..._v1_c<k>.pt``."""
    suffix = "" if num_classes == 10 else f"_c{num_classes}"
    return Path(cache_dir or hub.cache_dir()) / f"proxy_classifier_v{VERSION}{suffix}.pt"


def save_proxy_classifier(classifier: ProxyClassifier, path: Path, **info) -> None:
    """Write ``{version, num_classes, width, state_dict, **info}`` atomically."""
    state = {k: v.detach().cpu() for k, v in classifier.state_dict().items()}
    payload = dict(version=VERSION, num_classes=classifier.num_classes, width=classifier.width, state_dict=state)
    _atomic_save(Path(path), lambda tmp: torch.save({**payload, **info}, tmp))


def get_proxy_classifier(num_classes: int = 10, cache_dir=None, device="cpu") -> ProxyClassifier:
    """The cached classifier for the first ``num_classes`` classes; trained once (under a minute) if absent."""
    check_num_classes(num_classes)
    path = classifier_path(num_classes, cache_dir)
    if path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            classifier = ProxyClassifier(saved["num_classes"], saved["width"])
            classifier.load_state_dict(saved["state_dict"])
            if saved["version"] == VERSION and classifier.num_classes == num_classes:
                return classifier.to(device).eval()
            warnings.warn(f"proxy classifier {path} is for other settings; training a new one", stacklevel=2)
        except Exception as error:  # damaged or foreign: train again and replace it
            warnings.warn(f"ignoring unreadable proxy classifier {path} ({error}); training anew", stacklevel=2)
    print(f"training the proxy classifier for {num_classes} classes (once, < 1 min) ...", file=sys.stderr)
    start = time.perf_counter()
    classifier, held_out = train_proxy_classifier(num_classes, device=device)
    seconds = time.perf_counter() - start
    save_proxy_classifier(classifier, path, held_out_accuracy=held_out, train_seconds=seconds)
    print(f"proxy classifier: held-out accuracy {held_out:.4f}, {seconds:.0f} s, saved {path}", file=sys.stderr)
    return classifier


def fingerprint(classifier: nn.Module) -> str:
    """A short hash of the weights, tying cached reference statistics to one classifier."""
    digest = hashlib.sha256()
    for name, value in sorted(classifier.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def reference_statistics(classifier: ProxyClassifier, resolution: int, cache_dir=None):
    """``(mu, sigma)`` of the reference set (2,000 images, seed 4321) at ``resolution``, cached."""
    num_classes = classifier.num_classes
    name = f"proxy_reference_v{VERSION}_c{num_classes}_r{resolution}.npz"
    path = Path(cache_dir or hub.cache_dir()) / name
    key = fingerprint(classifier)
    if path.exists():
        try:
            with np.load(path) as saved:
                if str(saved["fingerprint"]) == key:
                    return saved["mu"], saved["sigma"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable: recompute and replace
    x, _ = _rendered(REFERENCE_SEED, num_classes, REFERENCE_SIZE, resolution)
    mu, sigma = feature_statistics(classify(classifier, x)[0])
    _atomic_save(path, lambda tmp: np.savez(tmp, mu=mu, sigma=sigma, fingerprint=np.array(key)))
    return mu, sigma


def _as_images(images) -> torch.Tensor:
    """uint8 NHWC (numpy or tensor) or float NCHW in [-1, 1] → float NCHW in [-1, 1]."""
    if images.dtype in (np.uint8, torch.uint8):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be NHWC with 3 channels, got shape {images.shape}")
        return to_tensor(images)
    x = torch.as_tensor(images)
    if not x.is_floating_point() or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(
            "images must be uint8 NHWC or float NCHW in [-1, 1] with 3 channels, "
            f"got {x.dtype} of shape {tuple(x.shape)}"
        )
    return x


def proxy_metrics(images, labels, num_classes: int = 10, device="cpu", classifier=None, cache_dir=None) -> dict:
    """``{"class_accuracy", "proxy_fd"}`` of generated ``images`` conditioned on ``labels``."""
    x = _as_images(images)
    labels = np.asarray(labels).reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}: save them as integers "
                         "(sample_ddp.py writes int64)")
    if len(labels) != len(x):
        raise ValueError(f"got {len(x)} images but {len(labels)} labels")
    if len(x) < 2 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"proxy metrics need at least 2 square images, got shape {tuple(x.shape)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    if classifier is None:
        classifier = get_proxy_classifier(num_classes, cache_dir, device)
    if classifier.num_classes != num_classes:
        raise ValueError(f"the classifier knows {classifier.num_classes} classes, the samples {num_classes}")
    feats, preds = classify(classifier, x)
    mu_ref, sigma_ref = reference_statistics(classifier, x.shape[-1], cache_dir)
    return {
        "class_accuracy": float(np.mean(preds == labels)),
        "proxy_fd": frechet_distance(*feature_statistics(feats), mu_ref, sigma_ref),
    }


@functools.lru_cache(maxsize=8)
def real_image_scores(num_samples: int, resolution: int, num_classes: int = 10) -> dict:
    """``{"class_accuracy", "proxy_fd"}`` of ``num_samples`` real built-in images (the held-out seed) at
    ``resolution``: the best a generator can score with that many samples (FD depends on the count)."""
    x, y = _rendered(HELD_OUT_SEED, num_classes, num_samples, resolution)
    return proxy_metrics(x, y, num_classes)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evaluations.proxy", description=__doc__.splitlines()[0])
    parser.add_argument("samples", help="npz with arr_0 (uint8 NHWC images) and their classes in arr_1 "
                        "(as sample_ddp.py writes) or labels")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.samples):
        parser.error(f"{args.samples} does not exist")
    with np.load(args.samples) as data:
        label_key = "labels" if "labels" in data else "arr_1"
        if "arr_0" not in data or label_key not in data:
            parser.error(
                f"{args.samples} holds {sorted(data.keys())}; it needs arr_0 (uint8 NHWC images) and the class "
                "of each sample as arr_1 or labels, e.g. np.savez(path, images, labels)"
            )
        images, labels = data["arr_0"], data[label_key]
    try:
        metrics = proxy_metrics(images, labels, args.num_classes, args.device)
    except ValueError as error:
        parser.error(str(error))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
