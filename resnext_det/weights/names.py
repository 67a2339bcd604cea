"""detectron2's naming and numeric conventions that the converters and the checkpointer share."""
import re

__all__ = ["D2_BN_EPS", "TRUNK_KEY", "from_torchvision_name", "to_torchvision_name"]

# detectron2's BN / FrozenBN eps. Sources whose BN is stored folded (Caffe2 affine, Torch7
# with another eps) are re-expressed for it: running_var = var + eps_source - D2_BN_EPS.
D2_BN_EPS = 1e-5

# Tensors of the ResNeXt trunk, wherever a model keeps them (backbone.bottom_up.res2...,
# backbone.res4..., roi_heads.res5... for C4).
TRUNK_KEY = re.compile(r"(?:^|\.)(stem|res[2-5])\.")


# torchvision's (and timm's) ResNet names against detectron2's, one table read both ways (sources.py
# converts torchvision files; engine/pretrain.py writes one). {L}: torchvision's layer, {R} = L + 1.
_TORCHVISION_NAMES = [
    ("conv1.weight", "stem.conv1.weight"),
    ("bn1.{p}", "stem.conv1.norm.{p}"),
    ("layer{L}.{i}.conv{k}.weight", "res{R}.{i}.conv{k}.weight"),
    ("layer{L}.{i}.bn{k}.{p}", "res{R}.{i}.conv{k}.norm.{p}"),
    ("layer{L}.{i}.downsample.0.weight", "res{R}.{i}.shortcut.weight"),
    ("layer{L}.{i}.downsample.1.{p}", "res{R}.{i}.shortcut.norm.{p}"),
]
_FIELDS = {"L": r"\d", "R": r"\d", "i": r"\d+", "k": r"\d", "p": r"weight|bias|running_mean|running_var|num_batches_tracked"}


def _pattern(template: str) -> "re.Pattern":
    rx = re.escape(template)
    for field, body in _FIELDS.items():
        rx = rx.replace(re.escape("{" + field + "}"), f"(?P<{field}>{body})")
    return re.compile(f"^{rx}$")


_TV_TO_D2 = [(_pattern(tv), d2) for tv, d2 in _TORCHVISION_NAMES]
_D2_TO_TV = [(_pattern(d2), tv) for tv, d2 in _TORCHVISION_NAMES]


def _rename(name: str, table) -> "str | None":
    for pattern, template in table:
        m = pattern.match(name)
        if m:
            g = m.groupdict()
            if "L" in g:
                g["R"] = str(int(g["L"]) + 1)
            if "R" in g:
                g["L"] = str(int(g["R"]) - 1)
            return template.format(**g)
    return None


def from_torchvision_name(name: str) -> "str | None":
    """detectron2's backbone name of torchvision's ResNet tensor ``name`` (None: not a trunk
    tensor of that layout), e.g. ``layer1.0.bn2.weight`` -> ``res2.0.conv2.norm.weight``."""
    return _rename(name, _TV_TO_D2)


def to_torchvision_name(name: str) -> "str | None":
    """torchvision's ResNet name of detectron2's backbone tensor ``name`` (the inverse of
    :func:`from_torchvision_name`; None: no such tensor in torchvision's layout)."""
    return _rename(name, _D2_TO_TV)
