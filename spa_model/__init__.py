"""spa_model: Swin and SPT (Select and Pack Transformer) backbones.

>>> import spa_model
>>> model = spa_model.create_model("spt_tiny", num_classes=200, selector="gumbel")
>>> out = model.forward_features(images, select_labels)   # FeatureOutput
>>> loss = task_loss + 0.01 * spa_model.selection_loss(out.scores, select_labels)
"""
from .flops import FlopsReport, count_flops
from .models import (FeatureOutput, SpaConfig, SwinConfig, SwinTransformer, create_model, list_models,
                     register_model)
from .selection import selection_loss

__all__ = ["create_model", "list_models", "register_model", "SwinConfig", "SpaConfig", "SwinTransformer",
           "FeatureOutput", "selection_loss", "count_flops", "FlopsReport"]
