import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

# One empty cache per test session, for this process and every script the tests start: whatever a
# machine cached before (the proxy classifier, weights) can never make the suite pass where a clean
# machine would fail. Whatever is trained or downloaded on first use is then made once per session.
CACHE = Path(tempfile.mkdtemp(prefix="diffusion-lab-test-cache-"))
CACHE_ENV = {"DIFFUSION_LAB_CACHE": CACHE / "diffusion-lab", "TORCH_HOME": CACHE / "torch", "HF_HOME": CACHE / "hf",
             "XDG_CACHE_HOME": CACHE / "xdg", "MPLCONFIGDIR": CACHE / "matplotlib"}
os.environ.update({name: str(path) for name, path in CACHE_ENV.items()})


def pytest_collection_modifyitems(items):
    """Tests marked ``first_use`` run first, while the session's cache is still empty."""
    items.sort(key=lambda item: item.get_closest_marker("first_use") is None)


def pytest_unconfigure(config):
    shutil.rmtree(CACHE, ignore_errors=True)


def run_script(*args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a repository script as a user would, returning the finished process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("DIFFUSION_LAB_DEBUG", None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=full_env)


TINY_TRAIN = ["--dataset", "builtin", "--model", "DiT-Ti/4", "--image-size", "16", "--num-classes", "10",
              "--vae", "none", "--global-batch-size", "8", "--num-workers", "0", "--lr", "1e-3"]


QUICK_PROXY = dict(num_images=3000, steps=200, width=8, num_held_out=500)


@pytest.fixture(scope="session")
def quick_proxy():
    """A reduced proxy classifier (the same recipe on fewer images and steps, ~5 s) and its held-out accuracy, for
    tests of what reads the classifier; the real one (trained on first use, ~30 s) is the slow tier's."""
    from evaluations.proxy import train_proxy_classifier

    return train_proxy_classifier(**QUICK_PROXY)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run folder of a tiny pixel-space DiT trained for 20 steps on the built-in dataset."""
    import train

    results = tmp_path_factory.mktemp("results")
    train.main(train.parse_args([*TINY_TRAIN, "--results-dir", str(results), "--max-steps", "20",
                                 "--log-every", "5", "--ckpt-every", "10"]))
    (run_dir,) = list(results.iterdir())
    return run_dir


@pytest.fixture(scope="session")
def edm_generator_run(tmp_path_factory) -> Path:
    """A train_dmd2.py run folder: the tiny EDM teacher (tests/fixtures/edm_tiny_snapshot.pkl) distilled for two
    steps, its checkpoint also in DMD2's layout (checkpoint_model_000002/) beside ours (checkpoints/0000002.pt)."""
    import train_dmd2

    out = tmp_path_factory.mktemp("dmd2")
    pkl = Path(__file__).parent / "fixtures" / "edm_tiny_snapshot.pkl"
    train_dmd2.main(train_dmd2.parse_args(["--teacher", str(pkl), "--output_path", str(out), "--dataset", "builtin",
                                           "--batch_size", "2", "--num_workers", "0", "--train_iters", "2",
                                           "--log_iters", "2", "--wandb_iters", "2", "--checkpoint_layout", "dmd2"]))
    (run,) = list(out.iterdir())
    return run


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory) -> Path:
    """A randomly initialised 4-channel, /8 diffusers AutoencoderKL saved as a local folder (``--vae PATH``)."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 32, 32),
                            latent_channels=4, layers_per_block=1, norm_num_groups=8, sample_size=32)
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def quick_grids():
    """Sample grids drawn with 2 Euler steps instead of 50, for tests that check that a run draws its
    grids (the file, the fork of the RNG around it), not what they show."""
    from training import visual

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(visual, "GRID_STEPS", 2)
        yield


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A tiny random open_clip model (its own config, CLIP's tokenizer and preprocessing)."""
    import json

    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("clip_config")
    (folder / "TinyCLIP-test.json").write_text(json.dumps({
        "embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("TinyCLIP-test", pretrained=None)
    return model.eval(), preprocess, open_clip.get_tokenizer("ViT-g-14")
