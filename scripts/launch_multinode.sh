#!/usr/bin/env bash
# PPO over several nodes: `llmac serve` rollout servers on their own GPUs, DeepSpeed ZeRO-3 training
# on the others (accelerate launch), weights moved GPU to GPU with vLLM's NCCL weight transfer.
#
# Run it on every node at once (a scheduler's job step, or one ssh per node), with that node's rank:
#   NODES="node0 node1" NODE_RANK=0 bash scripts/launch_multinode.sh [extra `llmac ppo` flags]
# It starts this node's servers, waits until every node's servers answer /health, trains, and stops
# its servers when training ends or fails. Settings (environment; defaults for 2 nodes x 8 GPUs):
#   NODES         hostnames, node 0 first (also the trainer's main address)
#   NODE_RANK     this node's index in NODES
#   TRAIN_GPUS    GPUs that train (default 0,1,2,3,4,5); SERVER_GPUS: one server each (default "6 7")
#   PORT_BASE     the server on SERVER_GPUS' k-th GPU listens on PORT_BASE + k (default 8000)
#   MODEL         the actor folder every node can read (default: the recipe's model)
#   RECIPE        the `llmac ppo` recipe (default recipes/ppo/qwen2.5-7b_gsm8k_zero3_lora.yaml)
#   ACCELERATE    the accelerate config (default recipes/accelerate/zero3_multinode.yaml)
#   SERVE_FLAGS   extra `llmac serve` flags (default: bfloat16, 2048 tokens, CUDA graphs)
#   HEALTH_TIMEOUT seconds to wait for every server (default 1800: first start downloads/compiles)
#   DRY_RUN=1     print the commands instead of running them
set -euo pipefail

NODES=(${NODES:?set NODES to the nodes\' hostnames, node 0 first})
NODE_RANK=${NODE_RANK:?set NODE_RANK to this node\'s index in NODES}
TRAIN_GPUS=${TRAIN_GPUS:-0,1,2,3,4,5}
SERVER_GPUS=(${SERVER_GPUS:-6 7})
PORT_BASE=${PORT_BASE:-8000}
RECIPE=${RECIPE:-recipes/ppo/qwen2.5-7b_gsm8k_zero3_lora.yaml}
ACCELERATE=${ACCELERATE:-recipes/accelerate/zero3_multinode.yaml}
MODEL=${MODEL:-$(sed -n 's/^model_name_or_path: *//p' "$RECIPE")}
SERVE_FLAGS=${SERVE_FLAGS:---engine_dtype bfloat16 --max_model_len 2048 --enforce_eager false}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-1800}
LLMAC=${LLMAC:-llmac}
MAIN=${NODES[0]}

run() {
    if [[ ${DRY_RUN:-0} == 1 ]]; then echo "$*"; else "$@"; fi
}

URLS=()
for node in "${NODES[@]}"; do
    for k in "${!SERVER_GPUS[@]}"; do URLS+=("http://$node:$((PORT_BASE + k))"); done
done

PIDS=()
stop_servers() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_servers EXIT

mkdir -p logs
for k in "${!SERVER_GPUS[@]}"; do
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        echo "CUDA_VISIBLE_DEVICES=${SERVER_GPUS[$k]} $LLMAC serve --model $MODEL --host 0.0.0.0" \
            "--port $((PORT_BASE + k)) --weight_transfer nccl $SERVE_FLAGS"
        continue
    fi
    # shellcheck disable=SC2086  # SERVE_FLAGS is a list of flags
    CUDA_VISIBLE_DEVICES=${SERVER_GPUS[$k]} "$LLMAC" serve --model "$MODEL" --host 0.0.0.0 \
        --port $((PORT_BASE + k)) --weight_transfer nccl $SERVE_FLAGS \
        >"logs/serve-$NODE_RANK-$k.log" 2>&1 &
    PIDS+=($!)
done

if [[ ${DRY_RUN:-0} != 1 ]]; then
    deadline=$((SECONDS + HEALTH_TIMEOUT))
    for url in "${URLS[@]}"; do
        until curl -sf "$url/health" >/dev/null; do
            if ((SECONDS > deadline)); then
                echo "launch_multinode: $url did not answer /health within $HEALTH_TIMEOUT s (see logs/serve-*.log on its node)" >&2
                exit 1
            fi
            sleep 5
        done
    done
    echo "launch_multinode: ${#URLS[@]} rollout servers ready" >&2
fi

# shellcheck disable=SC2068
CUDA_VISIBLE_DEVICES=$TRAIN_GPUS run accelerate launch --config_file "$ACCELERATE" \
    --machine_rank "$NODE_RANK" --main_process_ip "$MAIN" \
    --num_machines "${#NODES[@]}" \
    --num_processes $((${#NODES[@]} * $(tr ',' '\n' <<<"$TRAIN_GPUS" | wc -l))) \
    -m llmac ppo --config "$RECIPE" --model_name_or_path "$MODEL" \
    --engine remote --server_urls "${URLS[@]}" \
    --weight_transfer nccl --weight_transfer_address "$MAIN:29600" "$@"
