"""Backbones: gfldet's ResNet / ResNeXt, and torchvision classification networks as backbones.

Every backbone meets gfldet.model.interfaces.Backbone: it returns C3, C4, C5 (strides 8, 16,
32), says their `out_channels` and `strides`, and lists its conv-BatchNorm pairs for folding.
Parameter names are torchvision's, so torchvision's ImageNet weights load as they are
(`load_backbone_weights`: a weights name such as 'ResNet50_Weights.IMAGENET1K_V1', read from
torch's hub cache or downloaded into it, or a file).
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.hub
from torch import Tensor, nn
from torchvision.models import WeightsEnum, get_model, get_weight
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..core.files import torch_load_safely

log = logging.getLogger(__name__)

SPECS: dict[int, tuple[type[nn.Module], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
}


def _train_with_frozen(module: nn.Module, frozen: list[nn.Module], norm_eval: bool) -> None:
    """After module.train(): frozen parts and (with norm_eval) every BatchNorm in eval mode."""
    for m in frozen:
        m.eval()
    if norm_eval:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


class ResNet(nn.Module):
    """ResNet (v1.5: stride on the 3x3 conv) and ResNeXt, returning C3, C4, C5.

    base_width scales every stage (64 = the standard network; 32 halves all widths), for
    CPU-sized models; groups / width_per_group make it a ResNeXt (e.g. 32, 4 for
    resnext50_32x4d). frozen_stages: -1 none, 0 the stem, k the stem and stages 1..k.
    norm_eval keeps every BatchNorm in eval mode (frozen statistics) during training.

    forward: images [B, 3, H, W] -> [C3 [B, c3, H/8, W/8], C4 [.., H/16, ..], C5 [.., H/32, ..]]
    """

    strides = [8, 16, 32]
    classifier_keys = ("fc.",)  # torchvision's weight entries this backbone leaves out

    def __init__(
        self,
        depth: int = 50,
        base_width: int = 64,
        frozen_stages: int = 1,
        norm_eval: bool = True,
        groups: int = 1,
        width_per_group: int = 64,
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
        extra = {"groups": groups, "base_width": width_per_group} if block is Bottleneck else {}
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
                blocks.append(block(inplanes, planes, stride if j == 0 else 1, down, **extra))
                inplanes = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = [base_width * 2**i * block.expansion for i in (1, 2, 3)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self._frozen_modules():
            m.requires_grad_(False)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        stem: list[nn.Module] = [self.conv1, self.bn1]
        return stem + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        if mode:
            _train_with_frozen(self, self._frozen_modules(), self.norm_eval)
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


def sequential_conv_bn_pairs(module: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """Every (Sequential, i, i+1) below `module` whose child i is a Conv2d and child i+1 a
    BatchNorm: inside a Sequential, a child's output goes to the next child only, so the
    BatchNorm applies directly to the conv's output (torchvision's Conv2dNormActivation and
    the branches of its mobile networks are built this way)."""
    pairs = []
    for seq in module.modules():
        if isinstance(seq, nn.Sequential):
            names = [name for name, _ in seq.named_children()]
            for a, b in zip(names, names[1:]):
                conv, bn = getattr(seq, a), getattr(seq, b)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    pairs.append((seq, a, b))
    return pairs


# Parts of torchvision's classifiers that a backbone leaves out: pooling and classifier, and
# the final 1x1 expansion convs that only serve classification (MobileNetV3's 960-channel,
# EfficientNet's 1280-channel, ShuffleNetV2's conv5).
_CLASSIFIER_PARTS = {"avgpool", "classifier", "fc", "conv5"}
_LAST_FEATURE_IS_CLASSIFIER = ("mobilenet_v3", "efficientnet")


class TorchvisionBackbone(nn.Module):
    """A torchvision classification network (by its builder's name) as a backbone.

    Its modules keep torchvision's names (ImageNet weights load as they are) and run block by
    block in torchvision's order; the outputs of the last block at strides 8, 16 and 32 are
    C3, C4, C5. The blocks' strides are measured once, with a small input, when it is built.
    frozen_stages: -1 none; k >= 0 freezes every block whose output stride is at most
    2**(k+1) (0: the stride-2 stem, 1: everything up to stride 4, ... as for ResNet).

    forward: images [B, 3, H, W] -> [C3 [B, c3, H/8, W/8], C4, C5]
    """

    strides = [8, 16, 32]

    def __init__(self, name: str, frozen_stages: int = 1, norm_eval: bool = True) -> None:
        super().__init__()
        self.name, self.frozen_stages, self.norm_eval = name, frozen_stages, norm_eval
        net = get_model(name, weights=None)
        left_out = []  # prefixes of torchvision's weight entries that are not ours
        for attr, module in net.named_children():
            if attr in _CLASSIFIER_PARTS:
                left_out.append(f"{attr}.")
                continue
            if attr == "features" and name.startswith(_LAST_FEATURE_IS_CLASSIFIER):
                left_out.append(f"features.{len(module) - 1}.")
                module = nn.Sequential(*list(module.children())[:-1])  # same names 0..n-2
            self.add_module(attr, module)
        self.classifier_keys = tuple(left_out)
        # Blocks in forward order: the top-level modules, Sequentials opened one level.
        self._blocks: list[str] = []
        for attr, module in self.named_children():
            if isinstance(module, nn.Sequential):
                self._blocks += [f"{attr}.{k}" for k, _ in module.named_children()]
            else:
                self._blocks.append(attr)
        strides, channels = self._measure()
        missing = [s for s in self.strides if s not in strides]
        if missing:
            raise ValueError(f"torchvision's {name} has no block at stride(s) {missing}")
        self._outputs = [max(i for i, s in enumerate(strides) if s == t) for t in self.strides]
        self.out_channels = [channels[i] for i in self._outputs]
        self._frozen = [
            self.get_submodule(b)
            for b, s in zip(self._blocks, strides)
            if frozen_stages >= 0 and s <= 2 ** (frozen_stages + 1)
        ]
        for m in self._frozen:
            m.requires_grad_(False)

    @torch.no_grad()
    def _measure(self, size: int = 64) -> tuple[list[int], list[int]]:
        """Output stride and channels of every block, from one forward pass in eval mode."""
        was_training = self.training
        self.eval()
        x, strides, channels = torch.zeros(1, 3, size, size), [], []
        for b in self._blocks:
            x = self.get_submodule(b)(x)
            strides.append(size // x.shape[-1])
            channels.append(x.shape[1])
        self.train(was_training)
        return strides, channels

    def train(self, mode: bool = True) -> TorchvisionBackbone:
        super().train(mode)
        if mode:
            _train_with_frozen(self, getattr(self, "_frozen", []), self.norm_eval)
        return self

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        return sequential_conv_bn_pairs(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs, wanted = [], set(self._outputs)
        for i, b in enumerate(self._blocks[: self._outputs[-1] + 1]):
            x = self.get_submodule(b)(x)
            if i in wanted:
                outs.append(x)
        return outs


def _classifier_keys(backbone: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(backbone, "classifier_keys", ()))


def hub_cache_file(weights: WeightsEnum) -> Path:
    """Where torchvision keeps (and looks for) the file of a weights enum: torch's hub folder
    ($TORCH_HOME/hub, by default ~/.cache/torch/hub), checkpoints/, the file name of its url."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def _torchvision_state(pretrained: str) -> dict:
    """The state dict of a torchvision weights name, from torch's hub cache; downloaded into it
    (hash checked) when absent. Read with the same safe loader as checkpoints."""
    try:
        weights = get_weight(pretrained)
    except (ValueError, KeyError, AttributeError):
        raise FileNotFoundError(
            f"model.backbone.pretrained: '{pretrained}' is neither a file nor a "
            "torchvision weights name such as 'ResNet50_Weights.IMAGENET1K_V1'"
        ) from None
    cached = hub_cache_file(weights)
    if not cached.is_file():
        found = torch.hub.HASH_REGEX.search(cached.name)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            # Written to a temporary file, checked against the hash in its name, then moved.
            torch.hub.download_url_to_file(
                weights.url, str(cached), found.group(1) if found else None, progress=True
            )
        except (OSError, RuntimeError) as e:  # offline, refused, or a corrupt download
            reason = " ".join(str(e).split())[:200]
            raise FileNotFoundError(
                f"model.backbone.pretrained: cannot download '{pretrained}' ({reason}): put "
                f"the file {weights.url} at {cached} (the folder follows TORCH_HOME), or give "
                "a local weight file, or set model.backbone.pretrained=null to train from "
                "scratch"
            ) from None
    return _read_state(cached, pretrained)


def _read_state(path: Path, pretrained: str) -> dict:
    """A state dict (names -> tensors) from a weight file, refusing anything that could run
    code; a checkpoint's "state_dict" or "model" entry is taken."""
    try:
        state = torch_load_safely(path)
    except ValueError as e:
        raise ValueError(f"model.backbone.pretrained: {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"model.backbone.pretrained: {pretrained} holds no state dict (a mapping of "
            "parameter names to tensors)"
        )
    return state


def load_backbone_weights(backbone: nn.Module, pretrained: str) -> None:
    """Loads a local weight file or a torchvision weights name (e.g.
    'ResNet50_Weights.IMAGENET1K_V1') into `backbone`, strictly for its own parameters.

    A name is resolved through torch's hub cache, and downloaded only when the file is not
    there; offline, the error says where to put the file. Files are read with
    gfldet.core.files.torch_load_safely (tensors and plain values only). The classifier's
    entries (the backbone's `classifier_keys` prefixes) are dropped; any other missing or
    unexpected entry, or a shape mismatch, is an error naming keys and shapes.
    """
    if Path(pretrained).is_file():
        state = _read_state(Path(pretrained), pretrained)
    else:
        state = _torchvision_state(pretrained)
    own = backbone.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(_classifier_keys(backbone))}
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(
            f"pretrained weights '{pretrained}' do not fit this backbone (shape mismatch in "
            f"{len(bad)} tensors, e.g. {bad[0]}: {tuple(state[bad[0]].shape)} vs "
            f"{tuple(own[bad[0]].shape)}); check model.backbone (type, depth, base_width)"
        )
    # Files from before torch 0.4.1 have no BatchNorm counters; torch fills them in.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"pretrained weights '{pretrained}' do not fit this backbone: missing keys "
            f"{missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    backbone.load_state_dict(state, strict=False)
    log.info("loaded backbone weights from %s", pretrained)
