"""Masking channels in place of removing them, and when that is exact.

Masking keeps every shape and zeroes what the removed channels contribute:
the producing rows (and biases) of conv/linear layers, the affine parameters
of the norms that follow them, and the consumers' input weights (for a
grouped conv, the weights of the conv group that reads the channel). The
masked model then computes what the removed one computes, unless something
reads *across* the channels: a LayerNorm or RMSNorm over them, a GroupNorm
with several channels per group, a softmax, mean or variance over the channel
dimension. There a zero channel is not an absent one (it pulls the mean
towards 0, changes the variance, adds ``exp(0)`` to a softmax), so the masked
model differs from the removed one (by up to 0.07 in the logits of a small
random ConvNeXt). :func:`inexact_members` finds such members of a
Torch-Pruning group from the dependency graph.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import XpruneError

__all__ = ["inexact_members", "is_grouped", "mask_group"]

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm, nn.GroupNorm)
_ROW_NORMS = (nn.LayerNorm,) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

# autograd operations that combine the values of several channels in a way a zero channel changes
# (a sum or an L2 norm does not: a zero adds nothing to it)
_ACROSS = re.compile(
    r"^(Softmax|LogSoftmax|Mean|Var|Std|VarMean|StdMean|Amax|Amin|Max|Min|Logsumexp|Median|"
    r"Nanmedian|Sort|Topk|Kthvalue|NativeLayerNorm|NativeGroupNorm|FusedRmsNorm|RmsNorm)Backward"
)


def _op_shape_dims(fn) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """Input shape of an autograd node and the dimensions it reduces over (None: all)."""
    shape = None
    for attr in ("_saved_self_sym_sizes", "_saved_self", "_saved_input", "_saved_result"):
        try:
            v = getattr(fn, attr)
        except (AttributeError, RuntimeError):
            continue
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(int(s) for s in v)
        break
    name = type(fn).__name__
    if name.startswith("NativeLayerNorm") and shape is not None:
        k = len(getattr(fn, "_saved_normalized_shape", ()))
        return shape, tuple(range(len(shape) - k, len(shape)))
    dims = getattr(fn, "_saved_dim", None)
    if isinstance(dims, int):
        dims = (dims,)
    return shape, None if dims is None else tuple(dims)


# operations that move or merge dimensions: the channel dimension is not followed through them
_LAYOUT = re.compile(
    r"^(Permute|Transpose|T|View|Reshape|UnsafeView|Unsqueeze|Squeeze|Flatten|Expand|Cat|Stack|"
    r"Split|SplitWithSizes|Unbind|Select|Slice|Index|Mm|Bmm|Addmm|MatMul|Einsum|Convolution|"
    r"Mean|Sum|Var|Std|Amax|Amin|Max|Min|LinalgVectorNorm|Norm)Backward"
)
_CHANNELS_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
)
_CHANNELS_LAST = (nn.Linear,)  # not LayerNorm: ConvNeXt's also normalises NCHW tensors (and flags its group anyway)


def _layout(node, names) -> str | None:
    """Where the channels are at an operation: ``"first"`` (dimension 1, as a conv's output) or ``"last"``
    (as a linear layer's), read from the modules before it through operations that keep the dimensions;
    ``None`` when they disagree or a dimension-moving operation comes first."""
    found, stack, seen = set(), list(node.inputs), set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n.module in names:
            found.add(
                "first"
                if isinstance(n.module, _CHANNELS_FIRST)
                else "last"
                if isinstance(n.module, _CHANNELS_LAST)
                else None
            )
            continue
        if n.grad_fn is None or _LAYOUT.match(type(n.grad_fn).__name__):
            return None
        stack.extend(n.inputs)
    return found.pop() if len(found) == 1 else None


def _reads_across(node, idxs, names) -> bool:
    """Whether the operation at graph ``node`` combines values along the dimension holding the channels ``idxs``.

    The channel dimension is one whose size is at least the largest channel
    index + 1 (batch dimension excluded). Where that leaves a choice (an
    average over space as large as the channels), the modules before the
    operation say where the channels are; unresolved, or where the shape
    cannot be read, the answer is yes (masking is then not trusted).
    """
    fn = getattr(node, "grad_fn", None)
    name = type(fn).__name__
    if not _ACROSS.match(name):
        return False
    if name.startswith("NativeGroupNorm"):
        return getattr(fn, "_saved_C", 2) > getattr(fn, "_saved_group", 1)
    shape, dims = _op_shape_dims(fn)
    if not shape:
        return True
    rank = len(shape)
    along = set(range(rank)) if not dims else {d % rank for d in dims}
    top = max(idxs) + 1 if len(idxs) else 1
    candidates = {d for d in range(1, rank) if shape[d] >= top}
    if not candidates & along:
        return False
    if not candidates - along:
        return True
    layout = _layout(node, names)
    return True if layout is None else (1 if layout == "first" else rank - 1) in along


def _near(node, names) -> str:
    """Name of the nearest named module upstream of a graph node (to name an operation in messages)."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop(0)
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n.module in names:
            return names[n.module]
        stack.extend(n.inputs)
    return "<model>"


def _inside_norm(node, names, depth: int = 3) -> bool:
    """Whether an operation node feeds a norm module within ``depth`` unnamed steps (it is that norm's own)."""
    stack = [(o, 1) for o in node.outputs]
    while stack:
        n, d = stack.pop()
        if n.module in names:
            if isinstance(n.module, (*_ROW_NORMS, nn.GroupNorm)):
                return True
            continue
        if d < depth:
            stack.extend((o, d + 1) for o in n.outputs)
    return False


def inexact_members(group, names: dict) -> dict[str, str]:
    """Members of a Torch-Pruning ``group`` through which masking its channels is not removing them.

    Returns ``{module name: reason}``; a module-less operation is named after
    the nearest module before it. ``names`` maps modules to their names.
    """
    found: dict[str, str] = {}
    for item in group:
        node = item.dep.target
        module = node.module
        if isinstance(module, _ROW_NORMS):
            found[names.get(module, type(module).__name__)] = (
                f"{type(module).__name__} normalises over the pruned channels"
            )
        elif isinstance(module, nn.GroupNorm) and module.num_channels > module.num_groups:
            found[names.get(module, "GroupNorm")] = (
                f"GroupNorm normalises over {module.num_channels // module.num_groups} channels per group"
            )
        elif module not in names and _reads_across(node, list(item.idxs), names) and not _inside_norm(node, names):
            op = type(node.grad_fn).__name__.replace("Backward0", "").replace("Backward1", "").lower()
            found[f"{op} after {_near(node, names)}"] = f"a {op} across the pruned channels"
    return found


@torch.no_grad()
def mask_group(group) -> None:
    """Zero, in place, what the channels of a Torch-Pruning ``group`` contribute (see the module docs)."""
    graph = group._DG
    for item in group:
        module, handler = item.dep.target.module, item.dep.handler
        idxs = torch.as_tensor(list(item.idxs), dtype=torch.long)
        if (
            not isinstance(module, nn.Module)
            or not len(idxs)
            or not any(True for _ in module.parameters(recurse=False))
        ):
            continue
        if isinstance(module, _NORMS):
            _zero(getattr(module, "weight", None), 0, idxs)
            _zero(getattr(module, "bias", None), 0, idxs)
        elif isinstance(module, nn.modules.conv._ConvNd):
            depthwise = module.groups == module.out_channels and module.groups > 1  # Torch-Pruning's definition
            _mask_conv(module, idxs, graph.is_out_channel_pruning_fn(handler) or depthwise)
        elif isinstance(module, nn.Linear):
            if graph.is_out_channel_pruning_fn(handler):
                _zero(module.weight, 0, idxs)
                _zero(module.bias, 0, idxs)
            else:
                _zero(module.weight, 1, idxs)
        else:
            raise XpruneError(
                f"mask mode does not know how to zero units of {type(module).__name__}; use mode='remove'"
            )


def _mask_conv(module: nn.modules.conv._ConvNd, idxs: torch.Tensor, output: bool) -> None:
    """Zero output (``output=True``) or input channels ``idxs`` of a conv, grouped or not.

    A conv's weight is ``[out, in / groups, ...]`` (transposed: ``[in, out / groups, ...]``):
    dimension 0 holds every channel of one side, dimension 1 the channels of one group of the
    other side, read by the ``size(0) / groups`` rows of that group.
    """
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    if output:
        _zero(module.bias, 0, idxs)
    w = module.weight
    if output != transposed:  # dimension 0 indexes these channels
        _zero(w, 0, idxs)
        return
    per, rows = w.shape[1], w.shape[0] // module.groups
    for c in idxs.tolist():
        g, local = divmod(c, per)
        w[g * rows : (g + 1) * rows, local] = 0.0


def _zero(t: torch.Tensor | None, dim: int, idxs: torch.Tensor) -> None:
    if t is not None:
        t.index_fill_(dim, idxs.to(t.device), 0.0)


def is_grouped(module) -> bool:
    """A conv with groups that Torch-Pruning does not treat as depthwise (``1 < groups != out_channels``)."""
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and module.groups != module.out_channels
