"""Pretrain a VAE of ``models/vae.py`` on reconstruction, with or without its discriminator, for REPA-E runs that start
from scratch (the demo).

  python preprocessing/pretrain_vae.py --vae-arch tiny-f4d4 --data-dir results/demo-repae/data \\
      --max-train-steps 1500 --save-dir results/demo-repae/pretrained --vae-name tiny-vae \\
      [--loss-cfg-path configs/demo_pretrain_l1_kl_gan.yaml]

The loss is REPA-E's (``loss/autoencoder.py``). Without ``--loss-cfg-path``: L1 + KL with REPA-E's weights
(``configs/l1_lpips_kl_gan.yaml`` without the GAN term; LPIPS with ``--lpips-vgg`` or ``--lpips-random``, else off).
With a loss YAML whose ``discriminator_weight`` is above 0, a PatchGAN discriminator is trained beside the VAE (hinge
loss, same learning rate, from ``discriminator_start``), as SD-VAE was, so that REPA-E's end-to-end run starts from
both trained. On the engine (``training/engine.py``). Writes what ``train_repae.py --vae-ckpt`` and
``--disc-pretrained-ckpt`` read, in REPA-E's released format: ``{save-dir}/{vae-name}/{vae-name}.pt`` (LDM names),
``{vae-name}-latents-stats.pt`` (per-channel ``latents_scale = 1 / std`` and ``latents_bias = mean`` of posterior
samples of ``--stats-images`` images) and, with the discriminator, ``{vae-name}-discriminator-ckpt.pt``. When they
all exist the run is skipped (a cache): delete them to train again. One process only: launched on several
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
from loss.autoencoder import LossConfig, VAELoss, load_loss_config  # noqa: E402
from models.discriminator import NLayerDiscriminator  # noqa: E402
from models.vae import PixelCodec, VAE_models, to_ldm_state_dict  # noqa: E402
from training.data import Batches  # noqa: E402
from training.engine import Method, Trainable, adamw  # noqa: E402
from training.fit import Checkpoints, Grids, RunSpec, TrainData, fit  # noqa: E402


class ReconstructionMethod(Method):
    """A VAE trained with ``VAELoss.generator``; with a ``discriminator``, that one too, in REPA-E's order: the VAE
    against the frozen discriminator, then the discriminator's hinge loss on the detached reconstruction."""

    def __init__(self, vae, vae_loss: VAELoss, batches: Batches, lr: float, discriminator=None):
        self.modules = {"vae": vae.to(batches.device)}
        self.optimizers = {"opt_vae": adamw(vae.parameters(), lr)}
        if discriminator is not None:
            self.modules["discriminator"] = discriminator.to(batches.device)
            self.optimizers["opt_disc"] = adamw(discriminator.parameters(), lr)
            self.switch = Trainable(discriminator)
        self.emas = {}
        self.vae_loss, self.batches = vae_loss, batches

    def train_step(self, engine, batch) -> dict[str, torch.Tensor]:
        _, x, _ = self.batches(batch)
        disc = engine.module("discriminator") if "discriminator" in self.modules else None
        if disc is not None:
            self.switch.set(disc, False)
        with engine.autocast():
            posterior, _, recon = self.modules["vae"](x)
            losses = self.vae_loss.generator(x, recon, posterior, disc, engine.steps)
        engine.backward(losses["loss"])
        engine.step("opt_vae", 1.0)
        if disc is None:
            return losses
        self.switch.set(disc, True)
        with engine.autocast():
            d = self.vae_loss.discriminator(x, recon, self.modules["discriminator"], engine.steps)
        engine.backward(d["loss"])
        engine.step("opt_disc", 1.0)
        return {**losses, "d_loss": d["d_loss"], "logits_real": d["logits_real"], "logits_fake": d["logits_fake"]}


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
    p.add_argument("--loss-cfg-path", type=str, default=None, help="REPA-E's loss YAML; a GAN weight above 0 "
                   "trains the discriminator too (default: L1 + KL, LPIPS with the flags above)")
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


def loss_of(args: argparse.Namespace) -> VAELoss:
    """``--loss-cfg-path``'s loss, else L1 + KL (+ LPIPS with ``--lpips-vgg`` / ``--lpips-random``)."""
    lpips = bool(args.lpips_vgg or args.lpips_random)
    config = load_loss_config(args.loss_cfg_path) if args.loss_cfg_path else \
        LossConfig(discriminator_weight=0.0, perceptual_weight=1.0 if lpips else 0.0)
    perceptual = None
    if config.perceptual_weight > 0:
        from loss.perceptual import PerceptualLoss

        perceptual = PerceptualLoss(random_backbone=args.lpips_random, vgg_path=args.lpips_vgg)
    return VAELoss(config, perceptual)


@torch.no_grad()
def latents_stats(vae, dataset, device, count: int, batch_size: int) -> dict[str, torch.Tensor]:
    """REPA-E's per-channel ``latents_scale = 1 / std`` and ``latents_bias = mean`` of posterior samples of the
    first ``count`` images."""
    latents = []
    for start in range(0, min(count, len(dataset)), batch_size):
        indices = range(start, min(start + batch_size, count, len(dataset)))
        images = torch.stack([torch.from_numpy(dataset.image(i).copy()) for i in indices]).float()
        latents.append(vae.encode(images.to(device) / 127.5 - 1).sample().cpu())
    z = torch.cat(latents).transpose(0, 1).flatten(1)
    return {"latents_scale": (1 / z.std(dim=1)).view(1, -1, 1, 1), "latents_bias": z.mean(dim=1).view(1, -1, 1, 1)}


def main(args: argparse.Namespace) -> Path:
    check_one_process()
    check_plain_name(args.vae_name, "--vae-name")
    folder = Path(args.save_dir) / args.vae_name
    vae_loss = loss_of(args)
    gan = vae_loss.config.discriminator_weight > 0
    weights, stats_file = folder / f"{args.vae_name}.pt", folder / f"{args.vae_name}-latents-stats.pt"
    disc_file = folder / f"{args.vae_name}-discriminator-ckpt.pt"
    if all(f.is_file() for f in (weights, stats_file, *([disc_file] if gan else []))):
        print(f"{weights} and the files beside it exist: nothing to do (delete them to pretrain again)")
        return weights
    require_positive(args, "max_train_steps", "batch_size", "stats_images")
    built = {}

    def build(process):
        dataset = H5Images(args.data_dir)
        batches = Batches(dataset, PixelCodec(), process.device)
        if vae_loss.perceptual is not None:
            vae_loss.perceptual.to(process.device)
        method = ReconstructionMethod(VAE_models[args.vae_arch](), vae_loss, batches,
                                      args.learning_rate, NLayerDiscriminator() if gan else None)
        built.update(method=method, dataset=dataset, device=process.device)
        return method, TrainData(dataset, "h5")

    fit(build, RunSpec(results_dir=args.save_dir, results_flag="--save-dir", run_name=args.vae_name,
                       exp_name=args.vae_name, record=vars(args), max_steps=args.max_train_steps,
                       steps_flag="--max-train-steps", batch_size=args.batch_size, batch_flag="--batch-size",
                       seed=args.seed, num_workers=0, log_every=max(1, args.max_train_steps // 10),
                       checkpoints=Checkpoints(every=0), grids=Grids(every=0)))
    modules = built["method"].modules
    vae = unwrap(modules["vae"]).eval()
    stats = latents_stats(vae, built["dataset"], built["device"], args.stats_images, args.batch_size)
    save_atomic(to_ldm_state_dict(vae.state_dict()), weights)
    save_atomic(stats, stats_file)
    if gan:
        save_atomic(unwrap(modules["discriminator"]).state_dict(), disc_file)
    print(f"saved {weights}, {stats_file.name}{f' and {disc_file.name}' if gan else ''} (latent mean "
          f"{stats['latents_bias'].flatten().tolist()}, std {(1 / stats['latents_scale']).flatten().tolist()})")
    return weights


if __name__ == "__main__":
    run_cli(main, parse_args())
