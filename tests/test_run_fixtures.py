"""Every kind of checkpoint this repository writes (train.py's DiT, SiT, REPA, REG and U-Net, REPA-E with its VAE
and discriminator, train_ldm_only.py's, DMD2 generators from a DiT, an EDM and a text-to-image teacher with LoRA)
loads and samples as recorded, resumes, and its two-step run retrains bit for bit.

The fixtures were recorded by ``tests/fixtures/record_run_fixtures.py`` (its docstring: which commit, what each
file holds; large ones are kept without optimizer states, or only the weights sampling reads plus the sha256 of
every tensor of the full checkpoint). Bit for bit holds for the same torch, CPU kernels and thread count (the
runs pin theirs); the recording's are in ``run_fixtures.pt["source"]``, or the kind's own ``source`` where it was
re-recorded.
"""

from __future__ import annotations

import importlib
import io
import lzma
from pathlib import Path

import pytest
import torch
from fixtures.record_run_fixtures import (
    complete,
    draw,
    environment,
    fill,
    make_inputs,
    quick_grids,
    run,
    sha256,
    tensors,
    tiny_vae,
)

FIXTURES = Path(__file__).parent / "fixtures"
RECORD = torch.load(FIXTURES / "run_fixtures.pt", weights_only=False)
KINDS = [kind for kind in RECORD if kind != "source"]
RESUME_STEPS = {"train": "--max-steps", "train_repae": "--max-train-steps", "train_ldm_only": "--max-train-steps",
                "train_dmd2": "--train_iters"}


def stored(kind: str) -> dict:
    """The fixture as it is kept."""
    return torch.load(io.BytesIO(lzma.decompress((FIXTURES / f"run_{kind}.pt.xz").read_bytes())), weights_only=False)


def rerooted(state: dict) -> dict:
    """The checkpoint with its recorded flags that named a file of ``tests/fixtures`` (DMD2's ``--teacher``) pointed
    at this checkout's copy: the recording ran in another folder, and a resume must name the same teacher."""
    args = state.get("args")
    for key, value in (args.items() if isinstance(args, dict) else ()):
        if isinstance(value, str) and Path(value).parent.name == "fixtures" and (FIXTURES / Path(value).name).is_file():
            args[key] = str(FIXTURES / Path(value).name)
    return state


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory) -> dict[str, Path]:
    """Every fixture as a checkpoint file (a sampling-only one with zeros for its stubs), and ``vae``: the VAE
    the ldm-only run trained on."""
    out = tmp_path_factory.mktemp("run_fixtures")
    paths = {"vae": tiny_vae(out)}
    for kind in KINDS:
        paths[kind] = out / kind / "checkpoints" / "0000002.pt"  # the layout REPA-E's --resume-step reads
        paths[kind].parent.mkdir(parents=True)
        torch.save(rerooted(complete(stored(kind), RECORD[kind]["stubs"])), paths[kind])
    return paths


@pytest.fixture(scope="module")
def reruns(tmp_path_factory):
    """``rerun(kind)``: the step-2 checkpoint of ``kind``'s recorded command, run afresh here (once a module), and
    the inputs it read."""
    out, done = tmp_path_factory.mktemp("reruns"), {}

    def rerun(kind: str) -> tuple[Path, dict]:
        if kind not in done:
            (out / kind).mkdir()
            places = make_inputs(out / kind, [kind])
            done[kind] = run(kind, {**places, "out": str(out / kind / "run")}), places
        return done[kind]

    return rerun


@pytest.mark.parametrize("kind", [kind for kind in KINDS if RECORD[kind]["draw"] is not None])
def test_every_kind_of_checkpoint_samples_as_recorded(unpacked, kind):
    rec = RECORD[kind]["draw"]
    out = draw(unpacked[kind], rec["sampling"], unpacked["vae"])
    assert torch.equal(out["noise"], rec["noise"]) and torch.equal(out["labels"], rec["labels"])
    torch.testing.assert_close(out["samples"], rec["samples"], atol=1e-5, rtol=1e-5)


def test_the_text_to_image_generator_is_recorded_as_its_unet_with_lora():
    """It has no class-conditional sampling path: its keys are the UNet's own, with LoRA adapters."""
    state = stored("dmd2_sd_lora")
    assert any("lora_A" in k for k in state["model"]) and any(k.startswith("conv_in.") for k in state["model"])
    assert RECORD["dmd2_sd_lora"]["draw"] is None


def compare(ckpt: Path, kind: str, kept: dict) -> list[str]:
    """What differs between a checkpoint and the fixture: every tensor's sha256, and the largest difference of each
    stored model / EMA tensor that differs."""
    new = tensors(torch.load(ckpt, weights_only=False))
    wrong = []
    for name, digest in RECORD[kind]["sha256"].items():
        if name not in new:
            wrong.append(f"{name}: missing")
        elif sha256(new[name]) != digest:
            old = kept.get(name)
            gap = f"largest difference {(new[name].double() - old.double()).abs().max().item():.3g}" \
                if old is not None and old.shape == new[name].shape and old.is_floating_point() else "sha256 differs"
            wrong.append(f"{name}: {gap}")
    return wrong


def recorded_on(kind: str) -> str:
    return RECORD[kind].get("source", RECORD["source"])


def same_kernels(kind: str) -> bool:
    """Whether this torch, its CPU kernels and the CPU are those ``kind`` was recorded with: other kernels sum in
    another order (and so does oneDNN's AVX512 code on an AMD EPYC and on an Intel Xeon), so bits are comparable
    only on the same."""
    here = environment().split("; ", 1)[1].rsplit(", ", 1)[0]  # "torch V, CPU kernels K (CPU model)"
    return here in recorded_on(kind)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_every_recorded_run_retrains_bit_for_bit(reruns, kind):
    """The recorded command, run afresh for 2 steps, gives every tensor of the recorded checkpoint exactly."""
    if not same_kernels(kind):
        pytest.skip(f"recorded with {recorded_on(kind)}; here {environment()}: rerecord the fixtures on this setup")
    wrong = compare(reruns(kind)[0], kind, tensors(stored(kind)))
    assert not wrong, (f"{len(wrong)} tensors differ (recorded with {recorded_on(kind)}; here {environment()}): "
                       + "; ".join(wrong[:12]))


def resume_argv(kind: str, source: Path, out: Path) -> list[str]:
    """``kind``'s command continued from ``source`` (a step-2 checkpoint) to step 3 into ``out``."""
    script = RECORD[kind]["script"]
    argv = list(RECORD[kind]["argv"])
    argv[argv.index(RESUME_STEPS[script]) + 1] = "3"
    if "--checkpointing-steps" in argv:  # REPA-E saves every N steps only
        argv[argv.index("--checkpointing-steps") + 1] = "1"
    if script == "train":
        return [*argv, "--resume", str(source)]
    if script == "train_dmd2":  # an optimizer-less fixture continues as DMD2 continues from weights alone
        flag = "--checkpoint_path" if "opt" in torch.load(source, weights_only=False) else "--ckpt_only_path"
        return [*argv, flag, str(source)]
    return [*argv, "--continue-train-exp-dir", str(source.parent.parent), "--resume-step", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_checkpoint_resumes(unpacked, reruns, kind, tmp_path):
    """One more step with its own script from the fixture (or, for a sampling-only fixture, from the rerun that
    matches it bit for bit): step 3 is written and the weights move."""
    script, kept = RECORD[kind]["script"], RECORD[kind]["kept"]
    partial = kept == "sampling only" or (kept == "no optimizers" and script != "train_dmd2")
    if partial:  # the rerun stands in for the fixture (the same bits, where the kernels are the recording's)
        source, places = reruns(kind)
        assert not same_kernels(kind) or not compare(source, kind, {}), "the rerun differs from the fixture"
    else:
        source, places = unpacked[kind], make_inputs(tmp_path, [kind])
    places = {**places, "out": str(tmp_path / "resumed")}
    module = importlib.import_module(script)
    with quick_grids():
        module.main(module.parse_args(fill(resume_argv(kind, source, tmp_path), places)))
    # a checkpoint inside a run folder is continued in that folder
    (ckpt,) = [*(tmp_path / "resumed").glob("**/checkpoints/0000003.pt"), *source.parent.glob("0000003.pt")]
    old, new = torch.load(source, weights_only=False), torch.load(ckpt, weights_only=False)
    assert new["steps"] == 3
    assert any(not torch.equal(v, old["model"][k]) for k, v in new["model"].items())
