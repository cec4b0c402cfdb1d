"""The originals' documented commands (their READMEs, shell scripts and experiment folders), verbatim, as a table
for tests/test_originals_commands.py.

Each row: the repository at the commit read, the file, the command as written there (backslash continuations
joined, the script's own shell variables expanded), the folder the original runs it from, and, where this
repository's layout makes the original's path impossible, the equivalent command here (the README's card for that
system shows it). ``pending`` names rows whose capability is not built yet; their tests are expected to fail.
Left out: install steps (``pip install``, DMD2's ``python setup.py develop``), downloads, REPA's text-to-image
``train_t2i.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

COMMITS = {"facebookresearch/DiT": "ed81ce2", "willisma/SiT": "947f95b", "sihyun-yu/REPA": "67f7145",
           "Martinser/REG": "021ea2e", "End2End-Diffusion/REPA-E": "3ad8046", "tianweiy/DMD2": "8d8fa55"}
# What the placeholders of the originals stand for when a command is parsed here.
PLACEHOLDERS = {"$NUM_GPUS": "8", "$((RANDOM % 100 + 1200))": "1234", "$CHECKPOINT_PATH": "checkpoints",
                "$WANDB_ENTITY": "me", "$WANDB_PROJECT": "dmd2", "nproc_per_node=N": "nproc_per_node=8",
                "$MASTER_IP": "10.0.0.1", "$FSDP_DIR": "fsdp_configs/sdxl", "$RANK": "0"}


@dataclass(frozen=True)
class Row:
    repo: str
    file: str
    command: str
    cwd: str = ""            # the original runs it from this sub-folder
    ours: str | None = None  # the equivalent here, where the original's path cannot exist in this layout
    pending: str | None = None

    @property
    def id(self) -> str:
        return f"{self.repo.split('/')[1]}:{self.file}:{ROWS.index(self)}"


def _dmd2_run(name: str, script: str, lr: str, gan: str, keep: int, extra: str = "") -> tuple[str, str, str]:
    """DMD2's three ImageNet scripts share one command (the script's variables expanded, $1..$3 kept)."""
    return name, script, ("CUDA_VISIBLE_DEVICES=1,2,3,4,5,6,7 torchrun --nproc_per_node 7 --nnodes 1 "
                          f"{script} --generator_lr {lr} --guidance_lr {lr} --train_iters 10000000 --output_path "
                          f"$CHECKPOINT_PATH/{name} --batch_size 40 --initialie_generator --log_iters 500 "
                          '--resolution 64 --label_dim 1000 --dataset_name "imagenet" --seed 10 --model_id '
                          "$CHECKPOINT_PATH/edm-imagenet-64x64-cond-adm.pkl --wandb_iters 100 --wandb_entity "
                          f'$WANDB_ENTITY --wandb_project $WANDB_PROJECT --use_fp16 --wandb_name "{name}" '
                          f"--real_image_path $CHECKPOINT_PATH/imagenet-64x64_lmdb --dfake_gen_update_ratio 5{gan} "
                          f"--delete_ckpts --max_checkpoint {keep}{extra}")


GAN = (" --cls_loss_weight 1e-2 --gan_classifier --gen_cls_loss_weight 3e-3 --diffusion_gan "
       "--diffusion_gan_max_timestep 1000")
DMD2_RUNS = [
    _dmd2_run("imagenet_gan_classifier_genloss3e-3_diffusion1000_lr2e-6_scratch", "main/edm/train_edm.py", "2e-6",
              GAN, 500),
    _dmd2_run("imagenet_gan_classifier_genloss3e-3_diffusion1000_lr5e-7_resume", "main/edm/train_edm.py", "5e-7", GAN,
              200, " --ckpt_only_path $CHECKPOINT_PATH/imagenet_lr2e-6_scratch_fid2.61_checkpoint_model_405500/"),
    _dmd2_run("imagenet_lr2e-6_scratch", "main/train_edm.py", "2e-6", "", 200),  # the script's path is DMD2's typo
]


def _sd_run(launcher: str, script: str, name: str, lr: str, res: str, tail: str) -> str:
    """DMD2's SD1.5 / SDXL training scripts share this much (the script's variables expanded, $1..$5 kept)."""
    return (f"{launcher} {script} --generator_lr {lr} --guidance_lr {lr} --train_iters 100000000 --output_path "
            f"$CHECKPOINT_PATH/{name} --batch_size {'32' if res == '512' else '2'} --grid_size 2 --initialie_generator "
            f"--log_iters 1000 --resolution {res} --latent_resolution {int(res) // 8} --seed 10 --real_guidance_scale "
            f"{'1.75' if res == '512' else '8'} --fake_guidance_scale 1.0 --max_grad_norm 10.0 --model_id "
            f"\"{'runwayml/stable-diffusion-v1-5' if res == '512' else 'stabilityai/stable-diffusion-xl-base-1.0'}\" {tail}")


TORCHRUN_8_NODES = "torchrun --nnodes 8 --nproc_per_node=8 --rdzv_id=2345 --rdzv_backend=c10d --rdzv_endpoint=$MASTER_IP"
FSDP_LAUNCH = "accelerate launch --config_file $FSDP_DIR/config_rank$RANK.yaml"
SD15 = "laion6.25_sd_baseline_8node_guidance1.75_lr1e-5_seed10_dfake10_from_scratch"
SD15_GAN = "laion6.25_sd_baseline_8node_guidance1.75_lr5e-7_seed10_dfake10_diffusion1000_gan1e-3_resume"
SDXL4 = "sdxl_cond999_8node_lr5e-7_denoising4step_diffusion1000_gan5e-3_guidance8_noinit_noode_backsim_scratch"
SDXL1 = "sdxl_cond399_8node_lr5e-7_1step_diffusion1000_gan5e-3_guidance8_noinit_noode"
SD_TRACKER = "--wandb_entity $WANDB_ENTITY --wandb_project $WANDB_PROJECT"
SDXL_GAN = ("--log_loss --dfake_gen_update_ratio 5 --fsdp --sdxl --use_fp16 --max_step_percent 0.98 --cls_on_clean_image "
            "--gen_cls_loss --gen_cls_loss_weight 5e-3 --guidance_cls_loss_weight 1e-2 --diffusion_gan "
            "--diffusion_gan_max_timestep 1000")
SDXL_DATA = ("--train_prompt_path $CHECKPOINT_PATH/captions_laion_score6.25.pkl --real_image_path "
             "$CHECKPOINT_PATH/sdxl_vae_latents_laion_500k_lmdb/")
DMD2_SD_RUNS = [
    ("experiments/sdv1.5/" + SD15 + ".sh", _sd_run(TORCHRUN_8_NODES, "main/train_sd.py", SD15, "1e-5", "512",
     f'--train_prompt_path $CHECKPOINT_PATH/captions_laion_score6.25.pkl --wandb_iters 50 --wandb_entity $WANDB_ENTITY '
     f'--wandb_name "{SD15}" --wandb_project $WANDB_PROJECT --use_fp16 --log_loss --dfake_gen_update_ratio 10 '
     "--gradient_checkpointing")),
    # DMD2's script ends --ckpt_only_path with an unmatched quote; the table holds its evident intent
    ("experiments/sdv1.5/laion6.25_sd_baseline_8node_guidance1.75_lr5e-7_seed10_dfake10_diffusion1000_gan1e-3_noode_"
     "resume_fixdata.sh", _sd_run(TORCHRUN_8_NODES, "main/train_sd.py", SD15_GAN, "5e-7", "512",
     f'--train_prompt_path $CHECKPOINT_PATH/captions_laion_score6.25.pkl --wandb_iters 50 {SD_TRACKER} --wandb_name '
     f'"{SD15_GAN}" --use_fp16 --log_loss --dfake_gen_update_ratio 10 --gradient_checkpointing --cls_on_clean_image '
     "--gen_cls_loss --gen_cls_loss_weight 1e-3 --guidance_cls_loss_weight 1e-2 --diffusion_gan "
     f"--diffusion_gan_max_timestep 1000 --ckpt_only_path $CHECKPOINT_PATH/{SD15}_fid9.28_checkpoint_model_039000 "
     "--real_image_path $CHECKPOINT_PATH/sd_vae_latents_laion_500k_lmdb/")),
    ("experiments/sdxl/" + SDXL4 + ".sh", _sd_run(FSDP_LAUNCH, "main/train_sd.py", SDXL4, "5e-7", "1024",
     f'--wandb_iters 100 {SD_TRACKER} --wandb_name "{SDXL4}" {SDXL_GAN} --denoising --num_denoising_step 4 '
     f"--denoising_timestep 1000 --backward_simulation {SDXL_DATA}")),
    ("experiments/sdxl/" + SDXL4.replace("lr5e-7", "lr5e-5") + "_lora.sh", _sd_run(
     FSDP_LAUNCH, "main/train_sd.py", SDXL4, "5e-5", "1024", f'--wandb_iters 100 {SD_TRACKER} --wandb_name "{SDXL4}" '
     f"{SDXL_GAN} --denoising --num_denoising_step 4 --denoising_timestep 1000 --backward_simulation {SDXL_DATA} "
     "--generator_lora")),
    ("experiments/sdxl/" + SDXL1 + ".sh", _sd_run(FSDP_LAUNCH, "main/train_sd.py", SDXL1, "5e-7", "1024",
     f'--wandb_iters 100 --wandb_entity $WANDB_ENTITY --wandb_name "{SDXL1}" {SDXL_GAN} --conditioning_timestep 399 '
     f"{SDXL_DATA} --generator_ckpt_path "
     "$CHECKPOINT_PATH/sdxl_lr1e-5_8node_ode_pretraining_10k_cond399_checkpoint_model_002000.bin")),
]


SDXL_ODE_NAME = "sdxl_lr1e-5_8node_ode_pretraining_10k_cond399"
SDXL_ODE = (f"{TORCHRUN_8_NODES} main/train_sd_ode.py --generator_lr 1e-5  --train_iters 100000000 --output_path  "
            f"$CHECKPOINT_PATH/{SDXL_ODE_NAME} --grid_size 1 --log_iters 1000 --resolution 1024 --seed 10 "
            '--max_grad_norm 10.0 --model_id "stabilityai/stable-diffusion-xl-base-1.0" --wandb_iters 250 '
            f'--wandb_entity tyin --wandb_name "{SDXL_ODE_NAME}"  --sdxl --num_ode_pairs 10000 --ode_pair_path '
            "$CHECKPOINT_PATH/sdxl_ode_pair_10k_lmdb/ --ode_batch_size 4  --conditioning_timestep 399 --tiny_vae "
            "--use_fp16")
FSDP_CONFIGS = ("python main/sdxl/create_sdxl_fsdp_configs.py --folder fsdp_configs/EXP_NAME  --master_ip $MASTER_IP "
                "--num_machines 8  --sharding_strategy 4")
SDXL_LMDB = ("python main/data/create_lmdb_iterative.py   --data_path $CHECKPOINT_PATH/sdxl_vae_latents_laion_500k/  "
             "--lmdb_path $CHECKPOINT_PATH/sdxl_vae_latents_laion_500k_lmdb")


def _test_folder(script: str, name: str, tail: str) -> tuple[str, str]:
    """DMD2's text-to-image evaluation commands (its SD1.5 and SDXL READMEs) and the equivalent here."""
    folder = f"--folder $CHECKPOINT_PATH/{name}/TIMESTAMP_TBD"
    command = f"python {script} {folder}{'/' if 'sdxl' in script else ''} {tail}"
    return command, command.replace(f"python {script}", "python -m evaluations.watch_text")


SDXL_TEST = ("--wandb_entity $WANDB_ENTITY --wandb_project $WANDB_PROJECT --num_train_timesteps 1000 --seed 10 "
             "--eval_res 512 --ref_dir $CHECKPOINT_PATH/coco10k/subset --anno_path  $CHECKPOINT_PATH/coco10k/all_prompts.pkl "
             "--total_eval_samples 10000 --clip_score")
DMD2_SD_TESTS = [
    ("experiments/sdv1.5/README.md", *_test_folder("main/test_folder_sd.py", SD15, (
        f"--wandb_name test_{SD15} --wandb_entity $WANDB_ENTITY --wandb_project $WANDB_PROJECT --image_resolution 512 "
        "--latent_resolution 64 --num_train_timesteps 1000 --test_visual_batch_size 64 --per_image_object 16 --seed 10 "
        "--anno_path $CHECKPOINT_PATH/captions_coco14_test.pkl --eval_res 256 --ref_dir $CHECKPOINT_PATH/val2014 "
        '--total_eval_samples 30000 --model_id "runwayml/stable-diffusion-v1-5" --pred_eps'))),
    ("experiments/sdxl/README.md", *_test_folder("main/sdxl/test_folder_sdxl.py", SDXL4,
                                                 f"--conditioning_timestep 999 --num_step 4 {SDXL_TEST} --wandb_name test_{SDXL4}")),
    ("experiments/sdxl/README.md", *_test_folder("main/sdxl/test_folder_sdxl.py", SDXL1,
                                                 f"--conditioning_timestep 399 --num_step 1 {SDXL_TEST} --wandb_name test_{SDXL1}")),
]


ROWS = [
    Row("facebookresearch/DiT", "README.md", "python sample.py --image-size 512 --seed 1"),
    Row("facebookresearch/DiT", "README.md", "python sample.py --model DiT-L/4 --image-size 256 --ckpt /path/to/model.pt"),
    Row("facebookresearch/DiT", "README.md",
        "torchrun --nnodes=1 --nproc_per_node=N train.py --model DiT-XL/2 --data-path /path/to/imagenet/train"),
    Row("facebookresearch/DiT", "README.md",
        "torchrun --nnodes=1 --nproc_per_node=N sample_ddp.py --model DiT-XL/2 --num-fid-samples 50000"),
    Row("willisma/SiT", "README.md", "python sample.py ODE --image-size 256 --seed 1"),
    Row("willisma/SiT", "README.md", "python sample.py ODE --model SiT-L/4 --image-size 256 --ckpt /path/to/model.pt"),
    Row("willisma/SiT", "README.md",
        "torchrun --nnodes=1 --nproc_per_node=N train.py --model SiT-XL/2 --data-path /path/to/imagenet/train"),
    Row("willisma/SiT", "README.md",
        "torchrun --nnodes=1 --nproc_per_node=N train.py --model SiT-XL/2 --data-path /path/to/imagenet/train --wandb"),
    Row("willisma/SiT", "README.md", "torchrun --nnodes=1 --nproc_per_node=N train.py --model SiT-XL/2 --data-path "
        "/path/to/imagenet/train --path-type Linear --prediction noise"),
    Row("willisma/SiT", "README.md", "torchrun --nnodes=1 --nproc_per_node=N train.py --model SiT-L/2 --data-path "
        "/path/to/imagenet/train --ckpt /path/to/model.pt"),
    Row("willisma/SiT", "README.md",
        "torchrun --nnodes=1 --nproc_per_node=N sample_ddp.py ODE --model SiT-XL/2 --num-fid-samples 50000"),
    Row("willisma/SiT", "README.md", "torchrun --nnodes=1 --nproc_per_node=N sample_ddp.py ODE --model SiT-XL/2 --likelihood"),
    Row("sihyun-yu/REPA", "README.md", 'accelerate launch train.py --report-to="wandb" --allow-tf32 '
        '--mixed-precision="fp16" --seed=0 --path-type="linear" --prediction="v" --weighting="uniform" '
        '--model="SiT-XL/2" --enc-type="dinov2-vit-b" --proj-coeff=0.5 --encoder-depth=8 --output-dir="exps" '
        '--exp-name="linear-dinov2-b-enc8" --data-dir=[YOUR_DATA_PATH]'),
    Row("sihyun-yu/REPA", "README.md", 'accelerate launch train.py --report-to="wandb" --allow-tf32 '
        '--mixed-precision="fp16" --seed=0 --path-type="linear" --prediction="v" --weighting="uniform" '
        '--model="SiT-XL/2" --enc-type="dinov2-vit-b" --proj-coeff=0.5 --encoder-depth=8 --output-dir="exps" '
        '--exp-name="linear-dinov2-b-enc8-in512" --resolution=512 --data-dir=[YOUR_DATA_PATH]'),
    Row("sihyun-yu/REPA", "README.md", "torchrun --nnodes=1 --nproc_per_node=8 generate.py --model SiT-XL/2 "
        "--num-fid-samples 50000 --ckpt YOUR_CHECKPOINT_PATH --path-type=linear --encoder-depth=8 "
        "--projector-embed-dims=768 --per-proc-batch-size=64 --mode=sde --num-steps=250 --cfg-scale=1.8 "
        "--guidance-high=0.7"),
    Row("sihyun-yu/REPA", "preprocessing/README.md", "python dataset_tools.py convert "
        "--source=[YOUR_DOWNLOAD_PATH]/ILSVRC/Data/CLS-LOC/train --dest=[TARGET_PATH]/images --resolution=256x256 "
        "--transform=center-crop-dhariwal", cwd="preprocessing"),
    Row("sihyun-yu/REPA", "preprocessing/README.md",
        "python dataset_tools.py encode --source=[TARGET_PATH]/images --dest=[TARGET_PATH]/vae-sd", cwd="preprocessing"),
    Row("Martinser/REG", "README.md", 'accelerate launch --multi_gpu --num_processes $NUM_GPUS train.py '
        '--report-to="wandb" --allow-tf32 --mixed-precision="fp16" --seed=0 --path-type="linear" --prediction="v" '
        '--weighting="uniform" --model="SiT-B/2" --enc-type="dinov2-vit-b" --proj-coeff=0.5 --encoder-depth=4 '
        '--output-dir="your_path" --exp-name="linear-dinov2-b-enc4" --batch-size=256 '
        '--data-dir="data_path/imagenet_vae" --cls=0.03'),
    Row("Martinser/REG", "train.sh", 'accelerate launch --multi_gpu --num_processes 8 train.py --report-to="wandb" '
        '--allow-tf32 --mixed-precision="fp16" --seed=0 --path-type="linear" --prediction="v" --weighting="uniform" '
        '--model="SiT-XL/2" --enc-type="dinov2-vit-b" --proj-coeff=0.5 --encoder-depth=8 '
        '--output-dir="your_path/reg_xlarge_dinov2_base_align_8_cls" --exp-name="linear-dinov2-b-enc8" '
        '--batch-size=256 --data-dir="data_path/imagenet_vae" --cls=0.03'),
    Row("Martinser/REG", "eval.sh", "python -m torch.distributed.launch --master_port=$((RANDOM % 100 + 1200)) "
        "--nproc_per_node=8 generate.py --model SiT-XL/2 --num-fid-samples 50000 "
        "--ckpt your_path/reg_xlarge_dinov2_base_align_8_cls/linear-dinov2-b-enc8/checkpoints/4000000.pt "
        "--path-type=linear --encoder-depth=8 --projector-embed-dims=768 --per-proc-batch-size=64 --mode=sde "
        "--num-steps=250 --cfg-scale=2.3 --cls-cfg-scale=2.3 --guidance-high=0.85 "
        "--sample-dir your_path/reg_xlarge_dinov2_base_align_8_cls/linear-dinov2-b-enc8/checkpoints --cls=768"),
    Row("Martinser/REG", "eval.sh", "python ./evaluations/evaluator.py --ref_batch "
        "your_path/VIRTUAL_imagenet256_labeled.npz --sample_batch your_path/reg_xlarge_dinov2_base_align_8_cls/"
        "linear-dinov2-b-enc8/checkpoints/SiT-XL-2-4000000-size-256-vae-ema-cfg-2.3-seed-0-sde-0.85-2.3.npz "
        "--save_path your_path/reg_xlarge_dinov2_base_align_8_cls/linear-dinov2-b-enc8/checkpoints --cfg_cond 1 "
        "--step 4000000 --num_steps 250 --cfg 2.3 --cls_cfg 2.3 --gh 0.85"),
    Row("Martinser/REG", "preprocessing/dataset_prepare_convert.sh", "python preprocessing/dataset_tools.py convert "
        "--source=/home/share/imagenet/train --dest=/home/share/imagenet_vae/imagenet_256_vae --resolution=256x256 "
        "--transform=center-crop-dhariwal"),
    Row("Martinser/REG", "preprocessing/dataset_prepare_encode.sh", "python preprocessing/dataset_tools.py encode "
        "--source=/home/share/imagenet_vae/imagenet_256_vae --dest=/home/share/imagenet_vae/vae-sd-256"),
    Row("Martinser/REG", "evaluations/README.md",
        "python evaluator.py VIRTUAL_imagenet256_labeled.npz admnet_guided_upsampled_imagenet256.npz", cwd="evaluations"),
    Row("End2End-Diffusion/REPA-E", "README.md", "python preprocessing.py --imagenet-path /PATH/TO/IMAGENET_TRAIN",
        ours="python preprocessing/dataset_tools.py convert --source /PATH/TO/IMAGENET_TRAIN "
             "--transform center-crop-dhariwal --resolution 256x256 --dest data/images.h5"),
    Row("End2End-Diffusion/REPA-E", "README.md", 'accelerate launch train_repae.py --max-train-steps=400000 '
        '--report-to="wandb" --allow-tf32 --mixed-precision="fp16" --seed=0 --data-dir="data" --output-dir="exps" '
        '--batch-size=256 --path-type="linear" --prediction="v" --weighting="uniform" --model="SiT-XL/2" '
        '--checkpointing-steps=50000 --loss-cfg-path="configs/l1_lpips_kl_gan.yaml" --vae="f8d4" '
        '--vae-ckpt="pretrained/sdvae/sdvae-f8d4.pt" '
        '--disc-pretrained-ckpt="pretrained/sdvae/sdvae-f8d4-discriminator-ckpt.pt" --enc-type="dinov2-vit-b" '
        '--proj-coeff=0.5 --encoder-depth=8 --vae-align-proj-coeff=1.5 --bn-momentum=0.1 '
        '--exp-name="sit-xl-dinov2-b-enc8-repae-sdvae-0.5-1.5-400k"'),
    Row("End2End-Diffusion/REPA-E", "README.md", "python save_vae_weights.py --repae-ckpt "
        "pretrained/sit-repae-vavae/checkpoints/0400000.pt --vae-name e2e-vavae --save-dir exps"),
    Row("End2End-Diffusion/REPA-E", "README.md", 'accelerate launch --num_machines=1 --num_processes=8 cache_latents.py '
        '--vae-arch="f16d32" --vae-ckpt-path="pretrained/e2e-vavae/e2e-vavae-400k.pt" --vae-latents-name="e2e-vavae" '
        '--pproc-batch-size=128'),
    Row("End2End-Diffusion/REPA-E", "README.md", 'accelerate launch train_ldm_only.py --max-train-steps=4000000 '
        '--report-to="wandb" --allow-tf32 --mixed-precision="fp16" --seed=0 --data-dir="data" --batch-size=256 '
        '--path-type="linear" --prediction="v" --weighting="uniform" --model="SiT-XL/1" --checkpointing-steps=50000 '
        '--vae="f16d32" --vae-ckpt="pretrained/e2e-vavae/e2e-vavae-400k.pt" --vae-latents-name="e2e-vavae" '
        '--learning-rate=1e-4 --enc-type="dinov2-vit-b" --proj-coeff=0.5 --encoder-depth=8 --output-dir="exps" '
        '--exp-name="sit-xl-1-dinov2-b-enc8-ldm-only-e2e-vavae-0.5-4m"'),
    Row("End2End-Diffusion/REPA-E", "README.md", "torchrun --nnodes=1 --nproc_per_node=8 generate.py "
        "--num-fid-samples 50000 --path-type linear --mode sde --num-steps 250 --cfg-scale 1.0 --guidance-high 1.0 "
        "--guidance-low 0.0 --exp-path pretrained/sit-ldm-e2e-vavae --train-steps 4000000"),
    Row("tianweiy/DMD2", "README.md", "python -m demo.imagenet_example  --checkpoint_path IMAGENET_CKPT_PATH"),
    Row("tianweiy/DMD2", "experiments/imagenet/README.md", "python main/edm/test_folder_edm.py --folder "
        "$CHECKPOINT_PATH/imagenet_gan_classifier_genloss3e-3_diffusion1000_lr2e-6_scratch/TIMESTAMP_TBD "
        "--wandb_name test_imagenet_gan_classifier_genloss3e-3_diffusion1000_lr2e-6_scratch --wandb_entity "
        "$WANDB_ENTITY --wandb_project $WANDB_PROJECT --resolution 64 --label_dim 1000 --ref_path "
        "$CHECKPOINT_PATH/imagenet_fid_refs_edm.npz --detector_url $CHECKPOINT_PATH/inception-2015-12-05.pkl",
        ours="python -m evaluations.watch --folder "
             "$CHECKPOINT_PATH/imagenet_gan_classifier_genloss3e-3_diffusion1000_lr2e-6_scratch/TIMESTAMP_TBD "
             "--wandb_name test_imagenet_gan_classifier_genloss3e-3_diffusion1000_lr2e-6_scratch --wandb_entity "
             "$WANDB_ENTITY --wandb_project $WANDB_PROJECT --resolution 64 --label_dim 1000 --ref_path "
             "$CHECKPOINT_PATH/imagenet_fid_refs_edm.npz --detector_url $CHECKPOINT_PATH/inception-2015-12-05.pkl"),
    *[Row("tianweiy/DMD2", f"experiments/imagenet/{name}.sh", command, ours=command.replace(script, "train_dmd2.py"))
      for name, script, command in DMD2_RUNS],
    *[Row("tianweiy/DMD2", file, command, ours=command.replace("main/train_sd.py", "train_dmd2.py"))
      for file, command in DMD2_SD_RUNS],
    *[Row("tianweiy/DMD2", file, command, ours=equivalent) for file, command, equivalent in DMD2_SD_TESTS],
    Row("tianweiy/DMD2", "README.md", "python -m demo.text_to_image_sdxl --checkpoint_path SDXL_CKPT_PATH --precision "
        "float16"),
    Row("tianweiy/DMD2", "README.md", "python -m demo.text_to_image_sdxl --num_step 1 --checkpoint_path SDXL_CKPT_PATH "
        "--precision float16 --conditioning_timestep 399"),
    Row("tianweiy/DMD2", "experiments/sdxl/sdxl_lr1e-5_8node_ode_pretraining_10k_cond399.sh", SDXL_ODE,
        ours=SDXL_ODE.replace("main/train_sd_ode.py", "train_sd_ode.py")),
    Row("tianweiy/DMD2", "experiments/sdxl/README.md", FSDP_CONFIGS,
        ours=FSDP_CONFIGS.replace("main/sdxl/", "preprocessing/")),
    Row("tianweiy/DMD2", "scripts/download_sdxl.sh", SDXL_LMDB, ours=SDXL_LMDB.replace("main/data/", "preprocessing/")),
]
