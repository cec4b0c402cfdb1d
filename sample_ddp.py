"""Many samples for FID, in parallel: PNGs plus one ``.npz`` for the ADM evaluator, from any model.

The ``.npz`` holds ``arr_0`` (uint8 NHWC, exactly N images) and ``arr_1`` (their class labels).
Any model (DiT, the U-Net, SiT / REPA / REG) with any sampler: DDPM, DDIM, Euler (Heun) ODE,
Euler-Maruyama SDE, guided inside an interval; REG's class-token guidance.

  torchrun --nnodes=1 --nproc_per_node=N sample_ddp.py --model DiT-XL/2 --num-fid-samples 50000
  torchrun --nproc_per_node=N sample_ddp.py --ckpt exps/reg/checkpoints/4000000.pt --sampler sde \\
      --num-sampling-steps 250 --cfg-scale 2.3 --cls-cfg-scale 2.3 --guidance-high 0.85
  torchrun --nproc_per_node=2 sample_ddp.py --ckpt results/000-DiT-Ti-4/checkpoints/0002000.pt   # CPU: gloo
  torchrun --nproc_per_node=8 sample_ddp.py SDE --model SiT-XL/2 --num-fid-samples 50000   # SiT's command line

Image ``i`` of batch ``b`` on rank ``r`` is file ``b * global_batch + i * world + r`` (official
layout). Each batch draws its noise and labels from its own seed (global seed, batch, rank),
so a re-run skips the PNGs already written and still produces the same set. The sample folder
is named after the checkpoint (with the start of its sha256) and the sampler settings, and its
``manifest.json`` records everything that decides its images; a re-run whose settings differ
(another checkpoint, seed, per-process batch or number of processes) is refused, never merged.
The ``.npz`` is also copied to the name official DiT's script gives it,
``{sample-dir}/{model}-{ckpt}-size-{size}-vae-{vae}-cfg-{cfg}-seed-{seed}.npz`` (the latest run's), where the
originals' evaluation commands look for it.

``--prompts FILE`` (or ``--prompt``) samples a text-to-image generator (DMD2's, ``sample.py --prompt``'s flags): image
``i`` is prompt ``i`` of the first ``--num-fid-samples``, in the same file layout, noise from the batch's seed; the
folder also holds the prompts in order (``prompts.txt``) and the ``.npz`` only ``arr_0``; score it with
``--ref-batch`` or ``python -m evaluations.watch_text``'s COCO FID and CLIP score.

  torchrun --nproc_per_node=8 sample_ddp.py --ckpt RUN/checkpoints/0020000.pt --prompts coco10k_prompts.txt

A first argument ``ODE`` or ``SDE`` is SiT's mode (``evaluations/sit_cli.py``): SiT's flags and samplers; the
``.npz`` is also copied to the name SiT's script gives it, ``{sample-dir}/{model}-{ckpt}-cfg-{cfg}-{batch}-{mode}-
{steps}-{method}[...].npz`` (the latest run's), and ``--likelihood`` writes each image's log-likelihood to
``{folder}-likelihood.npz``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from PIL import Image
from tqdm.auto import tqdm

from common.checkpoint import copy_atomic, write_text_atomic
from common.cli import add_local_rank, check_writable_dir, first_paragraph, run_cli, use_local_rank
from common.monitor import to_uint8
from common.setup import setup_accelerator
from diffusion.pipeline import generate, generate_sit, sit_likelihood
from diffusion.sit_samplers import bits_per_dim
from evaluations.prompt_cli import add_prompt_args
from evaluations.sampling_cli import (
    add_eval_args,
    add_sampling_args,
    check_sampling_args,
    choose_sampler,
    original_npz_name,
    sampling_settings,
    score,
)
from evaluations.sit_cli import (
    add_sit_args,
    manifest_entry,
    sampler_name,
    sit_query,
    sit_sample_name,
    sit_sampling,
    split_mode,
)
from models.pretrained import build_for_sampling, load_codec, resolve_sampling_config, sampling_config
from models.weights import sha256_of


def parse_args(argv=None) -> argparse.Namespace:
    mode, argv = split_mode(sys.argv[1:] if argv is None else list(argv))
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    if mode is not None:
        add_sit_args(p, mode, "sample_ddp.py")
        p.add_argument("--sample-dir", type=str, default="samples")
        p.add_argument("--per-proc-batch-size", type=int, default=4)
        add_eval_args(p)
        add_local_rank(p)
        args = p.parse_args(argv, argparse.Namespace(mode=mode))
        use_local_rank(args)
        return args
    add_sampling_args(p, repa_names=False, cfg_scale=1.5, num_steps=250, model_default="DiT-XL/2 (official weights, downloaded without --ckpt)",
                      vae_default="ema",
                      sampler_default="ddpm for DiT and the U-Net, sde for SiT (the papers' FID samplers)")
    p.add_argument("--sample-dir", type=str, default="samples")
    p.add_argument("--per-proc-batch-size", type=int, default=32)
    add_eval_args(p)
    add_prompt_args(p)
    args = p.parse_args(argv)
    args.default_vae, args.flow_default, args.mode, args.script = "ema", "sde", None, "sample_ddp.py"
    use_local_rank(args)
    return args


MANIFEST = "manifest.json"


def check_manifest(folder: Path, manifest: dict) -> None:
    """A sample folder is resumed only by a run that would draw the same images: same checkpoint bytes,
    sampler settings, seed, per-process batch and number of processes (``--num-fid-samples`` may grow)."""
    if not folder.is_dir():
        return
    path = folder / MANIFEST
    if not path.is_file():
        if any(folder.glob("*.png")):
            raise ValueError(f"{folder} holds samples without a {MANIFEST}, so nothing says what drew them; "
                             "delete the folder or pass another --sample-dir")
        return
    old = json.loads(path.read_text())
    new = json.loads(json.dumps(manifest))  # the same types as read back
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if changed:
        k = changed[0]
        raise ValueError(f"{folder} holds samples made with {k} {old.get(k)}, not {new.get(k)}: they would not be "
                         "the same images, so they are not merged; delete the folder or pass another --sample-dir")


def batch_seed(global_seed: int, batch: int, world: int, rank: int) -> int:
    return global_seed * 1_000_003 + batch * world + rank


def batch_labels(seed: int, n: int, num_classes: int, indices: list[int] | None = None) -> torch.Tensor:
    """The labels of one batch: uniform classes from the batch's own seed, or with ``indices`` (the images'
    numbers) class-balanced, ``index % num_classes``."""
    if indices is not None:
        return torch.tensor(indices) % num_classes
    return torch.randint(0, num_classes, (n,), generator=torch.Generator().manual_seed(seed))


def image_index(batch: int, i: int, global_batch: int, world: int, rank: int) -> int:
    return batch * global_batch + i * world + rank


def likelihood_file(folder: Path, batch: int, rank: int) -> Path:
    """One batch's log-likelihoods (nats, in the batch's image order), kept until the run ends."""
    return folder / f"logp-{batch:06d}-{rank:03d}.npy"


def write_likelihood(folder: Path, args, num_batches: int, world: int, dims: int) -> Path:
    """``{folder}-likelihood.npz``: ``logp`` (nats) and ``bits_per_dim`` of the first ``--num-fid-samples`` images,
    in the ``.npz``'s order; ``dims`` is the size of one sample in the model's latent space."""
    n = args.per_proc_batch_size
    logp = np.empty(num_batches * n * world)
    for b in range(num_batches):
        for rank in range(world):
            where = [image_index(b, i, n * world, world, rank) for i in range(n)]
            logp[where] = np.load(likelihood_file(folder, b, rank))
    logp = logp[: args.num_fid_samples]
    path = folder.parent / (folder.name + "-likelihood.npz")
    tmp = folder.with_name(folder.name + "-likelihood.tmp.npz")
    np.savez(tmp, logp=logp, bits_per_dim=bits_per_dim(torch.from_numpy(logp), dims).numpy(), dims=dims)
    tmp.replace(path)
    return path


def write_npz(folder: Path, n: int, labels: np.ndarray | None) -> Path:
    """Stack PNGs ``000000.png .. {n-1}.png`` into ``{folder}.npz`` (written atomically), with their labels."""
    images = np.stack([np.asarray(Image.open(folder / f"{i:06d}.png").convert("RGB")) for i in
                       tqdm(range(n), desc="building .npz", dynamic_ncols=True)])
    path = folder.parent / (folder.name + ".npz")
    tmp = folder.with_name(folder.name + ".tmp.npz")
    np.savez(tmp, arr_0=images, **({"arr_1": labels} if labels is not None else {}))
    tmp.replace(path)
    return path


@torch.no_grad()
def all_labels(args: argparse.Namespace, num_classes: int, num_batches: int, world: int) -> np.ndarray:
    """The labels of the first ``--num-fid-samples`` images, redrawn as every process drew them."""
    n = args.per_proc_batch_size
    labels = np.empty(num_batches * n * world, dtype=np.int64)
    for b in range(num_batches):
        for rank in range(world):
            where = [image_index(b, i, n * world, world, rank) for i in range(n)]
            labs = batch_labels(batch_seed(args.global_seed, b, world, rank), n, num_classes,
                                where if args.class_balanced else None)
            labels[where] = labs.numpy()
    return labels[: args.num_fid_samples]


@dataclass
class Plan:
    """What a run samples with and where it writes, settled before anything is written."""

    cfg: dict
    codec: object
    model: torch.nn.Module
    settings: dict
    manifest: dict
    folder: Path
    sit: bool


def plan(args: argparse.Namespace, accelerator) -> Plan:
    """The checkpoint, codec, sampler settings and sample folder of ``args``; the folder's manifest checked."""
    sit = getattr(args, "mode", None) is not None
    state_dict, cfg = sampling_config(sit_query(args)) if sit else resolve_sampling_config(args)
    if not sit:
        args.sampler = choose_sampler(args, cfg)
    digest = gather_object([sha256_of(cfg["ckpt"]) if accelerator.is_main_process else ""])[0]
    manifest = {"checkpoint_sha256": digest, "model": cfg["model"], "image_size": cfg["image_size"],
                "vae": cfg["vae"], "num_classes": cfg["num_classes"], "global_seed": args.global_seed,
                "per_proc_batch_size": args.per_proc_batch_size, "world_size": accelerator.num_processes,
                "class_balanced": args.class_balanced}
    codec = load_codec(cfg, accelerator.device)
    if sit:
        kwargs = sit_sampling(args, cfg)
        settings = {"kwargs": kwargs, "name": f"SiT-{sampler_name(args)}-cfg-{args.cfg_scale}"}
        manifest.update(sampling=manifest_entry(kwargs), likelihood=getattr(args, "likelihood", False))
    else:
        settings = sampling_settings(args, cfg, codec)
        manifest["sampling"] = settings["kwargs"]
    folder = Path(args.sample_dir) / (f"{cfg['model'].replace('/', '-')}-{Path(cfg['ckpt']).stem}-{digest[:8]}-"
                                      f"size-{cfg['image_size']}-vae-{cfg['vae']}-seed-{args.global_seed}"
                                      f"{'-balanced' if args.class_balanced else ''}-{settings['name']}")
    check_manifest(folder, manifest)
    model = build_for_sampling(state_dict, cfg, codec, accelerator.device)
    return Plan(cfg, codec, model, settings, manifest, folder, sit)


def sample_batch(run: Plan, args, b: int, indices: list[int], device, rank: int, world: int) -> None:
    """Batch ``b`` of this process: its noise and labels from its own seed, its PNGs (and log-likelihoods)."""
    seed, n = batch_seed(args.global_seed, b, world, rank), len(indices)
    size = run.cfg["image_size"] // run.codec.downsample
    torch.manual_seed(seed)
    noise = torch.randn(n, run.codec.latent_channels, size, size, device=device)
    y = batch_labels(seed, n, run.cfg["num_classes"], indices if args.class_balanced else None).to(device)
    kw = run.settings["kwargs"]
    z = generate_sit(run.model, noise, y, **kw) if run.sit else generate(run.model, noise, y, **kw)
    if run.manifest.get("likelihood"):
        logp = sit_likelihood(run.model, z, y, transport=kw["transport"], num_steps=kw["num_steps"],
                              noise_schedule=kw["noise_schedule"], sampling_method=kw["sampling_method"],
                              atol=kw["atol"], rtol=kw["rtol"])
        np.save(likelihood_file(run.folder, b, rank), logp.cpu().numpy())
    for j, img in zip(indices, to_uint8(run.codec.decode(z))):
        tmp = run.folder / f"{j:06d}.tmp.png"
        Image.fromarray(img).save(tmp)
        tmp.replace(run.folder / f"{j:06d}.png")


def finish(run: Plan, args, num_batches: int, world: int) -> None:
    """The ``.npz`` (and SiT's copy of it, and the log-likelihoods) from the PNGs; main process only."""
    size = run.cfg["image_size"]
    path = write_npz(run.folder, args.num_fid_samples, all_labels(args, run.cfg["num_classes"], num_batches, world))
    print(f"saved .npz file to {path} [shape=({args.num_fid_samples}, {size}, {size}, 3)]")
    name = sit_sample_name(args) if run.sit else original_npz_name(args, run.cfg)
    original = Path(args.sample_dir) / f"{name}.npz"
    copy_atomic(path, original)
    print(f"and to {original} (the original script's name; the latest run's)")
    if run.manifest.get("likelihood"):
        dims = run.codec.latent_channels * (size // run.codec.downsample) ** 2
        print(f"saved the samples' log-likelihood to {write_likelihood(run.folder, args, num_batches, world, dims)}")


def checkpoint_digest(path: str) -> str:
    """sha256 of a checkpoint file, or of the generator file in DMD2's ``checkpoint_model_NNNNNN/`` folder."""
    file = Path(path)
    return sha256_of(file / "pytorch_model.bin" if file.is_dir() else file)


def prompt_plan(args: argparse.Namespace, accelerator) -> tuple[Plan, object, np.ndarray, list[str]]:
    """A text-to-image generator's plan, its prompt encoder and abar table, and the prompts of the samples."""
    import hashlib

    from evaluations.prompt_cli import load_text_generator, read_prompt_args

    prompts = read_prompt_args(args)[: args.num_fid_samples]
    if not prompts:
        raise ValueError(f"--prompts {args.prompts} holds no prompts")
    if args.proxy or args.class_balanced:
        raise ValueError("--proxy and --class-balanced read class labels, which a text-to-image generator has not: "
                         "score its samples with --ref-batch or python -m evaluations.watch_text")
    model, encoder, codec, abar = load_text_generator(args, accelerator.device)
    digest = gather_object([checkpoint_digest(args.ckpt) if accelerator.is_main_process else ""])[0]
    text = hashlib.sha256("\n".join(prompts).encode()).hexdigest()
    steps = len(model.generator_sigmas)
    manifest = {"checkpoint_sha256": digest, "base_model": args.model_id, "prompts_sha256": text,
                "generator_sigmas": model.generator_sigmas, "precision": args.precision,
                "global_seed": args.global_seed, "per_proc_batch_size": args.per_proc_batch_size,
                "world_size": accelerator.num_processes}
    folder = Path(args.sample_dir) / (f"{Path(args.ckpt).stem}-{digest[:8]}-prompts-{text[:8]}-steps-{steps}-"
                                      f"{args.precision}-seed-{args.global_seed}")
    check_manifest(folder, manifest)
    cfg = {"model": "diffusers", "image_size": model.unet.config.sample_size * codec.downsample, "num_classes": 0}
    return Plan(cfg, codec, model, {}, manifest, folder, False), encoder, abar, prompts


def sample_prompt_batch(run: Plan, encoder, abar, prompts: list[str], args, b: int, indices: list[int],
                        rank: int, world: int) -> None:
    """Batch ``b`` of this process: the prompts of its images (those within the set), noise from its own seed."""
    from evaluations.prompt_cli import PRECISIONS, sample_prompts

    indices = [j for j in indices if j < len(prompts)]
    if not indices:
        return
    seed = batch_seed(args.global_seed, b, world, rank)
    z = sample_prompts(run.model, encoder, abar, [prompts[j] for j in indices], seed, PRECISIONS[args.precision])
    for j, img in zip(indices, to_uint8(run.codec.decode(z))):
        tmp = run.folder / f"{j:06d}.tmp.png"
        Image.fromarray(img).save(tmp)
        tmp.replace(run.folder / f"{j:06d}.png")


def open_folder(run: Plan, accelerator, prompts: list[str] | None) -> None:
    """The sample folder with its manifest (and the prompts in order), once every process has checked it."""
    accelerator.wait_for_everyone()  # every process has checked the folder before the first one writes to it
    if accelerator.is_main_process:
        run.folder.mkdir(parents=True, exist_ok=True)
        if not (run.folder / MANIFEST).is_file():
            write_text_atomic(run.folder / MANIFEST, json.dumps(run.manifest, indent=2) + "\n")
        if prompts is not None:
            write_text_atomic(run.folder / "prompts.txt", "".join(p.replace("\n", " ") + "\n" for p in prompts))
        print(f"saving .png samples at {run.folder}")
    accelerator.wait_for_everyone()


def main(args: argparse.Namespace) -> None:
    check_sampling_args(args)
    check_writable_dir(args.sample_dir, "--sample-dir")
    accelerator = setup_accelerator(allow_tf32=args.tf32)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    prompts = None
    if getattr(args, "prompt", None) or getattr(args, "prompts", None):  # not in SiT's mode nor generate.py
        run, encoder, abar, prompts = prompt_plan(args, accelerator)
    else:
        run = plan(args, accelerator)
    count = len(prompts) if prompts is not None else args.num_fid_samples
    folder = run.folder
    open_folder(run, accelerator, prompts)

    n = args.per_proc_batch_size
    global_batch = n * world
    num_batches = math.ceil(count / global_batch)  # round up, as the official script does
    if accelerator.is_main_process:
        print(f"{num_batches * global_batch:,} samples in {num_batches} batches of {global_batch} "
              f"({world} process(es)); the .npz keeps the first {count:,}")
    for b in tqdm(range(num_batches), disable=not accelerator.is_main_process, desc="sampling", dynamic_ncols=True):
        indices = [image_index(b, i, global_batch, world, rank) for i in range(n)]
        if all((folder / f"{j:06d}.png").is_file() for j in indices if prompts is None or j < count) and (
                not run.manifest.get("likelihood") or likelihood_file(folder, b, rank).is_file()):
            continue  # written by an earlier, interrupted run
        if prompts is not None:
            sample_prompt_batch(run, encoder, abar, prompts, args, b, indices, rank, world)
        else:
            sample_batch(run, args, b, indices, device, rank, world)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and prompts is not None:
        print(f"saved .npz file to {write_npz(folder, count, None)} (prompts in {folder / 'prompts.txt'})")
    elif accelerator.is_main_process:
        finish(run, args, num_batches, world)
    accelerator.wait_for_everyone()
    npz = folder.parent / (folder.name + ".npz")
    if args.ref_batch or args.proxy:
        score(args, npz, run.cfg["num_classes"], accelerator.is_main_process)
    return npz


if __name__ == "__main__":
    run_cli(main, parse_args())
