#!/usr/bin/env bash
# run_pt.sh of Chinese-LLaMA-Alpaca, flag by flag, on helpers.train: LoRA pre-training on Chinese text.
# (Seed 002 step 6 skips it -- "省略" -- and points to the original project; these are the flags of its
# scripts/training/run_pt.sh, with the same launch as seed 002 step 7: torchrun + DeepSpeed ZeRO-2.)
# Every value below can be set from the environment, e.g.
#   MODEL=llama_hf TOKENIZER=merged_tokenizer_hf DATASET_DIR=data/pt NPROC_PER_NODE=2 bash scripts/run_pt.sh
# DRY_RUN=1 prints the command, one argument per line, instead of running it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

########参数部分########
lr=${LR:-2e-4}
lora_rank=${LORA_RANK:-8}
lora_alpha=${LORA_ALPHA:-32}
lora_trainable=${LORA_TRAINABLE:-"q_proj,v_proj,k_proj,o_proj,gate_proj,down_proj,up_proj"}
# the extended vocabulary's new rows must be learnt: embed_tokens and lm_head train in full (saved with the adapter)
modules_to_save=${MODULES_TO_SAVE-"embed_tokens,lm_head"}
lora_dropout=${LORA_DROPOUT:-0.05}
pretrained_model=${MODEL:-path/to/hf/llama/dir}
chinese_tokenizer_path=${TOKENIZER:-path/to/chinese/llama/tokenizer/dir}
dataset_dir=${DATASET_DIR:-path/to/pt/data/dir}
data_cache=${DATA_CACHE:-temp_data_cache_dir}
per_device_train_batch_size=${PER_DEVICE_TRAIN_BATCH_SIZE:-1}
per_device_eval_batch_size=${PER_DEVICE_EVAL_BATCH_SIZE:-1}
gradient_accumulation_steps=${GRADIENT_ACCUMULATION_STEPS:-8}
output_dir=${OUTPUT_DIR:-output_dir}
# float16 halves the base's memory on a GPU; on a CPU use float32
torch_dtype=${TORCH_DTYPE:-float16}
# the original passes --fp16; helpers.train picks it from the GPU (bf16 on compute >= 8.0, fp16 + loss scaling on
# T4/V100, none on CPU): MIXED_PRECISION="--fp16" forces it
mixed_precision=${MIXED_PRECISION:-}
seed=${SEED:-$RANDOM}
# one epoch as in the original; MAX_STEPS=N stops earlier (a short run)
length=(--num_train_epochs "${NUM_TRAIN_EPOCHS:-1}")
if [ -n "${MAX_STEPS:-}" ]; then length+=(--max_steps "$MAX_STEPS"); fi
deepspeed_config_file=${DEEPSPEED_CONFIG-"$here/helpers/assets/ds_zero2_no_offload.json"}
nproc_per_node=${NPROC_PER_NODE:-1}

args=(
    ${deepspeed_config_file:+--deepspeed "$deepspeed_config_file"}
    --model_name_or_path "$pretrained_model"
    --tokenizer_name_or_path "$chinese_tokenizer_path"
    --dataset_dir "$dataset_dir"
    --data_cache_dir "$data_cache"
    --validation_split_percentage "${VALIDATION_SPLIT_PERCENTAGE:-0.001}"
    --per_device_train_batch_size "$per_device_train_batch_size"
    --per_device_eval_batch_size "$per_device_eval_batch_size"
    --do_train
    --seed "$seed"
    $mixed_precision
    "${length[@]}"
    --lr_scheduler_type cosine
    --learning_rate "$lr"
    --warmup_ratio 0.05
    --weight_decay 0.01
    --logging_strategy steps
    --logging_steps "${LOGGING_STEPS:-10}"
    --save_strategy steps
    --save_total_limit 3
    --save_steps "${SAVE_STEPS:-200}"
    --gradient_accumulation_steps "$gradient_accumulation_steps"
    --preprocessing_num_workers "${PREPROCESSING_NUM_WORKERS:-8}"
    --block_size "${BLOCK_SIZE:-512}"
    --output_dir "$output_dir"
    --overwrite_output_dir
    --ddp_timeout 30000
    --logging_first_step True
    --lora_rank "$lora_rank"
    --lora_alpha "$lora_alpha"
    --trainable "$lora_trainable"
    --modules_to_save "$modules_to_save"
    --lora_dropout "$lora_dropout"
    --torch_dtype "$torch_dtype"
    --gradient_checkpointing
    --ddp_find_unused_parameters False
)

########启动命令########
cmd=("${TORCHRUN:-torchrun}" --nnodes "${NNODES:-1}" --nproc_per_node "$nproc_per_node" -m helpers.train pt "${args[@]}")
if [ "${DRY_RUN:-0}" = 1 ]; then printf '%s\n' "${cmd[@]}"; exit 0; fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "${cmd[@]}"
