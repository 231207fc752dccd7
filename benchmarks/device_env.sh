# Sourced by the GPU scripts (gpu_suite.sh, detection_checks.sh) on a machine that runs the package
# from a copy of the source tree, not installed: wheels the machine lacks (pycocotools, orjson) from
# .whl/ when present, and links that give the tree the installed layout (setup.cfg maps cli/ to
# spa_cli, manifests/ to spa_data.manifests, configs/ to spa_train.configs).
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
[ -e spa_cli ] || ln -s cli spa_cli
[ -e spa_data/manifests ] || ln -s ../manifests spa_data/manifests
[ -e spa_train/configs ] || ln -s ../configs spa_train/configs
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 SPA_FIXTURES=${SPA_FIXTURES:-$PWD/.fixtures}
