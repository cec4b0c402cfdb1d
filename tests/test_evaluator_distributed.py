"""Feature extraction sharded over two gloo processes gives what one process gives."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import run_script
from eval_stand_in import StandInInception, random_images

from evaluations.features import compute_features
from evaluations.images import NpzImages

KEPT = [0, 4, 5, 10]  # pool rows kept for precision/recall, on both shards


def _shard_worker(rank: int, world: int, init_file: str, images: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        features = compute_features(NpzImages(images), StandInInception(), batch_size=3, pool_rows=KEPT,
                                    progress=False)
        np.savez(f"{out}.rank{rank}.npz", mu=features.mu, sigma=features.sigma, mu_s=features.mu_s,
                 sigma_s=features.sigma_s, pool=features.pool, count=features.count)
    finally:
        dist.destroy_process_group()


@pytest.mark.multiprocess
def test_two_gloo_processes_give_the_statistics_of_one(tmp_path):
    np.savez(tmp_path / "images.npz", random_images(11, seed=2))  # shards of 5 and 6 images, batches of 3
    mp.spawn(_shard_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "images.npz"), str(tmp_path / "out")),
             nprocs=2, join=True)
    torch.set_num_threads(1)
    alone = compute_features(NpzImages(tmp_path / "images.npz"), StandInInception(), batch_size=3, pool_rows=KEPT,
                             progress=False)
    for rank in range(2):  # every process ends with the whole result
        with np.load(tmp_path / f"out.rank{rank}.npz") as got:
            assert int(got["count"]) == 11 and got["pool"].shape == (4, 16)
            np.testing.assert_allclose(got["pool"], alone.pool, rtol=1e-6)  # gathered in image order
            for key in ("mu", "sigma", "mu_s", "sigma_s"):
                np.testing.assert_allclose(got[key], getattr(alone, key), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_command_under_torchrun_saves_the_reference_statistics_of_one_process(tmp_path):
    from evaluations.evaluator import reference_features
    from evaluations.inception import InceptionV3, load_inception

    torch.manual_seed(0)
    model = InceptionV3()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(model.state_dict(), tmp_path / "random_inception.pth")
    np.savez(tmp_path / "images.npz", random_images(3, size=32, seed=1))
    proc = run_script("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                      "evaluations/evaluator.py", str(tmp_path / "images.npz"), "--ref-stats",
                      str(tmp_path / "stats.npz"), "--inception-weights", str(tmp_path / "random_inception.pth"),
                      "--batch-size", "1", "--device", "cpu", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    alone = reference_features(tmp_path / "images.npz", load_inception(tmp_path / "random_inception.pth"),
                               batch_size=1, progress=False)
    with np.load(tmp_path / "stats.npz") as saved:
        assert int(saved["num_images"]) == 3
        np.testing.assert_allclose(saved["pool_3"], alone.pool, rtol=1e-5, atol=1e-6)
        for key in ("mu", "sigma", "mu_s", "sigma_s"):
            np.testing.assert_allclose(saved[key], getattr(alone, key), rtol=1e-5, atol=1e-8)
