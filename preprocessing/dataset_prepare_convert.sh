#!/usr/bin/env bash
# Step 1 of the REPA / REG data: an ImageNet-style folder -> square center-cropped PNGs + dataset.json.
#
#   SOURCE=/data/imagenet/train DEST=/data/imagenet_vae/imagenet_256_vae \
#       bash preprocessing/dataset_prepare_convert.sh
#   SOURCE=builtin DEST=demo/imagenet_256_vae RESOLUTION=32x32 \
#       bash preprocessing/dataset_prepare_convert.sh --max-images 1000
#
# SOURCE      SOURCE/<class>/<image> folder, a .zip, or "builtin" (the procedural set; needs --max-images)
# DEST        new or empty folder, or a .zip; REG trains on DATA_DIR/imagenet_256_vae (REPA: DATA_DIR/images)
# RESOLUTION  default 256x256 (512x512 for the 512 px models)
# PYTHON      default python
# Further arguments go to `dataset_tools.py convert` (e.g. --max-images N). Step 2: dataset_prepare_encode.sh.
set -euo pipefail
: "${SOURCE:?set SOURCE to the image folder (or builtin)}"
: "${DEST:?set DEST to the output folder, e.g. /data/imagenet_vae/imagenet_256_vae}"
"${PYTHON:-python}" "$(dirname "$0")/dataset_tools.py" convert \
    --source="$SOURCE" \
    --dest="$DEST" \
    --resolution="${RESOLUTION:-256x256}" \
    --transform=center-crop-dhariwal \
    "$@"
