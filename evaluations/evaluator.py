"""FID, sFID, Inception Score, precision and recall as the ADM evaluator defines them, in PyTorch.

  python evaluations/evaluator.py REF.npz SAMPLES.npz [--out metrics.json]
  python evaluations/evaluator.py --ref-stats imagenet256_ref.npz /data/imagenet/train --image-size 256
  python evaluations/evaluator.py SAMPLES.npz --proxy          # built-in dataset: proxy metrics, CPU friendly
  torchrun --nproc_per_node=8 evaluations/evaluator.py REF.npz SAMPLES.npz
  python evaluations/evaluator.py --ref_batch REF.npz --sample_batch SAMPLES.npz --save_path exps/reg/checkpoints \
      --cfg_cond 1 --step 4000000 --num_steps 250 --cfg 2.3 --cls_cfg 2.3 --gh 0.85     # REG's eval.sh

REF is one of ADM's reference batches (``arr_0`` images plus ``mu``, ``sigma``, ``mu_s``,
``sigma_s``), a file written by ``--ref-stats``, any ``.npz`` of uint8 NHWC images in
``arr_0``, or an image folder. Definitions (Dhariwal & Nichol 2021, ``evaluations/evaluator.py``):

- **FID**: Fréchet distance (``evaluations/frechet.py``) between the pool_3 statistics
  of the samples and the reference's ``mu``/``sigma`` (computed from its images if absent).
- **sFID**: the same on the first 7 channels of ``mixed_6/conv``, 17 x 17 x 7 = 2023-d.
- **Inception Score**: ``exp(E_x KL(p(y|x) || p(y)))`` over the 1008-way softmax in
  splits of 5,000 samples (the last split may be smaller), averaged over splits.
- **Precision / recall**: ``evaluations/precision_recall.py`` with k = 3, reference =
  the reference images' pool_3 features.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python evaluations/evaluator.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import scipy.special  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from evaluations.features import Features, compute_activations, compute_features, compute_statistics  # noqa: E402
from evaluations.frechet import frechet_distance  # noqa: E402
from evaluations.images import DEFAULT_WORKERS, NpzImages, open_images  # noqa: E402
from evaluations.inception import load_inception  # noqa: E402
from evaluations.precision_recall import precision_recall  # noqa: E402

__all__ = ["frechet_distance", "compute_activations", "compute_statistics", "compute_features", "inception_score",
           "precision_recall", "reference_features", "save_reference", "evaluate", "proxy_scores", "METRIC_NAMES"]

STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
PR_REFERENCE_SIZE = 10_000  # images of a folder kept for precision/recall (ADM's reference batches hold 10,000)
METRIC_NAMES = {"inception_score": "Inception Score", "fid": "FID", "sfid": "sFID", "precision": "Precision",
                "recall": "Recall", "proxy_class_accuracy": "Proxy class accuracy", "proxy_fd": "Proxy FD"}


def inception_score(probs, split_size: int = 5000) -> float:
    """ADM's ``compute_inception_score`` on ``(N, classes)`` softmax outputs: the mean over splits
    ``probs[i : i + split_size]`` of ``exp(mean_x sum_y p log(p / mean_x p))``, in float64.

    The one liberty: ``0 log 0 = 0``, where ADM's float32 formula gives NaN.
    """
    probs = np.asarray(probs, dtype=np.float64)
    scores = []
    for i in range(0, len(probs), split_size):
        part = probs[i : i + split_size]
        marginal = part.mean(axis=0, keepdims=True)
        kl = scipy.special.xlogy(part, part) - scipy.special.xlogy(part, marginal)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores))


@torch.inference_mode()
def class_probabilities(model, pool: np.ndarray, batch_size: int = 5000) -> np.ndarray:
    device = next(model.parameters()).device
    parts = [model.class_probabilities(torch.as_tensor(pool[i : i + batch_size], device=device)).cpu()
             for i in range(0, len(pool), batch_size)]
    return torch.cat(parts).numpy()


def _read_npz(path: Path) -> dict:
    """The statistics and pool_3 activations an ``.npz`` carries (lazily: ``arr_0`` is not loaded)."""
    with np.load(path) as data:
        found = {key: data[key] for key in (*STAT_KEYS, "pool_3") if key in data}
        found["has_images"] = "arr_0" in data
    return found


def check_reference(ref) -> None:
    """Fail fast, before any network runs, on a reference that cannot give FID."""
    if isinstance(ref, Features) or isinstance(ref, np.ndarray) or Path(ref).is_dir():
        return
    path = Path(ref)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        found = _read_npz(path)
    except (OSError, EOFError, ValueError) as error:
        raise ValueError(f"{path} is not a readable .npz file: {error}") from None
    if found["has_images"]:
        NpzImages(path)  # validates arr_0
    elif not {"mu", "sigma"} <= found.keys():
        raise ValueError(f"{path} holds neither images (arr_0) nor statistics (mu, sigma); pass an ADM reference "
                         "batch, a file written by --ref-stats or an .npz of uint8 NHWC images")


def reference_features(ref, model, batch_size: int = 100, image_size: int | None = None, progress: bool = True,
                       num_workers: int = DEFAULT_WORKERS) -> Features:
    """The reference side: statistics read from the file when it carries them, the rest computed from its images.

    An ``.npz`` keeps the pool_3 features of all its images for precision/recall, as ADM
    does; a folder keeps those of ``PR_REFERENCE_SIZE`` images drawn with seed 0. Fields
    that cannot be had (a statistics-only file) are None.
    """
    if isinstance(ref, Features):
        return ref
    check_reference(ref)
    if isinstance(ref, np.ndarray) or Path(ref).is_dir():
        source = open_images(ref, image_size, num_workers)
        rows = None  # all
        if not isinstance(ref, np.ndarray) and len(source) > PR_REFERENCE_SIZE:
            rows = np.sort(np.random.default_rng(0).choice(len(source), PR_REFERENCE_SIZE, replace=False))
        return compute_features(source, model, batch_size, rows, progress)
    found = _read_npz(Path(ref))
    if found["has_images"] and ("pool_3" not in found or not set(STAT_KEYS) <= found.keys()):
        computed = compute_features(NpzImages(ref), model, batch_size, None, progress)
        return Features(computed.count, *(found.get(key, getattr(computed, key)) for key in STAT_KEYS),
                        found.get("pool_3", computed.pool))
    count = len(found["pool_3"]) if "pool_3" in found else None
    return Features(count, *(found.get(key) for key in STAT_KEYS), found.get("pool_3"))


def save_reference(path, features: Features) -> Path:
    """Write ``mu``, ``sigma``, ``mu_s``, ``sigma_s`` (ADM's keys), ``pool_3`` and ``num_images`` atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"--ref-stats {path}: the file name must end in .npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, mu=features.mu, sigma=features.sigma, mu_s=features.mu_s, sigma_s=features.sigma_s,
             pool_3=features.pool, num_images=np.int64(features.count))
    os.replace(tmp, path)
    return path


def evaluate(ref, samples, model=None, inception_weights=None, batch_size: int = 100, device=None,
             image_size: int | None = None, progress: bool = True) -> dict:
    """ADM's five metrics of ``samples`` (an ``.npz`` path or uint8 NHWC array) against ``ref``.

    ``ref``: a path (ADM reference batch, ``--ref-stats`` file, ``.npz`` of images, folder
    center-cropped to ``image_size``, default the samples' size) or ``Features``. Returns
    ``{inception_score, fid, sfid, precision, recall, num_samples}``; a metric the
    reference cannot support (statistics without images) is None. Under torch.distributed
    every process must call it; features are sharded and every process gets the result.
    """
    source = open_images(samples)
    check_reference(ref)
    if model is None:
        model = load_inception(inception_weights, device or ("cuda" if torch.cuda.is_available() else "cpu"))
    image_size = image_size or source.shape[1]
    reference = reference_features(ref, model, batch_size, image_size, progress)
    sample = compute_features(source, model, batch_size, None, progress)
    device = next(model.parameters()).device
    metrics = {
        "inception_score": inception_score(class_probabilities(model, sample.pool)),
        "fid": frechet_distance(sample.mu, sample.sigma, reference.mu, reference.sigma),
        "sfid": None, "precision": None, "recall": None,
    }
    if reference.mu_s is not None and reference.sigma_s is not None:
        metrics["sfid"] = frechet_distance(sample.mu_s, sample.sigma_s, reference.mu_s, reference.sigma_s)
    if reference.pool is not None:
        metrics["precision"], metrics["recall"] = precision_recall(reference.pool, sample.pool, device=device)
    metrics["num_samples"] = sample.count
    return metrics


def proxy_scores(samples, num_classes: int = 10, device="cpu") -> dict:
    """``{proxy_class_accuracy, proxy_fd}`` of a built-in-dataset ``.npz`` (images in arr_0, labels in arr_1)."""
    from evaluations.proxy import proxy_metrics

    source = NpzImages(samples)
    with np.load(samples) as data:
        label_key = "labels" if "labels" in data else "arr_1"
        if label_key not in data:
            raise ValueError(f"--proxy: {samples} has no arr_1 (the class of each sample, as sample_ddp.py writes)")
        labels = data[label_key]
    result = proxy_metrics(np.concatenate(list(source.batches(10_000))), labels, num_classes, device)
    return {"proxy_class_accuracy": result["class_accuracy"], "proxy_fd": result["proxy_fd"]}


def write_reg_results(args: argparse.Namespace, metrics: dict) -> Path:
    """REG's results file, under REG's exact name: ``--save_path`` followed by the settings without separators
    (``exps/reg/checkpoints`` gives ``exps/reg/checkpoints25040000002.30.852.3cfg_cond_true.txt``), one line per
    metric as REG writes them; REG also creates the folder ``--save_path`` itself."""
    Path(args.save_path).mkdir(parents=True, exist_ok=True)
    path = Path(f"{args.save_path}{args.num_steps}{args.step}{args.cfg}{args.gh}{args.cls_cfg}"
                f"cfg_cond_{'true' if args.cfg_cond else 'false'}.txt")
    lines = [f"{METRIC_NAMES[key]}: {metrics.get(key)}" for key in ("inception_score", "fid", "sfid", "precision",
                                                                        "recall")]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="REF and SAMPLES .npz files; a single path with --ref-stats (REF) or --proxy (SAMPLES)")
    p.add_argument("--ref-stats", metavar="OUT.npz", help="save REF's statistics and pool_3 features to OUT.npz "
                   "(reuse it as REF later)")
    p.add_argument("--out", metavar="JSON", help="also write the metrics to this JSON file")
    p.add_argument("--batch-size", type=int, default=100, help="images per Inception forward (per process)")
    p.add_argument("--device", default=None, help="default: cuda (cuda:LOCAL_RANK under torchrun) if available, else cpu")
    p.add_argument("--inception-weights", metavar="FILE", help="the ported Inception weights (default: the cache, "
                   "then a download; see evaluations/inception.py)")
    p.add_argument("--image-size", type=int, default=None, help="center-crop size for an image-folder REF "
                   "(default: the samples' size)")
    p.add_argument("--proxy", action="store_true", help="add the built-in dataset's proxy metrics (class accuracy, "
                   "proxy FD; SAMPLES needs labels in arr_1); with a single path, only these")
    p.add_argument("--num-classes", type=int, default=10, help="classes of the built-in dataset (--proxy)")
    reg = p.add_argument_group("REG's evaluator flags (its eval.sh): REF and SAMPLES by name, and its results file "
                               "{save_path}{num_steps}{step}{cfg}{gh}{cls_cfg}cfg_cond_{true|false}.txt")
    reg.add_argument("--ref_batch", help="REF")
    reg.add_argument("--sample_batch", help="SAMPLES")
    reg.add_argument("--save_path", help="the results file's prefix (REG creates this folder too)")
    reg.add_argument("--cfg_cond", type=int, default=1)
    reg.add_argument("--step", type=int, default=1)
    reg.add_argument("--num_steps", type=int, default=250)
    reg.add_argument("--cfg", type=float, default=1.0)
    reg.add_argument("--cls_cfg", type=float, default=1.0)
    reg.add_argument("--gh", type=float, default=1.0)
    args = p.parse_args(argv)
    if args.ref_batch or args.sample_batch:
        if args.paths or not (args.ref_batch and args.sample_batch):
            p.error("pass --ref_batch and --sample_batch (REG's form) or REF SAMPLES (ADM's), not a mix")
        args.paths = [args.ref_batch, args.sample_batch]
    if args.save_path and len(args.paths) != 2:
        p.error("--save_path writes REG's results file of REF and SAMPLES: pass both")
    if not args.paths or len(args.paths) > 2 or (len(args.paths) == 1 and not (args.ref_stats or args.proxy)):
        p.error("pass REF.npz SAMPLES.npz, or one path with --ref-stats OUT.npz (REF) or --proxy (SAMPLES)")
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    return args


def _init_distributed(device: str | None) -> str:
    """Join a torchrun process group (NCCL on GPUs, gloo on CPUs); returns this process's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if device is None:
        device = f"cuda:{local_rank}" if cuda else "cpu"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def main(args: argparse.Namespace) -> None:
    ref, samples = (None, args.paths[0]) if len(args.paths) == 1 and not args.ref_stats else (args.paths + [None])[:2]
    if samples is not None:
        open_images(samples)  # validate both inputs before the network loads
    if ref is not None:
        check_reference(ref)
    device = _init_distributed(args.device)
    rank = dist.get_rank() if dist.is_initialized() else 0
    log = (lambda *a: print(*a, file=sys.stderr)) if rank == 0 else (lambda *a: None)
    metrics = {}
    if ref is not None:
        model = load_inception(args.inception_weights, device)
        log(f"reference: {ref}")
        reference = reference_features(ref, model, args.batch_size, args.image_size or
                                       (open_images(samples).shape[1] if samples else None))
        if args.ref_stats and rank == 0:
            log(f"saved reference statistics to {save_reference(args.ref_stats, reference)}")
        if samples is not None:
            log(f"samples: {samples}")
            metrics = evaluate(reference, samples, model, batch_size=args.batch_size)
    if args.proxy and samples is not None and rank == 0:
        metrics.update(proxy_scores(samples, args.num_classes, device))
    if rank == 0 and metrics:
        for key, name in METRIC_NAMES.items():
            if key in metrics and metrics[key] is None:
                log(f"{name}: not computed (the reference carries no {'mu_s/sigma_s' if key == 'sfid' else 'images'})")
            elif key in metrics:
                print(f"{name}:", metrics[key])
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"reference": ref, "samples": samples, **metrics}, indent=2) + "\n")
        if args.save_path:
            log(f"saved REG's results file {write_reg_results(args, metrics)}")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def cli(argv=None) -> None:
    from common.cli import run_cli

    run_cli(main, parse_args(argv))


if __name__ == "__main__":
    cli()
