#!/usr/bin/env bash
# Step 2 of the REPA / REG data: the converted images -> SD-VAE posterior mean and std per image.
#
#   SOURCE=/data/imagenet_vae/imagenet_256_vae DEST=/data/imagenet_vae/vae-sd \
#       bash preprocessing/dataset_prepare_encode.sh
#
# SOURCE  the DEST of dataset_prepare_convert.sh (folder or .zip, with its dataset.json)
# DEST    new or empty folder: DATA_DIR/vae-sd beside DATA_DIR/imagenet_256_vae
# VAE     default mse (stabilityai/sd-vae-ft-mse, as REPA / REG); ema, a hub id or a diffusers folder
# PYTHON  default python
# Further arguments go to `dataset_tools.py encode` (e.g. --max-images N, --batch-size B).
set -euo pipefail
: "${SOURCE:?set SOURCE to the converted image folder, e.g. /data/imagenet_vae/imagenet_256_vae}"
: "${DEST:?set DEST to the latent folder, e.g. /data/imagenet_vae/vae-sd}"
"${PYTHON:-python}" "$(dirname "$0")/dataset_tools.py" encode \
    --source="$SOURCE" \
    --dest="$DEST" \
    --vae="${VAE:-mse}" \
    "$@"
