"""Pretrain a VAE of ``models/vae.py`` on reconstruction, for REPA-E runs that start from scratch (the demo).

  python preprocessing/pretrain_vae.py --vae-arch tiny-f4d4 --data-dir results/demo-repae/data \\
      --max-train-steps 1500 --save-dir results/demo-repae/pretrained --vae-name tiny-vae

L1 + KL with REPA-E's weights (``configs/l1_lpips_kl_gan.yaml`` without the GAN term; LPIPS with
``--lpips-vgg`` or ``--lpips-random``, else off), on the engine (``training/engine.py``). Writes what
``train_repae.py --vae-ckpt`` reads, in REPA-E's released format: ``{save-dir}/{vae-name}/{vae-name}.pt``
(LDM names) and ``{vae-name}-latents-stats.pt`` (per-channel ``latents_scale = 1 / std`` and
``latents_bias = mean`` of posterior samples of ``--stats-images`` images). When both files exist
the run is skipped (a cache): delete them to train again. One process only: launched on several
(``WORLD_SIZE`` > 1 or a larger process group), it refuses in one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.checkpoint import save_atomic  # noqa: E402
from common.cli import check_plain_name, first_paragraph, require_positive, run_cli  # noqa: E402
from diffusion.network import unwrap  # noqa: E402
from imagedata.h5 import H5Images  # noqa: E402
from loss.autoencoder import LossConfig, VAELoss  # noqa: E402
from models.vae import PixelCodec, VAE_models, to_ldm_state_dict  # noqa: E402
from training.data import Batches  # noqa: E402
from training.engine import Method, adamw  # noqa: E402
from training.fit import Checkpoints, Grids, RunSpec, TrainData, fit  # noqa: E402


class ReconstructionMethod(Method):
    """A VAE alone, trained with ``VAELoss.generator`` (no discriminator)."""

    def __init__(self, vae, vae_loss: VAELoss, batches: Batches, lr: float):
        self.modules = {"vae": vae.to(batches.device)}
        self.optimizers = {"opt_vae": adamw(vae.parameters(), lr)}
        self.emas = {}
        self.vae_loss, self.batches = vae_loss, batches

    def train_step(self, engine, batch) -> dict[str, torch.Tensor]:
        _, x, _ = self.batches(batch)
        with engine.autocast():
            posterior, _, recon = self.modules["vae"](x)
            losses = self.vae_loss.generator(x, recon, posterior, None, engine.steps)
        engine.backward(losses["loss"])
        engine.step("opt_vae", 1.0)
        return losses


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--vae-arch", choices=list(VAE_models), default="tiny-f4d4")
    p.add_argument("--data-dir", type=str, required=True, help="holds images.h5 (REPA-E's layout)")
    p.add_argument("--max-train-steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--stats-images", type=int, default=2000, help="images whose latents give the statistics")
    p.add_argument("--save-dir", type=str, required=True)
    p.add_argument("--vae-name", type=str, default="vae")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lpips-vgg", type=str, default=None, help="LPIPS with torchvision's VGG16 file")
    p.add_argument("--lpips-random", action="store_true", help="LPIPS on a random VGG (mechanics only)")
    return p.parse_args(argv)


def check_one_process() -> None:
    """This script trains on one process; torchrun / accelerate launch with several would each train a copy."""
    world = os.environ.get("WORLD_SIZE", "1")
    world = int(world) if world.strip().isdigit() else 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = max(world, torch.distributed.get_world_size())
    if world > 1:
        raise ValueError(f"preprocessing/pretrain_vae.py runs on one process, not {world}: run it with python "
                         "(or torchrun --nproc_per_node 1)")


def main(args: argparse.Namespace) -> Path:
    check_one_process()
    check_plain_name(args.vae_name, "--vae-name")
    folder = Path(args.save_dir) / args.vae_name
    weights, stats_file = folder / f"{args.vae_name}.pt", folder / f"{args.vae_name}-latents-stats.pt"
    if weights.is_file() and stats_file.is_file():
        print(f"{weights} and its latent statistics exist: nothing to do (delete them to pretrain again)")
        return weights
    require_positive(args, "max_train_steps", "batch_size", "stats_images")
    built = {}

    def build(process):
        dataset = H5Images(args.data_dir)
        perceptual = None
        if args.lpips_vgg or args.lpips_random:
            from loss.perceptual import PerceptualLoss

            perceptual = PerceptualLoss(random_backbone=args.lpips_random, vgg_path=args.lpips_vgg)
        config = LossConfig(discriminator_weight=0.0, perceptual_weight=1.0 if perceptual else 0.0)
        batches = Batches(dataset, PixelCodec(), process.device)
        vae = VAE_models[args.vae_arch]()
        built.update(method=ReconstructionMethod(vae, VAELoss(config, perceptual), batches, args.learning_rate),
                     dataset=dataset, device=process.device)
        return built["method"], TrainData(dataset, "h5")

    fit(build, RunSpec(results_dir=args.save_dir, results_flag="--save-dir", run_name=args.vae_name,
                       exp_name=args.vae_name, record=vars(args), max_steps=args.max_train_steps,
                       steps_flag="--max-train-steps", batch_size=args.batch_size, batch_flag="--batch-size",
                       seed=args.seed, num_workers=0, log_every=max(1, args.max_train_steps // 10),
                       checkpoints=Checkpoints(every=0), grids=Grids(every=0)))
    dataset, device = built["dataset"], built["device"]
    vae = unwrap(built["method"].modules["vae"]).eval()
    latents = []
    with torch.no_grad():
        for start in range(0, min(args.stats_images, len(dataset)), args.batch_size):
            indices = range(start, min(start + args.batch_size, args.stats_images, len(dataset)))
            images = torch.stack([torch.from_numpy(dataset.image(i).copy()) for i in indices]).float()
            latents.append(vae.encode(images.to(device) / 127.5 - 1).sample().cpu())
    z = torch.cat(latents).transpose(0, 1).flatten(1)
    stats = {"latents_scale": (1 / z.std(dim=1)).view(1, -1, 1, 1), "latents_bias": z.mean(dim=1).view(1, -1, 1, 1)}
    save_atomic(to_ldm_state_dict(vae.state_dict()), weights)
    save_atomic(stats, stats_file)
    print(f"saved {weights} and {stats_file.name} (latent mean {stats['latents_bias'].flatten().tolist()}, "
          f"std {(1 / stats['latents_scale']).flatten().tolist()})")
    return weights


if __name__ == "__main__":
    run_cli(main, parse_args())
