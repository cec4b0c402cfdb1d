"""EDM's ADM network (models/edm_unet.py) against NVlabs/edm @ 008a4e5 training/networks.py and DMD2's
modified copy (tianweiy/DMD2 @ 8d8fa55); fixtures from tests/fixtures/record_edm.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures.record_edm import fill  # the recorder's parameter fill (the fixture checks its sums)

from models.edm_unet import EDMPrecond

FIXTURES = Path(__file__).parent / "fixtures"
KEYS = json.loads((FIXTURES / "edm_adm_keys.json").read_text())
TINY = torch.load(FIXTURES / "edm_tiny_reference.pt")
IMAGENET_PARAMETERS = 295_899_267  # edm-imagenet-64x64-cond-adm.pkl


def imagenet_on_meta() -> EDMPrecond:
    with torch.device("meta"):
        return EDMPrecond(64, 3, label_dim=1000, model_type="DhariwalUNet", model_channels=192,
                          channel_mult=[1, 2, 3, 4], dropout=0.10, use_fp16=True)


def test_imagenet_64_names_shapes_and_count_equal_edm_adm():
    net = imagenet_on_meta()
    assert all(p.is_meta for p in net.parameters())
    assert sum(p.numel() for p in net.parameters()) == IMAGENET_PARAMETERS == KEYS["parameters"]
    assert [[k, list(v.shape)] for k, v in net.state_dict().items()] == KEYS["keys"]  # names, shapes, order
    assert net.model.enc["8x8_block2"].out_channels == 768 and net.model.dec["32x32_block0"].num_heads == 6
    assert (net.prediction, net.sigma_data, net.sigma_min, net.sigma_max) == ("x0", 0.5, 0, float("inf"))
    assert (net.label_dim, net.img_resolution, net.img_channels) == (1000, 64, 3)


def tiny_net() -> EDMPrecond:
    net = EDMPrecond(**TINY["config"]).eval()
    with torch.no_grad():
        for k, (name, p) in enumerate(net.named_parameters()):
            p.copy_(fill(k, p.shape))
            assert p.double().sum().item() == pytest.approx(TINY["parameter_sums"][name], rel=1e-9, abs=1e-9)
    return net


def test_tiny_outputs_match_edm_and_dmd2():
    net, x, sigma, labels = tiny_net(), TINY["x"], TINY["sigma"], TINY["labels"]
    assert net.model.dec["4x4_in0"].num_heads == 2  # the head layout of qkv is exercised
    noisy = x * (1 + sigma[:, None, None, None])
    onehot = torch.nn.functional.one_hot(labels, 10).float()
    with torch.no_grad():
        out = net(noisy, sigma, onehot)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, TINY["out"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, TINY["out_dmd2"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(net(noisy, sigma, labels), out, atol=0, rtol=0)  # integer labels -> one-hot
        out_augment = net(x, sigma, onehot, augment_labels=TINY["augment_labels"])
        torch.testing.assert_close(out_augment, TINY["out_augment"], atol=1e-5, rtol=1e-5)
        bottleneck = net(noisy[1::2], sigma[1::2], labels[1::2], return_bottleneck=True)  # DMD2's encoder output
        assert bottleneck.shape == (2, 128, 4, 4)
        torch.testing.assert_close(bottleneck, TINY["bottleneck"], atol=1e-5, rtol=1e-5)


def test_tiny_gradients_reach_every_parameter():
    net = tiny_net().train()
    net(TINY["x"], TINY["sigma"], TINY["labels"], augment_labels=TINY["augment_labels"]).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_label_dropout_zeroes_the_labels_in_training():
    config = {**TINY["config"], "label_dropout": 1.0}
    net = EDMPrecond(**config)
    net.load_state_dict(tiny_net().state_dict())
    x, sigma = TINY["x"], TINY["sigma"]
    with torch.no_grad():
        dropped = net.train()(x, sigma, TINY["labels"])
        torch.testing.assert_close(dropped, net.eval()(x, sigma, None))  # None: EDM's all-zero label row
        assert not torch.allclose(dropped, net(x, sigma, TINY["labels"]))


def test_fp16_keeps_float32_on_cpu():
    net = tiny_net()
    net.use_fp16 = True
    with torch.no_grad():
        out = net(TINY["x"], TINY["sigma"], TINY["labels"])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, net(TINY["x"], TINY["sigma"], TINY["labels"], force_fp32=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bfloat16 runs only on CUDA")
def test_fp16_runs_the_network_in_bfloat16_on_cuda():
    net = tiny_net().cuda()
    x, sigma, labels = TINY["x"].cuda(), TINY["sigma"].cuda(), TINY["labels"].cuda()
    with torch.no_grad():
        reference = net(x, sigma, labels)
        net.use_fp16 = True
        out, bottleneck = net(x, sigma, labels), net(x, sigma, labels, return_bottleneck=True)
        forced = net(x, sigma, labels, force_fp32=True)
    assert out.dtype == bottleneck.dtype == torch.float32
    torch.testing.assert_close(forced, reference)
    assert 0 < (out - reference).abs().max() < 0.1 * reference.abs().max()  # bfloat16 rounding, same function


def test_other_model_types_are_refused():
    with pytest.raises(ValueError, match="only EDM's 'DhariwalUNet'"):
        EDMPrecond(32, 3, model_type="SongUNet")
