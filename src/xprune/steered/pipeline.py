r"""The whole Interpretations Steered Pruning method: :func:`steer` and :func:`prune`.

Stages (each cached and resumable, see :mod:`xprune.steered._stage`):

1. **predictor** -- :func:`~xprune.steered.explainer.predictor_step` loss;
2. **selector** -- the amortised explainer (:class:`~xprune.steered.explainer.Selector`);
3. **gates** -- an architecture generator on a frozen copy of the
   classifier: by default the authors' hypernetwork
   (:class:`~xprune.steered.generator.HyperGates`, ``generator="hypernet"``),
   or one free logit per channel (:class:`~xprune.steered.gates.ChannelGates`,
   ``generator="free"``), trained with (authors' ``training.py``,
   ``train_IGP_gau``, and ``utils.py``, ``Flops_constraint_resnet``)

   .. math::

       \mathcal L = \lambda_e \, \mathrm{MSE}\big(m(\phi(x, y; f_z)), m(\phi(x, y; f))\big)
       + \lambda_M \log\frac{\max(r(z), p)}{p}
       + \lambda_{ce}\,\mathrm{CE}(f_z(x), y),

   :math:`\phi(\cdot; f)` the selector's RBF parameters read from the features
   of the classifier :math:`f`, :math:`m` the rendered RBF mask
   (:func:`~xprune.steered.rbf.rbf_mask`), :math:`f_z` the gated classifier,
   :math:`p = 1 - \rho` the kept fraction of the MACs (:math:`\rho` the wanted
   reduction), :math:`r(z)` the MACs fraction of the hard gates from the
   exact :class:`~xprune.steered.gates.MacsModel` (straight-through: the
   value of the deterministic hard gates, the gradient of the expectation). Defaults
   as the authors' ``resnet_igp.py``: :math:`\lambda_e = 10`,
   :math:`\lambda_M = 1`, :math:`\lambda_{ce} = 0`, AdamW (lr 1e-3, weight
   decay 1e-3). Options: ``explanation="params"`` (squared distance of the RBF
   parameters, :func:`explanation_distance`), ``resource="quadratic"``
   (:math:`(r - p)^2`, two-sided), ``macs_estimate`` (which MACs :math:`r` is).

Then :func:`prune` removes the units whose gate is closed (the raw hard
gates; ``calibrate=True`` instead ranks the gate logits to the exact MACs
target) and fine-tunes. docs/steered.md compares with the authors' code.

Reference: A. Ganjdanesh, S. Gao, H. Huang, "Interpretations Steered Network
Pruning via Amortized Inferred Saliency Maps", ECCV 2022.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import _inputs
from ..errors import DataError, XpruneError, XpruneWarning
from ..plan import Plan
from ..scores import Scores
from ..units import UnitSet, discover
from . import explainer as ex, rbf
from ._stage import StageCache, module_hash, run_stage, tensor_hash
from .config import SteeredConfig
from .gates import ChannelGates, GateGenerator, MacsModel, select_for_macs
from .generator import HyperGates

__all__ = [
    "SteeredConfig",
    "SteeredResult",
    "steer",
    "prune",
    "as_tensors",
    "make_gates",
    "explanation_masks",
    "resource_loss",
]


@dataclass
class SteeredResult:
    """What :func:`steer` learned.

    Attributes
    ----------
    predictor, selector : nn.Module
        Frozen, eval mode. ``selector(feats, labels)`` with ``feats`` read at
        ``layers`` of the classifier (:func:`~xprune.steered.explainer.features`).
    gates : GateGenerator
        The trained generator (:class:`~xprune.steered.generator.HyperGates` or
        :class:`~xprune.steered.gates.ChannelGates`), detached from any model.
    units : UnitSet
    macs : MacsModel
    layers : list of str
    reduction : float
        Wanted MACs reduction.
    stages : dict
        Per stage: ``seconds`` of training, ``steps``, ``cached``, final losses.
    """

    predictor: nn.Module
    selector: ex.Selector
    gates: GateGenerator
    units: UnitSet
    macs: MacsModel
    layers: list[str]
    reduction: float
    config: SteeredConfig
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def scores(self) -> Scores:
        """Gate logits as scores (higher = keep), usable with :func:`xprune.select`."""
        return self.gates.scores()

    @property
    def raw_macs_reduction(self) -> float:
        """Fraction of the MACs the raw hard gates remove (exact, :meth:`MacsModel.of_plan`)."""
        return 1 - self.macs.of_plan(self.gates.plan(0.0)) / self.macs.base

    def plan(self, calibrate: bool = False) -> Plan:
        """The pruning plan.

        ``calibrate=False`` (default): the units whose deterministic hard gate
        is closed, as the authors take the architecture from the generator.
        ``calibrate=True``: an optional last step, the gate logits ranked to
        the exact MACs target (:func:`select_for_macs`). Either way ``meta``
        holds ``macs_reduction`` (achieved), ``macs_target`` and
        ``raw_macs_reduction`` (the raw gates').
        """
        raw = self.raw_macs_reduction
        if not calibrate:
            plan = self.gates.plan(0.0)
            plan.meta["macs_reduction"] = raw
        else:
            plan = select_for_macs(self.scores(), self.macs, self.reduction)
        plan.meta.update(macs_target=self.reduction, raw_macs_reduction=raw, calibrated=bool(calibrate))
        return plan

    def explain(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Selector RBF parameters ``[N, 3]`` for ``model``.

        ``model`` is the original or a gated/masked copy with the same layers.
        """
        was = model.training
        model.eval()
        try:
            with torch.no_grad(), ex.features(model, self.layers) as store:
                out = model(x)
                cls = labels if self.config.target == "label" else out.argmax(-1)
                return self.selector([store[n] for n in self.layers], cls)
        finally:
            model.train(was)


def as_tensors(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` tensors from a Split, an ``(X, y)`` pair or an iterable of batches."""
    if hasattr(data, "X") and hasattr(data, "y"):
        return data.X, data.y
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data[0], torch.as_tensor(data[1])
    xs, ys = [], []
    for x, y in data:
        xs.append(torch.as_tensor(x))
        ys.append(torch.as_tensor(y))
    if not xs:
        raise DataError("the steered method needs training samples; got no batch")
    return torch.cat(xs), torch.cat(ys)


def _default_cache() -> Any:
    from ..models.cache import cache_dir

    return cache_dir()


def _to_logits(module, args, output):
    return _inputs.logits(output)


def _logits_only(model: nn.Module) -> nn.Module:
    """``model`` (a private copy) returning the logits tensor (Hugging Face models return an output object)."""
    model.register_forward_hook(_to_logits)
    return model


def steer(
    model: nn.Module,
    data: Any,
    reduction: float = 0.5,
    *,
    config: SteeredConfig | None = None,
    units: UnitSet | None = None,
    cache_dir: Any = "default",
    progress: bool = True,
    stop_after: dict[str, int] | None = None,
    **options: Any,
) -> SteeredResult:
    """Train the predictor, the selector and the gates of Interpretations Steered Pruning.

    Parameters
    ----------
    model : nn.Module
        A trained convolutional classifier; never modified.
    data : Split, (X, y) or iterable of (x, y) batches
        Training samples for all three stages (a few thousand suffice).
    reduction : float in [0, 1)
        Wanted fraction of the MACs removed (e.g. 0.5 halves them).
    config : SteeredConfig, optional
        All settings; or give them as keyword ``options``.
    units : UnitSet, optional
        Channel groups to gate (default: :func:`xprune.discover` on one sample).
    cache_dir : path, None or "default"
        Stage results and checkpoints go under ``<cache_dir>/steered``;
        ``"default"`` is :func:`xprune.models.cache_dir`, ``None`` disables caching.
    progress : bool
        Show a progress bar per stage.
    stop_after : dict, optional
        ``{stage: n}`` interrupts that stage after ``n`` steps (for tests of resumption).

    Returns
    -------
    SteeredResult
    """
    if config is None:
        config = SteeredConfig.from_options(**options)
    elif options:
        raise XpruneError("pass either config= or keyword options, not both")
    if not 0 <= reduction < 1:
        raise XpruneError(f"reduction must be in [0, 1), got {reduction!r}")
    cfg = config
    X, y = as_tensors(data)
    if X.dim() != 4:
        raise DataError(f"the steered method explains images [N, C, H, W]; got inputs of shape {tuple(X.shape)}")
    root = _default_cache() if cache_dir == "default" else cache_dir
    stop_after = stop_after or {}
    original = _logits_only(ex.frozen(copy.deepcopy(model)))
    with torch.no_grad():
        num_classes = int(original(X[:1]).shape[-1])
    layers = list(cfg.feature_layers or ex.feature_layers(original, X[:1]))
    base = {"model": module_hash(model), "data": tensor_hash(X, y), "seed": cfg.seed, "batch_size": cfg.batch_size}
    stages: dict[str, dict[str, Any]] = {}

    # 1. predictor
    predictor = copy.deepcopy(original)
    for p in predictor.parameters():
        p.requires_grad_(True)
    pc = StageCache(
        "predictor",
        {
            **base,
            "steps": cfg.predictor_steps,
            "lr": cfg.predictor_lr,
            "temperature": cfg.temperature,
            "width_range": cfg.width_range,
            "kl": cfg.kl,
        },
        root,
    )
    step = ex.predictor_step(
        original,
        predictor,
        X,
        y,
        batch_size=cfg.batch_size,
        temperature=cfg.temperature,
        width_range=cfg.width_range,
        kl=cfg.kl,
    )
    stages["predictor"] = run_stage(
        pc,
        predictor,
        step,
        steps=cfg.predictor_steps,
        lr=cfg.predictor_lr,
        seed=cfg.seed,
        progress=progress,
        checkpoint_every=cfg.checkpoint_every,
        stop_after=stop_after.get("predictor"),
    )
    ex.frozen(predictor)

    # 2. selector
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        selector = ex.Selector(ex.channels_of(original, layers, X), num_classes, cfg.selector_width, cfg.min_width)
    sc = StageCache(
        "selector",
        {
            **base,
            "predictor": pc.key,
            "layers": layers,
            "steps": cfg.selector_steps,
            "lr": cfg.selector_lr,
            "temperature": cfg.temperature,
            "sparsity": cfg.sparsity,
            "smoothness": cfg.smoothness,
            "width": cfg.selector_width,
            "min_width": cfg.min_width,
            "kl": cfg.kl,
            "target": cfg.target,
        },
        root,
    )
    step = ex.selector_step(
        original,
        predictor,
        selector,
        layers,
        X,
        y,
        batch_size=cfg.batch_size,
        temperature=cfg.temperature,
        sparsity=cfg.sparsity,
        smoothness=cfg.smoothness,
        kl=cfg.kl,
        target=cfg.target,
    )
    stages["selector"] = run_stage(
        sc,
        selector,
        step,
        steps=cfg.selector_steps,
        lr=cfg.selector_lr,
        seed=cfg.seed,
        progress=progress,
        checkpoint_every=cfg.checkpoint_every,
        stop_after=stop_after.get("selector"),
    )
    ex.frozen(selector)

    # 3. gates
    if units is None:
        units = discover(model, X[:1])
    macs = MacsModel(model, units, X[:1])
    gated = _logits_only(ex.frozen(copy.deepcopy(model)))
    gates = make_gates(units, cfg).attach(gated, like=model)
    gc = StageCache(
        "gates",
        {
            **base,
            "selector": sc.key,
            "reduction": reduction,
            "groups": units.names,
            "generator": cfg.generator,
            "steps": cfg.gate_steps,
            "lr": cfg.gate_lr,
            "optimizer": [cfg.gate_optimizer, cfg.gate_weight_decay],
            "base": cfg.gate_base,
            "init": cfg.gate_init,
            "init_noise": cfg.gate_init_noise,
            "temperature": cfg.gate_temperature,
            "hard": cfg.hard,
            "loss": [cfg.explanation, cfg.resource],
            "weights": [cfg.explanation_weight, cfg.macs_weight, cfg.ce_weight],
            "macs_estimate": cfg.macs_estimate,
        },
        root,
    )
    step = gate_step(gated, selector, layers, gates, macs, X, y, reduction=reduction, cfg=cfg)
    assert cfg.gate_lr is not None  # SteeredConfig.__post_init__ fills in the generator's default
    try:
        stages["gates"] = run_stage(
            gc,
            gates,
            step,
            steps=cfg.gate_steps,
            lr=cfg.gate_lr,
            seed=cfg.seed,
            progress=progress,
            checkpoint_every=cfg.checkpoint_every,
            stop_after=stop_after.get("gates"),
            optimizer=cfg.gate_optimizer,
            weight_decay=cfg.gate_weight_decay,
        )
    finally:
        gates.detach()
        gates.open()
    for p in gates.parameters():
        p.requires_grad_(False)
    result = SteeredResult(predictor, selector, gates, units, macs, layers, reduction, cfg, stages)
    stages["gates"]["raw_macs_reduction"] = result.raw_macs_reduction
    return result


def make_gates(units: UnitSet, cfg: SteeredConfig) -> GateGenerator:
    """The gate generator ``cfg.generator`` names, initialised with ``cfg.seed``."""
    if cfg.generator == "hypernet":
        return HyperGates(units, cfg.gate_temperature, cfg.gate_base, seed=cfg.seed)
    return ChannelGates(units, cfg.gate_init, cfg.gate_temperature, cfg.gate_init_noise, cfg.seed)


def explanation_distance(params: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    r"""Mean squared distance of RBF parameters in :math:`(c_x, c_y, \log\sigma)`.

    :math:`d = \frac1N \sum_n (c_x - c_x')^2 + (c_y - c_y')^2 + (\log\sigma - \log\sigma')^2`:
    centres in normalised image units, widths on a log scale (a mask twice as
    wide is as far as one half as wide, and a near-full-image width cannot
    dominate the loss).
    """
    a = torch.cat([params[:, :2], params[:, 2:].log()], dim=1)
    b = torch.cat([reference[:, :2], reference[:, 2:].log()], dim=1)
    return ((a - b) ** 2).sum(-1).mean()


def explanation_masks(params: torch.Tensor, reference: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """MSE between the rendered RBF masks of ``params`` and ``reference`` (``[N, 3]``) on an image of ``size``.

    The authors' interpretation term (``training.py``, ``train_IGP_gau``:
    ``MSELoss`` of the gated network's predicted masks against the original's).
    """
    return F.mse_loss(rbf.rbf_mask(params, size), rbf.rbf_mask(reference, size))


def resource_loss(fraction: torch.Tensor, kept: float, kind: str = "log") -> torch.Tensor:
    r"""The MACs term: :math:`\log(\max(r, p)/p)` (``"log"``, authors' ``Flops_constraint_resnet``) or
    :math:`(r - p)^2` (``"quadratic"``)."""
    if kind == "log":
        return torch.log(torch.clamp(fraction, min=kept) / kept)
    return (fraction - kept) ** 2


def gate_step(
    gated: nn.Module,
    selector: ex.Selector,
    layers,
    gates: GateGenerator,
    macs: MacsModel,
    X,
    y,
    *,
    reduction: float,
    cfg: SteeredConfig,
):
    """The gate loss of the module docs; returns ``step_fn`` for ``run_stage``."""
    kept = 1.0 - reduction
    size = tuple(X.shape[-2:])

    def step(gen: torch.Generator, i: int):
        x, labels = ex.sample_batch(X, y, cfg.batch_size, gen)
        gates.open()
        with torch.no_grad(), ex.features(gated, layers) as store:
            ref_logits = gated(x)
            cls = labels if cfg.target == "label" else ref_logits.argmax(-1)
            ref = selector([store[n] for n in layers], cls)
        gates.sample(len(x), gen, cfg.hard)
        with ex.features(gated, layers) as store:
            logits = gated(x)
            params = selector([store[n] for n in layers], cls)
        gates.open()
        expl = explanation_masks(params, ref, size) if cfg.explanation == "masks" else explanation_distance(params, ref)
        if cfg.macs_estimate == "sample":
            frac = macs.sampled(gates, gen) / macs.base
        else:
            frac = macs.expected(gates, straight_through=cfg.macs_estimate == "straight-through") / macs.base
        res = resource_loss(frac, kept, cfg.resource)
        loss = cfg.explanation_weight * expl + cfg.macs_weight * res
        logs = {"expl": expl.detach(), "macs": frac.detach(), "resource": res.detach()}
        if cfg.ce_weight:
            ce = F.cross_entropy(logits, labels)
            loss = loss + cfg.ce_weight * ce
            logs["ce"] = ce.detach()
        return loss, logs

    return step


def prune(
    model: nn.Module,
    data: Any,
    reduction: float = 0.5,
    *,
    fine_tune_steps: int = 100,
    fine_tune_lr: float = 1e-3,
    calibrate: bool = False,
    result: SteeredResult | None = None,
    progress: bool = True,
    seed: int = 0,
    miss_tolerance: float = 0.05,
    **steer_options: Any,
) -> tuple[nn.Module, Plan, SteeredResult]:
    """Steer, remove the closed-gate units physically, fine-tune.

    ``calibrate=False`` (default) removes exactly the closed hard gates;
    ``True`` ranks the units by gate logit and removes them until the exact
    MACs reach ``(1 - reduction) M0``. When the raw gates remove a fraction of
    the MACs more than ``miss_tolerance`` away from ``reduction`` an
    :class:`xprune.errors.XpruneWarning` says so (``plan.meta`` holds
    ``raw_macs_reduction`` and ``macs_target``). Fine-tuning:
    :func:`xprune.models.fine_tune` (Adam, ``fine_tune_steps`` steps at
    ``fine_tune_lr``) on ``data``. Returns ``(pruned_model, plan, result)``.
    """
    from ..models import fine_tune
    from ..surgery import apply

    if result is None:
        result = steer(model, data, reduction, progress=progress, **steer_options)
    plan = result.plan(calibrate)
    raw = plan.meta["raw_macs_reduction"]
    if abs(raw - result.reduction) > miss_tolerance:
        then = "calibrate=True removed exactly the target" if calibrate else "pass calibrate=True to hit it exactly"
        warnings.warn(
            f"the raw steered gates remove {raw:.1%} of the MACs, target {result.reduction:.1%} "
            f"(more than {miss_tolerance:.0%} off); {then}, or train the gates longer (gate_steps)",
            XpruneWarning,
            stacklevel=2,
        )
    pruned = apply(model, plan, "remove")
    if fine_tune_steps:
        X, y = as_tensors(data)
        fine_tune(pruned, (X, y), steps=fine_tune_steps, lr=fine_tune_lr, seed=seed, progress=progress)
    pruned.eval()
    return pruned, plan, result
