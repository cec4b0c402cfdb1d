"""Plausible one-line mistakes in the library, each with the test that must catch it (docs/testing.md).

    python tests/mutants.py            # every mistake
    python tests/mutants.py NAME ...   # some of them

Each mistake is applied to a copy of the repository's tracked files (the checkout is never touched), the
named tests run there, and the mistake counts as caught when they fail. Exit status 1 when one survives.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # the file, relative to the repository root
    old: str  # text that occurs exactly once in it
    new: str
    tests: tuple[str, ...]  # pytest node ids (or -k expressions after "-k")


R, E, D, A, S = ("tests/test_train_repae.py", "tests/test_engine.py", "tests/test_dmd2_updates.py",
                 "tests/test_sampling_oracle.py", "tests/test_train.py")

MUTANTS = [
    # REPA-E's three updates (training/repae.py, loss/autoencoder.py)
    Mutant("repae-gan-sign", "loss/autoencoder.py", 'losses["gan"] = -discriminator(recon)',
           'losses["gan"] = discriminator(recon)',
           (f"{R}::test_the_vae_step_raises_the_discriminators_score_of_its_reconstructions",)),
    Mutant("repae-disc-real-branch", "loss/autoencoder.py", "discriminator(x.float().detach(), recon.float().detach())",
           "discriminator(recon.float().detach(), recon.float().detach())",
           (f"{R}::test_the_discriminator_step_raises_its_score_of_images_and_lowers_that_of_reconstructions",)),
    Mutant("repae-disc-trainable-in-vae-step", "training/repae.py", "        self.trainable(disc, False)\n",
           "        self.trainable(disc, True)\n",
           (f"{R}::test_the_vae_losses_leave_the_discriminator_and_the_sit_updates_unchanged",)),
    Mutant("repae-sit-trainable-in-vae-step", "training/repae.py", "self.trainable(sit, False).eval()",
           "self.trainable(sit, True).eval()",
           (f"{R}::test_the_vae_losses_leave_the_discriminator_and_the_sit_updates_unchanged",)),
    Mutant("repae-bn-eval-in-sit-step", "training/repae.py", "self.trainable(sit, True).train()",
           "self.trainable(sit, True).eval()",
           (f"{R}::test_the_latent_batchnorm_moves_once_a_step_in_the_sit_step_and_the_ema_follows",)),
    Mutant("repae-bn-train-in-vae-step", "training/repae.py", "self.trainable(sit, False).eval()",
           "self.trainable(sit, False).train()",
           (f"{R}::test_the_latent_batchnorm_moves_once_a_step_in_the_sit_step_and_the_ema_follows",)),
    # the EDM adapter (diffusion/denoiser.py)
    Mutant("edm-adapter-scale", "diffusion/denoiser.py", "        x = torch.sqrt(1 + s**2) * x_vp.to(torch.float64)\n",
           "        x = (1 + s**2) * x_vp.to(torch.float64)\n", ("-k", "edm_model", A)),
    # the engine (training/engine.py, training/ema.py)
    Mutant("engine-ema-before-step", "training/engine.py",
           "                losses = self.method.train_step(self, next(batches))\n",
           "                for key, (src, decay) in self.method.emas.items():\n"
           "                    update_ema(self.emas[key], self.module(src), decay)\n"
           "                losses = self.method.train_step(self, next(batches))\n", (f"{E}::test_the_ema_averages_the_weights_after_each_update",)),
    Mutant("engine-clip-ignored", "training/engine.py",
           "norm = self.accelerator.clip_grad_norm_(params, max_grad_norm) if max_grad_norm is not None else None",
           "norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]) "
           "if max_grad_norm is not None else None",
           (f"{E}::test_clipping_scales_the_gradient_to_the_norm_and_returns_the_norm_before",)),
    # DMD2 (training/dmd2.py, loss/dmd.py, training/dmd2_teacher.py)
]


def tracked_copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\n")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def run(mutant: Mutant, copy: Path) -> bool:
    """Whether the mutant's tests fail with the mistake applied."""
    target = copy / mutant.path
    original = target.read_text()
    if original.count(mutant.old) != 1:
        raise SystemExit(f"{mutant.name}: the text to change occurs {original.count(mutant.old)} times in {mutant.path}")
    target.write_text(original.replace(mutant.old, mutant.new))
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests],
                              cwd=copy, capture_output=True, text=True)
    finally:
        target.write_text(original)
    if done.returncode not in (0, 1):  # not a test failure: a missing test, a collection error
        raise SystemExit(f"{mutant.name}: pytest exited with {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.returncode == 1


def main(names: list[str]) -> int:
    chosen = [m for m in MUTANTS if not names or m.name in names]
    unknown = set(names) - {m.name for m in MUTANTS}
    if unknown:
        raise SystemExit(f"unknown mutant(s) {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        copy = Path(tmp)
        tracked_copy(copy)
        survivors = []
        for mutant in chosen:
            caught = run(mutant, copy)
            print(f"{'caught  ' if caught else 'SURVIVED'} {mutant.name}", flush=True)
            if not caught:
                survivors.append(mutant.name)
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} caught")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
