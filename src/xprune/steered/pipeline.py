r"""The whole Interpretations Steered Pruning method: :func:`steer` and :func:`prune`.

Stages (each cached and resumable, see :mod:`xprune.steered._stage`):

1. **predictor** -- :func:`~xprune.steered.explainer.train_predictor` loss;
2. **selector** -- the amortised explainer (:class:`~xprune.steered.explainer.Selector`);
3. **gates** -- :class:`~xprune.steered.gates.ChannelGates` on a frozen copy
   of the classifier, trained with

   .. math::

       \mathcal L = \lambda_e \, d\big(\phi(x, y; f_z), \phi(x, y; f)\big)
       + \lambda_M \Big(\frac{\mathbb E[\mathrm{MACs}(z)]}{M_0} - (1 - \rho)\Big)^2
       + \lambda_{ce}\,\mathrm{CE}(f_z(x), y),

   :math:`\phi(\cdot; f)` the selector's RBF parameters (centre x, y, width)
   read from the features of the classifier :math:`f`, :math:`f_z` the gated
   classifier, :math:`d` the squared distance of :func:`explanation_distance`
   (centres, and widths on a log scale), :math:`\rho` the wanted reduction of the MACs, the expected
   MACs from :class:`~xprune.steered.gates.MacsModel` (exact in expectation;
   by default, ``macs_estimate="straight-through"``, the value is the MACs of
   the deterministic hard gates and the gradient that of the expectation).
   This is the paper's objective (MSE between the mask parameters of the
   gated and of the original model, plus a FLOPs term, cross-entropy
   optional) with widths compared on a log scale and a two-sided quadratic
   MACs term. Gate logits start at ``gate_init`` plus Gaussian noise
   (``gate_init_noise``), which breaks ties between gates.

Then :func:`prune` removes the units whose gate is closed (threshold 0, or
calibrated to the exact MACs target) and fine-tunes.

Reference: A. Ganjdanesh, S. Gao, H. Huang, "Interpretations Steered Network
Pruning via Amortized Inferred Saliency Maps", ECCV 2022.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import _inputs
from ..errors import DataError, XpruneError
from ..scores import Scores
from ..plan import Plan
from ..units import UnitSet, discover
from . import explainer as ex
from ._stage import StageCache, module_hash, run_stage, tensor_hash
from .gates import ChannelGates, MacsModel, select_for_macs

__all__ = ["SteeredConfig", "SteeredResult", "steer", "prune", "as_tensors"]


@dataclass
class SteeredConfig:
    """Every setting of the steered pipeline (the defaults run in about a minute on 2 CPU cores for ResNet-8/MNIST).

    Attributes
    ----------
    batch_size : int, 32
    seed : int, 0
        Seeds every stage's batches and noise.
    target : "label" or "predicted", "label"
        The class the selector explains (the same for the gated and the original model).
    feature_layers : tuple of str, optional
        Encoder taps of the selector (default :func:`~xprune.steered.explainer.feature_layers`).
    predictor_steps, predictor_lr : 150, 1e-3
    temperature : float, 0.5
        Relaxed-Bernoulli temperature of the mask samples.
    width_range : (float, float), (0.1, 1.0)
        Widths of the predictor's random masks (log-uniform, normalised units).
    kl : "forward" or "reverse", "forward"
        ``KL(p_f(x) || p_g(x*s))`` or the reverse.
    selector_steps, selector_lr : 200, 3e-3
    sparsity : float, 1.0
        :math:`\\lambda_1`, weight of the mean of the mask sample.
    smoothness : float, 1.0
        :math:`\\lambda_2`, weight of its total variation.
    selector_width : int, 16
        Decoder channels.
    min_width : float, 0.05
        Lower bound of the mask width.
    gate_steps, gate_lr : 150, 0.1
    gate_init : float, 3.0
        Initial gate logit.
    gate_init_noise : float, 0.5
        Standard deviation of the initial logits around ``gate_init`` (breaks ties).
    gate_temperature : float, 0.5
    hard : bool, True
        Straight-through hard gates in training.
    explanation_weight : float, 1.0
        :math:`\\lambda_e`.
    macs_weight : float, 20.0
        :math:`\\lambda_M`.
    ce_weight : float, 0.0
        :math:`\\lambda_{ce}` (optional cross-entropy).
    macs_estimate : "straight-through" or "expected", "straight-through"
        MACs in the MACs term: the exact expectation under the gate
        probabilities (``"expected"``), or the MACs of the deterministic hard
        gates with the expectation's gradient (``"straight-through"``), which
        lands the *evaluated* gates on the target even when some logits stay
        near 0 (where the expectation and the hard gates differ most).
    checkpoint_every : int, 50
        Steps between resumable checkpoints.
    """

    batch_size: int = 32
    seed: int = 0
    target: str = "label"
    feature_layers: tuple[str, ...] | None = None
    predictor_steps: int = 150
    predictor_lr: float = 1e-3
    temperature: float = 0.5
    width_range: tuple[float, float] = (0.1, 1.0)
    kl: str = "forward"
    selector_steps: int = 200
    selector_lr: float = 3e-3
    sparsity: float = 1.0
    smoothness: float = 1.0
    selector_width: int = 16
    min_width: float = 0.05
    gate_steps: int = 150
    gate_lr: float = 0.1
    gate_init: float = 3.0
    gate_init_noise: float = 0.5
    gate_temperature: float = 0.5
    hard: bool = True
    explanation_weight: float = 1.0
    macs_weight: float = 20.0
    ce_weight: float = 0.0
    macs_estimate: str = "straight-through"
    checkpoint_every: int = 50

    def __post_init__(self):
        if self.target not in ("label", "predicted"):
            raise XpruneError(f"target must be 'label' or 'predicted' for the steered method, got {self.target!r}")
        if self.macs_estimate not in ("straight-through", "expected"):
            raise XpruneError(f"macs_estimate must be 'straight-through' or 'expected', got {self.macs_estimate!r}")
        if self.kl not in ("forward", "reverse"):
            raise XpruneError(f"kl must be 'forward' or 'reverse', got {self.kl!r}")
        for name in ("predictor_steps", "selector_steps", "gate_steps", "batch_size"):
            if int(getattr(self, name)) < 0 or (name == "batch_size" and self.batch_size < 1):
                raise XpruneError(f"{name} must be a non-negative int, got {getattr(self, name)!r}")
        if self.feature_layers is not None:
            self.feature_layers = tuple(self.feature_layers)
        self.width_range = tuple(self.width_range)

    @classmethod
    def from_options(cls, **options: Any) -> "SteeredConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise XpruneError(f"unknown steered options {unknown}; known: {sorted(known)}")
        return cls(**options)


@dataclass
class SteeredResult:
    """What :func:`steer` learned.

    Attributes
    ----------
    predictor, selector : nn.Module
        Frozen, eval mode. ``selector(feats, labels)`` with ``feats`` read at
        ``layers`` of the classifier (:func:`~xprune.steered.explainer.features`).
    gates : ChannelGates
        Trained gates (detached from any model).
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
    gates: ChannelGates
    units: UnitSet
    macs: MacsModel
    layers: list[str]
    reduction: float
    config: SteeredConfig
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def scores(self) -> Scores:
        """Gate logits as scores (higher = keep), usable with :func:`xprune.select`."""
        return self.gates.scores()

    def plan(self, calibrate: bool = True) -> Plan:
        """The pruning plan: closed gates (``calibrate=False``), or gate logits ranked to the exact MACs target."""
        if not calibrate:
            plan = self.gates.plan(0.0)
            plan.meta["macs_reduction"] = 1 - self.macs.of_plan(plan) / self.macs.base
            return plan
        return select_for_macs(self.scores(), self.macs, self.reduction)

    def explain(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Selector RBF parameters ``[N, 3]`` for ``model`` (the original or a gated/masked copy with the same layers)."""
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
    pc = StageCache("predictor", {**base, "steps": cfg.predictor_steps, "lr": cfg.predictor_lr,
                                  "temperature": cfg.temperature, "width_range": cfg.width_range, "kl": cfg.kl},
                    root)
    step = ex.predictor_step(original, predictor, X, y, batch_size=cfg.batch_size, temperature=cfg.temperature,
                             width_range=cfg.width_range, kl=cfg.kl)
    stages["predictor"] = run_stage(pc, predictor, step, steps=cfg.predictor_steps, lr=cfg.predictor_lr,
                                    seed=cfg.seed, progress=progress, checkpoint_every=cfg.checkpoint_every,
                                    stop_after=stop_after.get("predictor"))
    ex.frozen(predictor)

    # 2. selector
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        selector = ex.Selector(ex.channels_of(original, layers, X), num_classes, cfg.selector_width, cfg.min_width)
    sc = StageCache("selector", {**base, "predictor": pc.key, "layers": layers, "steps": cfg.selector_steps,
                                 "lr": cfg.selector_lr, "temperature": cfg.temperature, "sparsity": cfg.sparsity,
                                 "smoothness": cfg.smoothness, "width": cfg.selector_width,
                                 "min_width": cfg.min_width, "kl": cfg.kl, "target": cfg.target}, root)
    step = ex.selector_step(original, predictor, selector, layers, X, y, batch_size=cfg.batch_size,
                            temperature=cfg.temperature, sparsity=cfg.sparsity, smoothness=cfg.smoothness,
                            kl=cfg.kl, target=cfg.target)
    stages["selector"] = run_stage(sc, selector, step, steps=cfg.selector_steps, lr=cfg.selector_lr, seed=cfg.seed,
                                   progress=progress, checkpoint_every=cfg.checkpoint_every,
                                   stop_after=stop_after.get("selector"))
    ex.frozen(selector)

    # 3. gates
    if units is None:
        units = discover(model, X[:1])
    macs = MacsModel(model, units, X[:1])
    gated = _logits_only(ex.frozen(copy.deepcopy(model)))
    gates = ChannelGates(units, cfg.gate_init, cfg.gate_temperature, cfg.gate_init_noise, cfg.seed).attach(gated, like=model)
    gc = StageCache("gates", {**base, "selector": sc.key, "reduction": reduction, "groups": units.names,
                              "steps": cfg.gate_steps, "lr": cfg.gate_lr, "init": cfg.gate_init, "init_noise": cfg.gate_init_noise,
                              "temperature": cfg.gate_temperature, "hard": cfg.hard,
                              "weights": [cfg.explanation_weight, cfg.macs_weight, cfg.ce_weight],
                              "macs_estimate": cfg.macs_estimate}, root)
    step = gate_step(gated, selector, layers, gates, macs, X, y, reduction=reduction, cfg=cfg)
    try:
        stages["gates"] = run_stage(gc, gates, step, steps=cfg.gate_steps, lr=cfg.gate_lr, seed=cfg.seed,
                                    progress=progress, checkpoint_every=cfg.checkpoint_every,
                                    stop_after=stop_after.get("gates"))
    finally:
        gates.detach()
        gates.open()
    for p in gates.parameters():
        p.requires_grad_(False)
    return SteeredResult(predictor, selector, gates, units, macs, layers, reduction, cfg, stages)


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


def gate_step(gated: nn.Module, selector: ex.Selector, layers, gates: ChannelGates, macs: MacsModel, X, y, *,
              reduction: float, cfg: SteeredConfig):
    """The gate loss of the module docs; returns ``step_fn`` for ``run_stage``."""
    target_fraction = 1.0 - reduction

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
        expl = explanation_distance(params, ref)
        frac = macs.expected(gates, straight_through=cfg.macs_estimate == "straight-through") / macs.base
        macs_term = (frac - target_fraction) ** 2
        loss = cfg.explanation_weight * expl + cfg.macs_weight * macs_term
        logs = {"expl": expl.detach(), "macs": frac.detach()}
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
    calibrate: bool = True,
    result: SteeredResult | None = None,
    progress: bool = True,
    seed: int = 0,
    **steer_options: Any,
) -> tuple[nn.Module, Plan, SteeredResult]:
    """Steer, remove the closed-gate units physically, fine-tune.

    ``calibrate=True`` ranks the units by gate logit and removes them until the
    exact MACs reach ``(1 - reduction) M0``; ``False`` removes exactly the
    closed gates. Fine-tuning: :func:`xprune.models.fine_tune` (Adam,
    ``fine_tune_steps`` steps at ``fine_tune_lr``) on ``data``. Returns
    ``(pruned_model, plan, result)``.
    """
    from ..models import fine_tune
    from ..surgery import apply

    if result is None:
        result = steer(model, data, reduction, progress=progress, **steer_options)
    plan = result.plan(calibrate)
    pruned = apply(model, plan, "remove")
    if fine_tune_steps:
        X, y = as_tensors(data)
        fine_tune(pruned, (X, y), steps=fine_tune_steps, lr=fine_tune_lr, seed=seed, progress=progress)
    pruned.eval()
    return pruned, plan, result

