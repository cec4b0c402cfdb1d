"""Array files into one LMDB in DMD2's layout (DMD2's ``main/data/create_lmdb_iterative.py``, its flags).

  python preprocessing/create_lmdb_iterative.py --data_path sdxl_vae_latents_laion_500k/ \\
      --lmdb_path sdxl_vae_latents_laion_500k_lmdb
  python preprocessing/create_lmdb_iterative.py --data_path pairs/ --lmdb_path sdxl_ode_pair_10k_lmdb

``--data_path`` holds ``*.pt`` files, each a dict of arrays with as many rows each (numpy arrays or tensors; strings
as lists or string arrays): the files of ``preprocessing/generate_vae_latents.py`` (``latents``, ``prompts``), of
``preprocessing/generate_noise_image_pairs.py`` (``latents``, ``images``, ``prompt_embeds_list``,
``pooled_prompt_embeds``), or DMD2's own downloads. Their rows are appended in file-name order (DMD2's
``prompt_list`` and ``batch_index`` entries are skipped, as there). The LMDB is written into
``LMDB_PATH.partial`` and renamed when complete; an existing non-empty ``--lmdb_path`` is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.cli import first_paragraph, run_cli  # noqa: E402

SKIPPED = ("prompt_list", "batch_index")  # entries of DMD2's pair files that are not rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=first_paragraph(__doc__))
    p.add_argument("--data_path", type=str, required=True, help="the folder of *.pt array files")
    p.add_argument("--lmdb_path", type=str, required=True, help="the LMDB folder to create")
    return p.parse_args(argv)


def read_arrays(path: Path) -> dict:
    """One file's arrays, as numpy (strings as a list)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)  # numpy arrays: a trusted, local file
    except Exception as error:
        raise ValueError(f"{path}: not a readable .pt file ({type(error).__name__}); remove it or write it "
                         "again") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a dict of arrays (DMD2's layout), got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        if key in SKIPPED:
            continue
        out[key] = value.numpy() if torch.is_tensor(value) else value if isinstance(value, np.ndarray) else list(value)
    return out


def main(args: argparse.Namespace) -> None:
    from imagedata.lmdb import new_lmdb

    source, dest = Path(args.data_path), Path(args.lmdb_path)
    files = sorted(source.glob("*.pt")) if source.is_dir() else []
    if not files:
        raise ValueError(f"--data_path {source}: no *.pt files there (the output folder of generate_vae_latents.py "
                         "or generate_noise_image_pairs.py)")
    with new_lmdb(dest, "--lmdb_path") as writer:
        for file in tqdm(files, desc="files", dynamic_ncols=True):
            arrays = read_arrays(file)
            try:
                writer.append(arrays)
            except ValueError as error:
                raise ValueError(f"{file}: {error}") from None
        count = writer.count
    print(f"wrote {count:,} rows of {len(files)} file(s) to {dest}")


if __name__ == "__main__":
    run_cli(main, parse_args())
