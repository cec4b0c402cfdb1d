"""Score each checkpoint of a text-to-image run as it appears: DMD2's ``main/test_folder_sd.py`` (SD1.5) and
``main/sdxl/test_folder_sdxl.py`` (SDXL), their flags.

  python -m evaluations.watch_text --folder RUN --anno_path captions_coco14_test.pkl --ref_dir val2014 \\
      --eval_res 256 --total_eval_samples 30000 --model_id runwayml/stable-diffusion-v1-5 --pred_eps
  python -m evaluations.watch_text --folder RUN --conditioning_timestep 999 --num_step 4 --eval_res 512 \\
      --ref_dir coco10k/subset --anno_path coco10k/all_prompts.pkl --total_eval_samples 10000 --clip_score \\
      --model_id stabilityai/stable-diffusion-xl-base-1.0

The checkpoints are DMD2's ``checkpoint_model_NNNNNN/`` folders (the generator's UNet on ``--model_id``, its steps
from ``--num_step`` and ``--conditioning_timestep``) and this repository's ``checkpoints/NNNNNNN.pt`` (their own
base model and steps). DMD2's protocol: the first ``--total_eval_samples`` captions of ``--anno_path`` in order, in
batches of ``--eval_batch_size``, batch i drawing its noise from seed i, the renoising of few-step generation from
``--seed``; images decoded to uint8 by truncation. Scored (``evaluations/coco.py``): FID against ``--ref_dir`` at
``--eval_res``, for SDXL also the patch FID, with ``--clip_score`` DMD2's CLIP score; results in
``{folder}/stats.json`` and, with ``--wandb_project``, wandb. One difference: x0 is read with the scheduler's own
abar at each step, where DMD2's SD1.5 script hard-codes 0.0047 for step 999 (docs/notes/dmd2.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from common.cli import first_paragraph, run_cli
from evaluations.watch import watch_folder


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--folder", type=str, required=True, help="the run folder to watch")
    p.add_argument("--checkpoint_path", type=str, default=None, help="accepted as DMD2's; score --folder instead")
    for name in ("wandb_entity", "wandb_project", "wandb_name", "result_path", "revision"):
        p.add_argument(f"--{name}", type=str, default=None)
    p.add_argument("--eval_batch_size", type=int, default=10)
    p.add_argument("--latent_resolution", type=int, default=None, help="checked against the model")
    p.add_argument("--image_resolution", type=int, default=None, help="checked against the model")
    p.add_argument("--num_train_timesteps", type=int, default=1000)
    p.add_argument("--test_visual_batch_size", type=int, default=64, help="images in the grid")
    p.add_argument("--per_image_object", type=int, default=16, help="accepted, as DMD2's grids")
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--anno_path", type=str, required=True, help="the evaluation captions (text file or DMD2's .pkl)")
    p.add_argument("--eval_res", type=int, default=256)
    p.add_argument("--ref_dir", type=str, default=None, help="the reference images (COCO val2014 / DMD2's coco10k)")
    p.add_argument("--total_eval_samples", type=int, default=30000)
    p.add_argument("--model_id", type=str, default=None, help="the base model of DMD2's folders (default: SDXL's for "
                   "an SDXL UNet, else SD1.5's, as test_folder_sdxl.py / test_folder_sd.py)")
    p.add_argument("--pred_eps", action="store_true", help="accepted: DMD2's generators predict eps, as here")
    p.add_argument("--skip_eval", action="store_true", help="generate, draw the grid, score nothing")
    p.add_argument("--clip_score", action="store_true")
    p.add_argument("--num_step", type=int, choices=[1, 4], default=None, help="DMD2's folders: default 1")
    p.add_argument("--conditioning_timestep", type=int, default=999)
    p.add_argument("--generator_lora", action="store_true", help="accepted: LoRA adapters are found by their names")
    p.add_argument("--lora_rank", type=int, default=64, help="accepted: the rank is read off the adapters")
    p.add_argument("--lora_alpha", type=float, default=8, help="DMD2's folders of a LoRA run: the adapters' alpha")
    p.add_argument("--lora_dropout", type=float, default=0.0, help="accepted, as DMD2's script")
    ours = p.add_argument_group("beyond DMD2's flags")
    ours.add_argument("--once", action="store_true", help="stop once every checkpoint in the folder is scored")
    ours.add_argument("--no_resume", action="store_true", help="score again what stats.json holds")
    ours.add_argument("--poll_seconds", type=float, default=30.0)
    ours.add_argument("--inception-weights", dest="inception_weights", type=str, default=None)
    ours.add_argument("--proxy", action="store_true", help="FD on the built-in proxy classifier's features instead of "
                      "Inception's (proxy_fd; offline demos, not COCO FID; no patch FID)")
    return p.parse_args(argv)


@torch.no_grad()
def generate(path: Path, args, captions: list[str], device) -> np.ndarray:
    """DMD2's evaluation images of the generator in ``path`` for ``captions`` (uint8 NHWC)."""
    from diffusion.denoiser import DDPMDenoiser
    from diffusion.pipeline import few_step_sample
    from evaluations.prompt_cli import load_text_generator

    record = run_record(path)
    own = path.suffix == ".pt"
    query = argparse.Namespace(ckpt=str(path), model_id=None if own else (record or {}).get("sd_model", args.model_id),
                               revision=args.revision, num_step=None if own or record else args.num_step or 1,
                               conditioning_timestep=args.conditioning_timestep, precision="float32", dmd2_base=True,
                               lora_alpha=(record or {}).get("lora_alpha", args.lora_alpha))
    model, encoder, codec, abar = load_text_generator(query, device)
    if record is not None and not own:  # a DMD2 folder of this repository's run: the run's own steps
        model.generator_sigmas = [float(s) for s in record["generator_sigmas"]]
    channels, size = model.unet.config.in_channels, model.unet.config.sample_size
    torch.manual_seed(args.seed)
    out = []
    for index, start in enumerate(range(0, len(captions), args.eval_batch_size)):
        batch = captions[start:start + args.eval_batch_size]
        noise = torch.randn(len(batch), channels, size, size, generator=torch.Generator().manual_seed(index))
        x0 = few_step_sample(DDPMDenoiser(model, abar), noise.to(device), encoder(batch), model.generator_sigmas,
                             unit_noise=True)
        images = codec.decode(x0.float())
        out.append(((images + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out), model.xl


def run_record(path: Path) -> dict | None:
    """The sampling record of this repository's run a DMD2 folder sits in (``--checkpoint_layout dmd2`` writes
    both), else None."""
    from common.checkpoint import load_checkpoint

    ours = sorted(path.parent.parent.glob("checkpoints/[0-9]*.pt")) if path.name == "pytorch_model.bin" else []
    return load_checkpoint(ours[-1]).get("sampling_record") if ours else None


def main(args: argparse.Namespace) -> dict:
    from evaluations.coco import clip_score, coco_fid, load_clip
    from evaluations.inception import load_inception
    from models.stable_diffusion import read_prompts

    captions = read_prompts(args.anno_path, flag="--anno_path")[: args.total_eval_samples]
    if not args.skip_eval and args.ref_dir is None:
        raise ValueError("pass --ref_dir (the reference images) or --skip_eval")

    def prepare(accelerator):
        if accelerator.num_processes > 1:
            raise ValueError("DMD2's text-to-image evaluation runs on one process (its scripts assert it): launch "
                             "python -m evaluations.watch_text without torchrun")
        detector = None
        if args.proxy and not args.skip_eval:
            from evaluations.proxy import ProxyFeatures, get_proxy_classifier

            detector = ProxyFeatures(get_proxy_classifier(device=accelerator.device))
        elif not args.skip_eval:
            detector = load_inception(args.inception_weights, accelerator.device)
        clip = load_clip(accelerator.device) if args.clip_score and not args.skip_eval else None
        return detector, clip

    def score(path, accelerator, state):
        detector, clip = state
        images, xl = generate(path, args, captions, accelerator.device)
        if args.skip_eval:
            return {}, images
        metrics = {"proxy_fd" if args.proxy else "fid": coco_fid(images, args.ref_dir, detector, args.eval_res)}
        if xl and not args.proxy:  # test_folder_sdxl.py also scores a 299 px centre patch
            metrics["patch_fid"] = coco_fid(images, args.ref_dir, detector, None, patch=True)
        if clip is not None:
            metrics["clip_score"] = clip_score(images, captions, *clip)
        return metrics, images

    return watch_folder(args, prepare, score)


if __name__ == "__main__":
    run_cli(main, parse_args())
