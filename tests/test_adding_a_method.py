"""The worked example of "Adding a method" (README): a toy GAN (``examples/toy_gan.py``, two optimizers and an EMA)
trains through ``fit`` with one method file and one short script, draws its grids, and resumes exactly."""

from __future__ import annotations

import torch

from examples import train_toy_gan


def train(results, *extra):
    return train_toy_gan.main(train_toy_gan.parse_args(["--results-dir", str(results), "--max-steps", "4",
                                                          "--ckpt-every", "2", "--batch-size", "8", *extra]))


def test_a_toy_method_trains_samples_and_resumes_exactly_through_fit(tmp_path):
    run = train(tmp_path)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["0000002.pt", "0000004.pt"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["0000002.png", "0000004.png"]
    assert (run / "loss.png").is_file() and (run / "args.json").is_file()
    straight = torch.load(run / "checkpoints" / "0000004.pt", weights_only=False)
    assert set(straight) >= {"generator", "discriminator", "ema", "opt_g", "opt_d", "rng", "data"}
    assert any(not torch.equal(straight["ema"][k], straight["generator"][k]) for k in straight["ema"])

    resumed_run = train(tmp_path, "--resume", str(run / "checkpoints" / "0000002.pt"))
    assert resumed_run != run  # an older checkpoint continues in a new folder; the first run stays as it was
    resumed = torch.load(resumed_run / "checkpoints" / "0000004.pt", weights_only=False)
    for key in ("generator", "discriminator", "ema"):
        for name, value in straight[key].items():
            assert torch.equal(resumed[key][name], value), f"{key}.{name} differs after resuming"
    for key in ("opt_g", "opt_d"):
        for index, state in straight[key]["state"].items():
            assert torch.equal(resumed[key]["state"][index]["exp_avg"], state["exp_avg"])
