"""detectron2's naming and numeric conventions that the converters and the checkpointer share."""
import re

__all__ = ["D2_BN_EPS", "TRUNK_KEY", "checkpoint_source"]

# detectron2's BN / FrozenBN eps. Sources whose BN is stored folded (Caffe2 affine, Torch7
# with another eps) are re-expressed for it: running_var = var + eps_source - D2_BN_EPS.
D2_BN_EPS = 1e-5

# Tensors of the ResNeXt trunk, wherever a model keeps them (backbone.bottom_up.res2...,
# backbone.res4..., roi_heads.res5... for C4).
TRUNK_KEY = re.compile(r"(?:^|\.)(stem|res[2-5])\.")


def checkpoint_source(meta, author) -> str:
    """The name of a checkpoint's source: its ``meta["source"]`` when it has metadata, else its
    ``__author__`` (detectron2's convention: "Caffe2", "torchvision", ...), else detectron2."""
    return (meta or {}).get("source") or str(author or "detectron2")
