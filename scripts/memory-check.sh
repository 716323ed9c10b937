#!/usr/bin/env bash
# Memory plan vs measured peak on wasm (README "Memory plans"): the same `mgllava finetune` command planned with
# --dry-run --json and then run for one epoch of 64 tiny-shapes records at batch 4, for three LLM sizes, LoRA
# (r 16) with and without activation checkpointing. Needs the demo's data and warm-up run (`npm run demo` first).
# Prints one markdown row per run: size, checkpointing, estimate, measured peak, estimate / measured.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/mgllava-memcheck.XXXXXX)
trap 'rm -rf "$work"' EXIT
[ -d checkpoints/tiny-shapes-warmup ] || { echo "run npm run demo first (needs checkpoints/tiny-shapes-warmup)" >&2; exit 1; }
node -e 'const r=require("./data/tiny-shapes/finetune.json"); require("fs").writeFileSync(process.argv[1], JSON.stringify(r.slice(0,64)))' "$work/records.json"

echo '| LLM (hidden / intermediate / layers) | checkpointing | estimate MiB | measured peak MiB | estimate / measured |'
echo '|---|---|---|---|---|'
for size in "128 344 2" "256 688 4" "512 1376 6"; do
  read -r h i l <<<"$size"
  for ck in false true; do
    sets=(--set "output_dir=$work/runs" --set "name=mem-$h-$ck" --set init.from=null
      --set init.encoders_from=checkpoints/tiny-shapes-warmup --set "data.records=$work/records.json"
      --set train.batch_size=4 --set train.max_steps=16 --set train.eval_records=null
      --set "model.llm.hidden_size=$h" --set "model.llm.intermediate_size=$i" --set "model.llm.num_layers=$l"
      --set "train.activation_checkpointing=$ck")
    est=$(node bin/mgllava.js finetune --config configs/tiny-shapes/finetune-lora.yaml "${sets[@]}" --backend wasm --dry-run --json |
      node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s.trim().split("\n").pop()).memoryGiB.total*1024))')
    node bin/mgllava.js finetune --config configs/tiny-shapes/finetune-lora.yaml "${sets[@]}" --backend wasm --progress off >/dev/null
    peak=$(node -e 'const l=require("fs").readFileSync(process.argv[1],"utf8").trim().split("\n").map(JSON.parse); console.log(Math.max(...l.filter(x=>x.peak_memory_bytes).map(x=>x.peak_memory_bytes))/2**20)' "$work/runs/mem-$h-$ck/metrics.jsonl")
    node -e 'const [h,i,l,ck,e,p]=process.argv.slice(1); console.log(`| ${h} / ${i} / ${l} | ${ck==="true"?"on":"off"} | ${(+e).toFixed(1)} | ${(+p).toFixed(1)} | ${(e/p).toFixed(2)} |`)' "$h" "$i" "$l" "$ck" "$est" "$peak"
  done
done
