"""torchvision Mask R-CNN / Faster R-CNN on a spa_model backbone with an FPN.

The backbone's four feature maps (strides 4-32) feed ``torchvision.ops.FeaturePyramidNetwork``
(256 channels, plus a max-pooled stride-64 level), as in torchvision's ``BackboneWithFPN``.
Images arrive from the shards already at the canonical geometry and normalised by the loader,
so the detector's transform neither resizes nor normalises again: it only batches (padding
to a multiple of 32) and maps boxes back, which is then the identity.

The backbone adapter remembers the last ``FeatureOutput`` so that the trainer can add the
selection loss on the gate scores of the very forward pass the detector made.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from spa_common.errors import SpaError

FPN_CHANNELS = 256


class BackboneAdapter(nn.Module):
    """``forward_features`` -> OrderedDict {'0'..'3': maps}; keeps the FeatureOutput of the last call."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.select_labels: Optional[dict] = None   # set per batch (oracle 'gt' selector only)
        self.last_output = None

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        self.last_output = self.backbone.forward_features(images, select_labels=self.select_labels)
        return OrderedDict((str(i), f) for i, f in enumerate(self.last_output.features))


class BackboneWithFPN(nn.Module):
    """spa_model backbone + FPN; ``out_channels`` is what torchvision's detectors read."""

    def __init__(self, backbone: nn.Module, *, out_channels: int = FPN_CHANNELS):
        super().__init__()
        self.body = BackboneAdapter(backbone)
        self.fpn = FeaturePyramidNetwork(list(backbone.feature_channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(self.body(images))


class ShardTransform(GeneralizedRCNNTransform):
    """Batching only: shard images are already at their canonical size and normalised."""

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def resize(self, image, target=None):
        return image, target


def build_detector(backbone: nn.Module, *, num_classes: int, masks: bool, fpn_channels: int = FPN_CHANNELS,
                   mask_head_channels: int = 256, **detector_args) -> nn.Module:
    """Mask R-CNN (``masks``) or Faster R-CNN; ``num_classes`` excludes the background.

    ``detector_args`` go to torchvision's constructor (e.g. ``box_batch_size_per_image``,
    ``rpn_post_nms_top_n_train``, ``box_detections_per_img``). ``fpn_channels`` and
    ``mask_head_channels`` (torchvision: 256 both) only shrink the heads for quick tests.
    """
    detector_cls = MaskRCNN if masks else FasterRCNN
    heads = {"num_classes": num_classes + 1}
    if masks and mask_head_channels != 256:
        heads = {"num_classes": None,
                 "mask_head": MaskRCNNHeads(fpn_channels, [mask_head_channels] * 4, dilation=1),
                 "mask_predictor": MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes + 1),
                 "box_predictor": FastRCNNPredictor(1024, num_classes + 1)}
    try:
        detector = detector_cls(BackboneWithFPN(backbone, out_channels=fpn_channels), **heads, **detector_args)
    except TypeError as e:
        raise SpaError(f"config detector_args: {e}") from None
    detector.transform = ShardTransform(min_size=1, max_size=1, image_mean=[0.0] * 3, image_std=[1.0] * 3,
                                        size_divisible=32)  # sizes unused: ShardTransform never resizes
    return detector
