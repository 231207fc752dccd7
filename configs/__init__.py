"""The paper's training recipes, ``<subset>/<model>.yaml``, installed as the package data
``spa_train.configs`` (``spa-train --config coco-s/spt_tiny`` reads one by name)."""
