"""Checkpoints carry their sampling record (``models.pretrained.sampling_record``), written by the method; sampling
reads it, and a checkpoint without one is read by the reader of its format."""

import torch
from conftest import TINY_TRAIN

import train
from models.pretrained import Query, sampling_config


def test_a_train_py_checkpoint_records_how_to_sample_it(trained_run):
    ckpt = torch.load(trained_run / "checkpoints" / "0000020.pt", weights_only=False)
    assert ckpt["sampling_record"] == {"model": "DiT-Ti/4", "image_size": 16, "num_classes": 10, "vae": "none",
                                       "dataset": "builtin", "prediction": "eps", "noise_schedule": "linear"}


def test_the_record_alone_is_enough_to_sample(trained_run, tmp_path):
    path = trained_run / "checkpoints" / "0000020.pt"
    ckpt = torch.load(path, weights_only=False)
    state_dict, cfg = sampling_config(Query(ckpt=str(path)))
    assert cfg["format"] == "diffusion-lab"
    del ckpt["args"]
    torch.save(ckpt, tmp_path / "record-only.pt")
    state_dict_alone, alone = sampling_config(Query(ckpt=str(tmp_path / "record-only.pt")))
    assert {**alone, "ckpt": None} == {**cfg, "ckpt": None}
    assert state_dict_alone.keys() == state_dict.keys()


def test_the_record_is_read_before_the_flags(trained_run, tmp_path):
    ckpt = torch.load(trained_run / "checkpoints" / "0000020.pt", weights_only=False)
    ckpt["sampling_record"]["noise_schedule"] = "cosine"
    torch.save(ckpt, tmp_path / "cosine.pt")
    assert sampling_config(Query(ckpt=str(tmp_path / "cosine.pt")))[1]["noise_schedule"] == "squaredcos_cap_v2"
    ckpt["sampling_record"]["num_classes"] = 0  # a recorded 0 stays 0, not the default 1000
    torch.save(ckpt, tmp_path / "unconditional.pt")
    assert sampling_config(Query(ckpt=str(tmp_path / "unconditional.pt")))[1]["num_classes"] == 0


def test_without_a_record_each_format_has_its_reader(trained_run, tmp_path):
    ckpt = torch.load(trained_run / "checkpoints" / "0000020.pt", weights_only=False)
    del ckpt["sampling_record"]
    torch.save(ckpt, tmp_path / "flags.pt")
    torch.save(ckpt["ema"], tmp_path / "raw.pt")
    flags = sampling_config(Query(ckpt=str(tmp_path / "flags.pt")))[1]
    assert (flags["format"], flags["model"], flags["image_size"]) == ("flags", "DiT-Ti/4", 16)
    raw = sampling_config(Query(ckpt=str(tmp_path / "raw.pt"), model="DiT-Ti/4", image_size=16, num_classes=10,
                                vae="none"))[1]
    assert raw["format"] == "DiT / SiT / REPA release"


def test_a_sit_records_its_path_and_time(tmp_path):
    tiny = [*TINY_TRAIN]
    tiny[tiny.index("DiT-Ti/4")] = "SiT-Ti/4"
    train.main(train.parse_args([*tiny, "--proj-coeff", "0", "--cls", "0", "--path-type", "cosine",
                                 "--results-dir", str(tmp_path), "--max-steps", "1", "--ckpt-every", "1"]))
    (path,) = tmp_path.glob("*/checkpoints/0000001.pt")
    record = torch.load(path, weights_only=False)["sampling_record"]
    assert (record["prediction"], record["path_type"], record["time_convention"]) == ("velocity", "cosine", "repa")
    cfg = sampling_config(Query(ckpt=str(path)))[1]
    assert (cfg["path_type"], cfg["model_kwargs"]["time_convention"]) == ("cosine", "repa")
