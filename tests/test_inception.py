"""The ported Inception on random weights: structure, the three ADM tensors, the TF1 resize, weight files.

The real weights are not downloaded in tests; agreement with ADM's TensorFlow numbers on real
weights is recorded in docs/evaluation.md once measured.
"""

import numpy as np
import pytest
import torch
from torchvision.models.inception import Inception3

from evaluations.inception import (
    WEIGHTS_FILES,
    InceptionV3,
    exact_float32,
    find_weights,
    load_inception,
    preprocess,
    tf1_resize_bilinear,
)


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    model = InceptionV3()
    for module in model.modules():  # default init shrinks activations to ~1e-8 over 48 layers; keep them O(1)
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


def test_parameters_match_the_ported_weights_layout(network):
    # pytorch-fid's and torch-fidelity's weight files are state dicts of torchvision's Inception3 with
    # 1008 classes and no auxiliary head: the same names and shapes must load with strict=True.
    reference = Inception3(num_classes=1008, aux_logits=False, init_weights=False).state_dict()
    ours = network.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    assert sum(p.numel() for p in network.parameters()) == 23_850_960


def test_pool_spatial_and_softmax_shapes_and_the_spatial_tensor(network):
    captured = {}
    hook = network.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, out: captured.update(out=out.clone()))
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 40, 48), dtype=np.uint8))
    try:
        with torch.inference_mode():
            pool, spatial = network(images)
            probs = network.class_probabilities(pool)
    finally:
        hook.remove()
    assert pool.shape == (2, 2048) and spatial.shape == (2, 17 * 17 * 7) and probs.shape == (2, 1008)
    assert pool.abs().mean() > 1e-3 and spatial.abs().mean() > 1e-3
    # mixed_6/conv:0 is the (ReLU'd) output of Mixed_6d's 1x1 branch, 192 x 17 x 17; ADM keeps
    # spatial[..., :7] of the NHWC tensor and flattens it, so the order is (row, column, channel).
    branch = captured["out"]
    assert branch.shape == (2, 192, 17, 17) and branch.min() >= 0
    torch.testing.assert_close(spatial, branch[:, :7].permute(0, 2, 3, 1).reshape(2, -1), rtol=0, atol=0)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    # IS logits have no bias: softmax(pool_3 @ W)
    torch.testing.assert_close(probs, torch.softmax(pool @ network.fc.weight.T, 1))


def test_tf1_bilinear_resize_by_hand():
    # TF1 legacy ResizeBilinear: source coordinate i * in / out, no half-pixel offset, clamp at the edge.
    # 2 x 2 -> 3 x 3: coordinates 0, 2/3, 4/3 (clamped to pixel 1).
    image = torch.tensor([[[[0.0, 3.0], [6.0, 9.0]]]])
    expected = torch.tensor([[0.0, 2.0, 3.0], [4.0, 6.0, 7.0], [6.0, 8.0, 9.0]])
    torch.testing.assert_close(tf1_resize_bilinear(image, 3)[0, 0], expected)
    x = torch.rand(1, 3, 299, 299) * 255
    torch.testing.assert_close(tf1_resize_bilinear(x), x, rtol=0, atol=0)  # the graph's resize is then a no-op


def test_preprocess_is_minus_128_over_128():
    for value, expected in ((0, -1.0), (128, 0.0), (255, 127 / 128)):
        x = preprocess(torch.full((1, 3, 299, 299), value, dtype=torch.uint8))
        assert x.shape == (1, 3, 299, 299) and torch.all(x == expected)


def test_weights_load_from_a_file_and_a_foreign_file_is_refused(network, tmp_path):
    torch.save(network.state_dict(), tmp_path / "w.pth")
    loaded = load_inception(tmp_path / "w.pth")
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert not loaded.training
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="is not the ported Inception"):
        load_inception(tmp_path / "other.pth")


def test_weights_are_found_in_either_cache_under_either_name(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("DIFFUSION_LAB_INCEPTION", raising=False)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / WEIGHTS_FILES[1]).write_bytes(b"")  # pytorch-fid's name in torch.hub's cache
    assert find_weights(download=False) == hub / WEIGHTS_FILES[1]
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / WEIGHTS_FILES[0]).write_bytes(b"")  # ours first
    assert find_weights(download=False) == tmp_path / "cache" / WEIGHTS_FILES[0]
    monkeypatch.setenv("DIFFUSION_LAB_INCEPTION", str(tmp_path / "nowhere.pth"))
    with pytest.raises(ValueError, match="nowhere.pth do not exist"):
        find_weights(download=False)


def test_tf32_is_off_inside_and_restored_after():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with exact_float32():
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
