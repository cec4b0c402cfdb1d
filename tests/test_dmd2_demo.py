"""DMD2's ``python -m demo.imagenet_example`` here: its seed, label and noise order, one step from sigma 80 and
uint8 truncation, against the generator network run directly as DMD2's demo runs it (in miniature: a tiny EDM
teacher distilled for one step stands in for the released ImageNet generator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from demo import imagenet_example

PKL = Path(__file__).parent / "fixtures" / "edm_tiny_snapshot.pkl"


@pytest.fixture(scope="module")
def generator(edm_generator_run) -> Path:
    return edm_generator_run / "checkpoints" / "0000002.pt"


def test_the_demo_draws_dmd2s_grid(generator, tmp_path, monkeypatch):
    from accelerate.utils import set_seed

    from models.pretrained import Query, build_for_sampling, load_codec, sampling_config

    monkeypatch.chdir(tmp_path)
    state_dict, cfg = sampling_config(Query(ckpt=str(generator)))
    res, classes = cfg["image_size"], cfg["num_classes"]
    out = imagenet_example.main(imagenet_example.parse_args([
        "--checkpoint_path", str(generator), "--eval_batch_size", "4", "--resolution", str(res),
        "--label_dim", str(classes)]))
    assert out.name == "imagenet_grid.jpg" and np.asarray(Image.open(out)).shape == (2 * res, 2 * res, 3)
    # DMD2's demo, by hand: seed 10, labels then noise, G(noise * 80, 80, one-hot), truncated to uint8
    net = build_for_sampling(state_dict, cfg, load_codec(cfg, "cpu"), "cpu")
    set_seed(10)
    labels = torch.randint(0, classes, (4,))
    noise = torch.randn(4, 3, res, res)
    with torch.no_grad():
        images = net(noise * 80, torch.full((4,), 80.0), torch.eye(classes)[labels])
    expected = ((images + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    args = imagenet_example.parse_args(["--checkpoint_path", str(generator), "--eval_batch_size", "4",
                                        "--resolution", str(res), "--label_dim", str(classes)])
    ours = imagenet_example.draw(net, args, "cpu")
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1  # float rounding at a truncation edge


def test_what_is_no_one_step_generator_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        imagenet_example.main(imagenet_example.parse_args(["--checkpoint_path", str(tmp_path / "missing.bin")]))
    with pytest.raises(ValueError, match="not DMD2's one-step") as error:
        imagenet_example.main(imagenet_example.parse_args(["--checkpoint_path", str(PKL)]))
    assert "\n" not in str(error.value)
