"""Score each checkpoint of a run folder as it appears: DMD2's continuous evaluation (``main/edm/test_folder_edm.py``).

  python -m evaluations.watch --folder results/000-DMD2-EDM --resolution 64 --label_dim 1000 \\
      --ref_path imagenet_fid_refs_edm.npz --detector_url inception-2015-12-05.pkl
  RECIPE=dmd2-imagenet WATCH=results/000-DMD2-EDM REF_BATCH=imagenet_fid_refs_edm.npz bash eval.sh

The checkpoints are DMD2's folders (``checkpoint_model_NNNNNN/pytorch_model.bin``; ``train_dmd2.py
--checkpoint_layout dmd2`` writes them too) and this repository's ``checkpoints/NNNNNNN.pt`` in the folder. Each is
scored with DMD2's protocol: ``--total_eval_samples`` images, every process labelling its batches with classes
0, 1, 2, ... in turn (modulo ``--label_dim``) and drawing its noise from ``--seed`` + its rank, each image the
generator's own steps (a one-step generator from ``--conditioning_sigma``) in fp32, uint8 by truncation; the FID of
their pool_3 statistics against ``--ref_path``'s ``mu`` / ``sigma``. Results go to ``{folder}/stats.json`` (read
back, so scored checkpoints are skipped unless ``--no_resume``) and, with ``--wandb_project``, to wandb with a grid of
the first images (also saved as ``{folder}/eval_grid_NNNNNN.png``). The folder is watched until the process is
stopped, or with ``--once`` until everything in it is scored.

The features are those of the TF Inception graph of 2015-12-05, the network EDM's detector pickle
(``--detector_url``) holds, computed by this repository's port of it (``evaluations/inception.py``, the ADM
evaluator's network; weights from ``--inception-weights`` or the cache): the pickle, which runs code when read, is
not loaded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import write_text_atomic
from common.cli import first_paragraph, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--folder", type=str, required=True, help="the run folder to watch")
    p.add_argument("--wandb_entity", type=str)
    p.add_argument("--wandb_project", type=str)
    p.add_argument("--wandb_name", type=str)
    p.add_argument("--eval_batch_size", type=int, default=128)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--total_eval_samples", type=int, default=50000)
    p.add_argument("--label_dim", type=int, default=10)
    p.add_argument("--sigma_max", type=float, default=80.0, help="accepted, as DMD2's script does; unused there too")
    p.add_argument("--sigma_min", type=float, default=0.002, help="accepted, as DMD2's script does; unused there too")
    p.add_argument("--test_visual_batch_size", type=int, default=100, help="images in the grid")
    p.add_argument("--max_batch_size", type=int, default=128, help="images per Inception forward")
    p.add_argument("--ref_path", type=str, required=True, help="reference statistics (an .npz with mu and sigma)")
    p.add_argument("--detector_url", type=str, default=None, help="EDM's detector (see the description)")
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--dataset_name", type=str, default="imagenet")
    p.add_argument("--no_resume", action="store_true", help="score again what stats.json holds")
    p.add_argument("--conditioning_sigma", type=float, default=80.0)
    ours = p.add_argument_group("beyond DMD2's flags")
    ours.add_argument("--once", action="store_true", help="stop once every checkpoint in the folder is scored")
    ours.add_argument("--poll_seconds", type=float, default=30.0, help="how often the folder is looked at")
    ours.add_argument("--inception-weights", dest="inception_weights", type=str, default=None)
    return p.parse_args(argv)


def checkpoints(folder: Path) -> dict[str, tuple[int, Path]]:
    """``{name: (step, weights file)}`` of the folder's complete checkpoints, DMD2's folders and ours; a step saved
    in both layouts (``--checkpoint_layout dmd2``) is DMD2's folder, scored once."""
    found = {}
    for sub in folder.glob("*checkpoint_*"):
        if sub.is_dir() and sub.name.split("_")[-1].isdigit() and (sub / "pytorch_model.bin").is_file():
            found[str(sub)] = (int(sub.name.split("_")[-1]), sub / "pytorch_model.bin")
    steps = {step for step, _ in found.values()}
    for path in folder.glob("checkpoints/[0-9]*.pt"):
        if int(path.stem) not in steps:
            found[str(path)] = (int(path.stem), path)
    return dict(sorted(found.items(), key=lambda item: item[1][0]))


def reference(path: str) -> tuple[np.ndarray, np.ndarray]:
    if not Path(path).is_file():
        raise ValueError(f"--ref_path {path} does not exist; pass EDM's reference statistics (an .npz of mu, sigma)")
    with np.load(path) as ref:
        if "mu" not in ref or "sigma" not in ref:
            raise ValueError(f"--ref_path {path} holds no mu and sigma (EDM's fid.py ref writes them)")
        return ref["mu"], ref["sigma"]


def generator_config(path: Path, folder: Path) -> tuple[dict, dict]:
    """``(weights, sampling settings)`` of a checkpoint in ``folder``: a DMD2 folder beside this repository's
    checkpoints (``--checkpoint_layout dmd2``) is the run's own network, whose settings its checkpoints record;
    one of DMD2's own runs is DMD2's ImageNet network, as DMD2's script builds it."""
    from common.checkpoint import load_checkpoint
    from models.pretrained import Query, sampling_config

    ours = sorted(folder.glob("checkpoints/[0-9]*.pt"))
    if path.name == "pytorch_model.bin" and ours:
        return load_checkpoint(path), sampling_config(Query(ckpt=str(ours[-1])))[1]
    return sampling_config(Query(ckpt=str(path)))


@torch.no_grad()
def generate_images(path: Path, args: argparse.Namespace, accelerator) -> np.ndarray:
    """DMD2's evaluation images of the generator in ``path``, gathered from every process (uint8 NHWC)."""
    from accelerate.utils import set_seed

    from diffusion.network import unwrap
    from diffusion.pipeline import generate
    from models.pretrained import build_for_sampling, load_codec

    state_dict, cfg = generator_config(path, Path(args.folder))
    if not cfg.get("generator_sigmas"):
        raise ValueError(f"{path} is not a distilled generator; DMD2's evaluation scores generators")
    device = accelerator.device
    codec = load_codec(cfg, device)
    model = build_for_sampling(state_dict, cfg, codec, device)
    if len(cfg["generator_sigmas"]) == 1:  # DMD2's one-step generators start from --conditioning_sigma
        unwrap(model).generator_sigmas = [args.conditioning_sigma]
    size, channels = cfg["image_size"] // codec.downsample, codec.latent_channels
    all_labels = torch.arange(0, args.total_eval_samples * 2, device=device) % args.label_dim
    set_seed(args.seed + accelerator.process_index)
    gathered, index = [], 0
    while len(gathered) * args.eval_batch_size * accelerator.num_processes < args.total_eval_samples:
        noise = torch.randn(args.eval_batch_size, channels, size, size, device=device)
        labels = all_labels[index:index + args.eval_batch_size]
        index += args.eval_batch_size
        images = codec.decode(generate(model, noise, labels, sampler="fewstep", num_steps=1))
        images = ((images + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        gathered.append(accelerator.gather(images).cpu())
    return torch.cat(gathered).numpy()[: args.total_eval_samples]


def fid_of(images: np.ndarray, args, model, ref) -> float:
    from evaluations.features import compute_features
    from evaluations.frechet import frechet_distance
    from evaluations.images import open_images

    stats = compute_features(open_images(images), model, args.max_batch_size, pool_rows=np.zeros(0, dtype=np.int64),
                             progress=False)
    return float(frechet_distance(stats.mu, stats.sigma, *ref))


def grid(images: np.ndarray, count: int) -> np.ndarray:
    """The first side x side images (side = floor(sqrt(count)), fewer when there are fewer), tiled as DMD2 tiles
    them."""
    side = int(min(count, len(images)) ** 0.5)
    n, h, w, c = images[: side * side].shape
    return np.swapaxes(images[: side * side].reshape(side, side, h, w, c), 1, 2).reshape(side * h, side * w, c)


def watch_folder(args: argparse.Namespace, prepare, score) -> dict:
    """The watching loop of DMD2's ``test_folder_*.py``: every checkpoint of ``--folder`` not yet in its
    ``stats.json`` is scored, ``score(path, accelerator, state) -> (metrics, images)`` with ``state =
    prepare(accelerator)``; the metrics go to ``stats.json`` (and wandb), a grid of the images to
    ``eval_grid_NNNNNN.png``. With ``--once`` it returns when everything is scored."""
    from PIL import Image

    from common.setup import setup_accelerator

    folder = Path(args.folder)
    if not folder.is_dir():
        raise ValueError(f"--folder {folder} is not a folder; pass a run folder of train_dmd2.py or DMD2")
    accelerator = setup_accelerator()
    state = prepare(accelerator)
    stats_path = folder / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() and not args.no_resume else {}
    tracker = None
    if args.wandb_project and accelerator.is_main_process:
        import wandb

        tracker = wandb.init(config=vars(args), dir=str(folder), entity=args.wandb_entity, project=args.wandb_project,
                             name=args.wandb_name)
    while True:
        new = {name: found for name, found in checkpoints(folder).items() if name not in stats}
        if not new and args.once:
            return stats
        for name, (step, path) in new.items():
            stats[name], images = score(path, accelerator, state)  # every process: the statistics are reduced
            if accelerator.is_main_process:
                print(f"checkpoint {name} " + " ".join(f"{key} {value}" for key, value in stats[name].items()))
                view = grid(images, args.test_visual_batch_size)
                Image.fromarray(view).save(folder / f"eval_grid_{step:06d}.png")
                write_text_atomic(stats_path, json.dumps(stats, indent=2) + "\n")
                if tracker is not None:
                    tracker.log({**stats[name], "generated_image_grid": wandb.Image(view)}, step=step)
            accelerator.wait_for_everyone()
        if not new:
            time.sleep(args.poll_seconds)


def main(args: argparse.Namespace) -> dict:
    from evaluations.inception import load_inception

    ref = reference(args.ref_path)

    def score(path, accelerator, detector):
        images = generate_images(path, args, accelerator)
        return {"fid": fid_of(images, args, detector, ref)}, images

    return watch_folder(args, lambda accelerator: load_inception(args.inception_weights, accelerator.device), score)


if __name__ == "__main__":
    run_cli(main, parse_args())
