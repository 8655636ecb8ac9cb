#!/usr/bin/env bash
# Regenerates the pictures in README's "See it" section (a few minutes): bash docs/make-see-it.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/see-it
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT

for demo in step-too-small step-too-large momentum-escapes valley-gd valley-momentum valley-nesterov \
            valley-adagrad valley-rmsprop valley-adam rosenbrock-momentum rosenbrock-adam; do
  sgdcli train "configs/see-it/$demo.yaml" --runs-dir "$runs" > /dev/null 2>&1 || true  # step-too-large exits 5
  cp "$runs/$demo"-*/path.png "$out/$demo.png"
done

digits=$(sgdcli train configs/digits-mlp.yaml --runs-dir "$runs" \
  --set 'training.track=[grad_norm, weight_norm, update_ratio]' 2> /dev/null)
cp "$digits/layers.png" "$out/layers.png"
sgdcli landscape "$digits" --direction "0.weight[36,5]" --out "$out/landscape-coefficient" > /dev/null
sgdcli landscape "$digits" --direction gradient --out "$out/landscape-gradient" > /dev/null
sgdcli landscape "$digits" --direction init-to-final --out "$out/landscape-init-to-final" > /dev/null
sgdcli landscape "$digits" --plane --directions pca --out "$out/landscape-plane-pca" > /dev/null
sgdcli landscape "$digits" --plane --directions random --out "$out/landscape-plane-random" > /dev/null
rm -f "$out"/landscape-*.csv

sgdcli train configs/digits-mlp.yaml --runs-dir "$runs/modes" --jobs 2 --plot "$out/batch-modes.png" \
  --sweep training.batch.mode=sgd,minibatch,full > /dev/null 2>&1
sgdcli compare "$runs"/modes/* --x samples --plot "$out/batch-modes-samples.png" > /dev/null 2>&1

for mode in sgd minibatch full; do
  sgdcli train "configs/see-it/least-squares-$mode.yaml" --runs-dir "$runs/ls" > /dev/null 2>&1
done
sgdcli compare "$runs"/ls/* --plot "$runs/ls.png" > /dev/null 2>&1
cp "$runs/ls-paths.png" "$out/least-squares-paths.png"

spirals=$(sgdcli train configs/quickstart.yaml --runs-dir "$runs" 2> /dev/null)
cp "$spirals/boundary.gif" "$out/boundary.gif"
sine=$(sgdcli train configs/see-it/sine-fit.yaml --runs-dir "$runs" 2> /dev/null)
cp "$sine/boundary.png" "$out/boundary-sine.png"

sgdcli train configs/iris.yaml --seeds 5 --jobs 2 --runs-dir "$runs/seeds" --plot "$out/seeds-band.png" \
  > /dev/null 2>&1

sgdcli train configs/see-it/valley-phase.yaml --jobs 2 --runs-dir "$runs/phase" --plot "$runs/phase.png" \
  --sweep optimizer.learning_rate=0.005,0.01,0.02,0.04,0.06,0.08,0.1 --sweep optimizer.momentum=0,0.3,0.5,0.7,0.9 \
  > /dev/null 2>&1
cp "$runs/sweep.png" "$out/valley-phase.png"

sgdcli lr-find configs/digits-mlp.yaml --out "$runs/lr" > /dev/null
cp "$runs"/lr/digits-mlp-lr-find-*/lr_find.png "$out/lr-find.png"

xp=$(sgdcli train configs/perturb-xor.yaml --runs-dir "$runs" 2> /dev/null)
xg=$(sgdcli train configs/xor-gradient.yaml --runs-dir "$runs" 2> /dev/null)
sgdcli boundary "$xg" --units --out "$runs/xor" > /dev/null
cp "$runs/xor-units.png" "$out/boundary-xor-units.png"
sgdcli compare "$xp" "$xg" --x forward_passes --plot "$out/perturb-vs-gradient.png" > /dev/null 2>&1
echo "wrote $(ls "$out" | wc -l) pictures to $out"
