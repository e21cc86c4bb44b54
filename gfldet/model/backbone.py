"""ResNet backbone with torchvision's parameter names (so ImageNet weights load as they are)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import get_weight
from torchvision.models.resnet import BasicBlock, Bottleneck

log = logging.getLogger(__name__)

SPECS: dict[int, tuple[type[nn.Module], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
}


class ResNet(nn.Module):
    """ResNet (v1.5: stride on the 3x3 conv) returning C3, C4, C5.

    base_width scales every stage (64 = the standard network; 32 halves all widths), for
    CPU-sized models. frozen_stages: -1 none, 0 the stem, k the stem and stages 1..k.
    norm_eval keeps every BatchNorm in eval mode (frozen statistics) during training.

    forward: images [B, 3, H, W] -> [C3 [B, c3, H/8, W/8], C4 [.., H/16, ..], C5 [.., H/32, ..]]
    """

    def __init__(
        self, depth: int = 50, base_width: int = 64, frozen_stages: int = 1, norm_eval: bool = True
    ) -> None:
        super().__init__()
        if depth not in SPECS:
            raise ValueError(f"model.backbone.depth must be one of {sorted(SPECS)}, got {depth}")
        block, layers = SPECS[depth]
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = base_width
        for i, n in enumerate(layers):
            planes = base_width * 2**i
            stride = 1 if i == 0 else 2
            blocks: list[nn.Module] = []
            for j in range(n):
                down = None
                if j == 0 and (stride != 1 or inplanes != planes * block.expansion):
                    down = nn.Sequential(
                        nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                        nn.BatchNorm2d(planes * block.expansion),
                    )
                blocks.append(block(inplanes, planes, stride if j == 0 else 1, down))
                inplanes = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = [base_width * 2**i * block.expansion for i in (1, 2, 3)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self._freeze()

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        stem: list[nn.Module] = [self.conv1, self.bn1]
        return stem + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def _freeze(self) -> None:
        for m in self._frozen_modules():
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        if mode:
            for m in self._frozen_modules():
                m.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        """Every BatchNorm that is applied directly to a conv's output, as (owner module, conv
        attribute, BatchNorm attribute), in forward order. These are what
        gfldet.model.fuse folds into their convs for inference; the pairing lives here because
        only this module's forward (and torchvision's blocks') knows it."""
        pairs: list[tuple[nn.Module, str, str]] = [(self, "conv1", "bn1")]
        stages = [m for name, m in self.named_children() if name.startswith("layer")]
        for stage in stages:
            for block in stage:
                n = 3 if isinstance(block, Bottleneck) else 2
                pairs += [(block, f"conv{k}", f"bn{k}") for k in range(1, n + 1)]
                if block.downsample is not None:  # Sequential(conv, bn), see __init__
                    pairs.append((block.downsample, "0", "1"))
        return pairs

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]

    def load_pretrained(self, pretrained: str) -> None:
        """Loads a local weight file or a torchvision weights name
        (e.g. 'ResNet50_Weights.IMAGENET1K_V1').

        A name is resolved through torchvision, which uses its hub cache and downloads only when
        the file is not cached. The classifier (fc.*) is dropped; any other mismatch is an error.
        """
        if Path(pretrained).is_file():
            state = torch.load(pretrained, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model"):
                if isinstance(state, dict) and isinstance(state.get(key), dict):
                    state = state[key]
        else:
            try:
                weights = get_weight(pretrained)
            except (ValueError, KeyError, AttributeError):
                raise FileNotFoundError(
                    f"model.backbone.pretrained: '{pretrained}' is neither a file nor a "
                    "torchvision weights name such as 'ResNet50_Weights.IMAGENET1K_V1'"
                ) from None
            try:
                state = weights.get_state_dict(progress=True)
            except OSError as e:  # no network and not in torchvision's cache
                raise FileNotFoundError(
                    f"model.backbone.pretrained: could not get '{pretrained}' ({e}); download "
                    "it once where there is internet (it is cached in ~/.cache/torch/hub/"
                    "checkpoints) or give a local weight file"
                ) from None
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own = self.state_dict()
        bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        if bad:
            raise ValueError(
                f"pretrained weights '{pretrained}' do not fit this ResNet (shape mismatch in "
                f"{len(bad)} tensors, e.g. {bad[0]}: {tuple(state[bad[0]].shape)} vs "
                f"{tuple(own[bad[0]].shape)}); check depth and base_width"
            )
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"pretrained weights '{pretrained}': missing keys {missing[:5]}, "
                f"unexpected keys {unexpected[:5]}"
            )
        log.info("loaded backbone weights from %s", pretrained)
