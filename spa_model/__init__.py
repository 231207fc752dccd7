"""spa_model: Swin, SPT (Select and Pack Transformer) and STViT-R backbones.

>>> import spa_model
>>> model = spa_model.create_model("spt_tiny", num_classes=200, selector="gumbel")   # SELECTORS: the names
>>> model.contract().label_strides                         # (8, 16, 32): the selection labels it reads
>>> out = model.forward_features(images, select_labels)   # FeatureOutput
>>> loss = task_loss + 0.01 * spa_model.selection_loss(out.scores, select_labels)
>>> spa_model.update_token_budgets(model)                  # once per optimizer step (static budgets)
>>> with spa_model.cuda_graphs(model.eval()):              # inference: one CUDA graph per input shape
...     out = model.forward_features(images)
"""
from .budget import BudgetPolicy, rank_local_buffers, update_token_budgets
from .flops import FlopsReport, count_flops
from .inference import GraphedFeatures, cuda_graphs
from .models import (FeatureOutput, ModelContract, SpaBlockSite, SpaConfig, SwinConfig, SwinTransformer, create_model,
                     list_models, register_model)
from .selection import SELECTORS, selection_loss
from .stvit import STVIT_FORMS, StvitConfig, StvitR

__all__ = ["create_model", "list_models", "register_model", "SwinConfig", "SpaConfig", "SwinTransformer",
           "FeatureOutput", "ModelContract", "SpaBlockSite", "SELECTORS", "selection_loss", "count_flops",
           "FlopsReport", "BudgetPolicy", "rank_local_buffers", "update_token_budgets", "GraphedFeatures",
           "cuda_graphs", "StvitConfig", "StvitR", "STVIT_FORMS"]
