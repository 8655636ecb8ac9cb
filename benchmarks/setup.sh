#!/usr/bin/env bash
# Installs what benchmarks/bench.py needs on a fresh machine: the Fashion-MNIST files (Debian's
# package, as root) and the optional comparison libraries (PyTorch CPU 2.13.0, scikit-learn).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  apt-get install -y -qq dataset-fashion-mnist || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }
fi
python -m pip install -e '.[bench]'
