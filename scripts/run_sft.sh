#!/usr/bin/env bash
# run_sft.sh of Chinese-LLaMA-Alpaca, flag by flag (seed 002 step 7; seed 001's `bash run_lora.sh`), on helpers.train.
#
# The two scenarios of seed 002:
#   SCENARIO=new_lora         (7.1.2, default) a new instruction LoRA on a Chinese-LLaMA (LLaMA + Chinese-LLaMA-LoRA
#                             merged): the LoRA flags are given, no --peft_path, --gradient_checkpointing
#   SCENARIO=continue_alpaca  (7.1.1) keep training Chinese-Alpaca-LoRA: --peft_path; r/alpha/target modules come
#                             from the adapter, so --lora_rank/--lora_alpha/--trainable/--modules_to_save are left out
# Every value below can be set from the environment, e.g.
#   MODEL=merged_hf TOKENIZER=merged_tokenizer_hf DATASET_DIR=data/train NPROC_PER_NODE=2 bash scripts/run_sft.sh
# DRY_RUN=1 prints the command, one argument per line, instead of running it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

########参数部分########
scenario=${SCENARIO:-new_lora}
lr=${LR:-1e-4}
lora_rank=${LORA_RANK:-8}
lora_alpha=${LORA_ALPHA:-32}
# seed 7.1.2 trains q_proj,v_proj only; the original default is all seven projections:
lora_trainable=${LORA_TRAINABLE:-"q_proj,v_proj"}
# full copies of the embeddings: only because the vocabulary grew (49953/49954 rows); with an unchanged
# vocabulary set MODULES_TO_SAVE="" (else ~2 x 49953 x 4096 = 410 M parameters train for nothing)
modules_to_save=${MODULES_TO_SAVE-"embed_tokens,lm_head"}
lora_dropout=${LORA_DROPOUT:-0.05}
pretrained_model=${MODEL:-path/to/chinese_llama_hf}
chinese_tokenizer_path=${TOKENIZER:-path/to/merged_tokenizer_hf}
dataset_dir=${DATASET_DIR:-path/to/sft_data_dir}
per_device_train_batch_size=${PER_DEVICE_TRAIN_BATCH_SIZE:-1}
per_device_eval_batch_size=${PER_DEVICE_EVAL_BATCH_SIZE:-1}
training_steps=${MAX_STEPS:-100}
gradient_accumulation_steps=${GRADIENT_ACCUMULATION_STEPS:-1}
output_dir=${OUTPUT_DIR:-sft_output}
peft_model=${PEFT_MODEL:-path/to/chinese_alpaca_lora}
# one held-out file (Alpaca JSON); empty: hold out --validation_split_percentage of the training data instead
validation_file=${VALIDATION_FILE:-}
validation_split_percentage=${VALIDATION_SPLIT_PERCENTAGE:-0.001}
# float16 halves the base's memory on a GPU; on a CPU use float32
torch_dtype=${TORCH_DTYPE:-float16}
# the seed passes --fp16; helpers.train picks it from the GPU itself (bf16 on compute >= 8.0, fp16 + loss
# scaling on T4/V100, none on CPU): MIXED_PRECISION="--fp16" forces the seed's choice
mixed_precision=${MIXED_PRECISION:-}
seed=${SEED:-$RANDOM}
# ZeRO-2 as in the seed; DEEPSPEED_CONFIG="" runs plain DDP (torchrun alone)
deepspeed_config_file=${DEEPSPEED_CONFIG-"$here/helpers/assets/ds_zero2_no_offload.json"}
nproc_per_node=${NPROC_PER_NODE:-1}

args=(
    ${deepspeed_config_file:+--deepspeed "$deepspeed_config_file"}
    --model_name_or_path "$pretrained_model"
    --tokenizer_name_or_path "$chinese_tokenizer_path"
    --dataset_dir "$dataset_dir"
    --validation_split_percentage "$validation_split_percentage"
    --per_device_train_batch_size "$per_device_train_batch_size"
    --per_device_eval_batch_size "$per_device_eval_batch_size"
    --do_train
    --do_eval
    --seed "$seed"
    $mixed_precision
    --max_steps "$training_steps"
    --lr_scheduler_type cosine
    --learning_rate "$lr"
    --warmup_ratio 0.03
    --weight_decay 0
    --logging_strategy steps
    --logging_steps "${LOGGING_STEPS:-10}"
    --save_strategy steps
    --save_total_limit 3
    --evaluation_strategy steps
    --eval_steps "${EVAL_STEPS:-250}"
    --save_steps "${SAVE_STEPS:-500}"
    --gradient_accumulation_steps "$gradient_accumulation_steps"
    --preprocessing_num_workers "${PREPROCESSING_NUM_WORKERS:-8}"
    --max_seq_length "${MAX_SEQ_LENGTH:-512}"
    --output_dir "$output_dir"
    --overwrite_output_dir
    --ddp_timeout 30000
    --logging_first_step True
)
case "$scenario" in
    new_lora)
        args+=(--lora_rank "$lora_rank" --lora_alpha "$lora_alpha" --trainable "$lora_trainable"
               --modules_to_save "$modules_to_save" --lora_dropout "$lora_dropout")
        ;;
    continue_alpaca)
        args+=(--lora_dropout "$lora_dropout") ;;
    *) echo "SCENARIO=$scenario: choose new_lora or continue_alpaca" >&2; exit 2 ;;
esac
args+=(--torch_dtype "$torch_dtype" ${validation_file:+--validation_file "$validation_file"})
if [ "$scenario" = continue_alpaca ]; then args+=(--peft_path "$peft_model"); else args+=(--gradient_checkpointing); fi
args+=(--ddp_find_unused_parameters False)

########启动命令########
cmd=("${TORCHRUN:-torchrun}" --nnodes "${NNODES:-1}" --nproc_per_node "$nproc_per_node" -m helpers.train sft "${args[@]}")
if [ "${DRY_RUN:-0}" = 1 ]; then printf '%s\n' "${cmd[@]}"; exit 0; fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "${cmd[@]}"
