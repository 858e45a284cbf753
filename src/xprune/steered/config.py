"""The settings of Interpretations Steered Pruning: :class:`SteeredConfig` (see :mod:`xprune.steered.pipeline`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..errors import XpruneError

__all__ = ["SteeredConfig"]


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
    generator : "hypernet" or "free", "hypernet"
        The authors' hypernetwork (:class:`~xprune.steered.generator.HyperGates`)
        or one free logit per channel (:class:`~xprune.steered.gates.ChannelGates`,
        the authors' ``Simplified_Gate``).
    gate_steps : int, 150
        The authors train 200 epochs of CIFAR-10 (about 78,000 steps of 128);
        150 steps of 32 fit a CPU minute on ResNet-8/MNIST.
    gate_lr : float, optional
        Default 1e-3 for the hypernetwork (authors), 0.03 for the free gates
        (free logits at 1e-3 would move by at most 0.15 in 150 steps; at 0.1
        the one-sided MACs term lets them overshoot, docs/steered.md).
    gate_optimizer : "adamw" or "adam", "adamw"
    gate_weight_decay : float, 1e-3
    gate_base : float, 3.0
        :math:`b` added to the hypernetwork's logits (authors' ``base``).
    gate_init : float, 3.0
        Initial logit of the free gates.
    gate_init_noise : float, 0.5
        Standard deviation of the free gates' initial logits around ``gate_init`` (breaks ties).
    gate_temperature : float, 0.4
        :math:`\\tau` (authors' ``T``).
    hard : bool, True
        Straight-through hard gates in training (the authors' gates are soft
        in training; the hard straight-through forward makes the trained
        network the one that will be pruned).
    explanation : "masks" or "params", "masks"
        MSE between the rendered RBF masks of the gated and the original
        model (authors), or the squared distance of the RBF parameters
        (:func:`explanation_distance`).
    explanation_weight : float, 10.0
        :math:`\\lambda_e` (authors' ``mse_w``).
    resource : "log" or "quadratic", "log"
        :math:`\\log(\\max(r, p)/p)` (authors' ``loss='log'``, zero once the MACs
        are at or below the target) or :math:`(r - p)^2`.
    macs_weight : float, 1.0
        :math:`\\lambda_M` (authors' ``reg_w``).
    ce_weight : float, 0.0
        :math:`\\lambda_{ce}` (authors' ``c_loss=False``: off).
    macs_estimate : "straight-through", "sample" or "expected", "straight-through"
        :math:`r`: the MACs of the deterministic hard gates (what will be
        removed) with the gradient of their expectation; of a fresh
        straight-through hard sample (the authors' ``resource_output()``,
        whose evaluation gates are a noisy sample too; with xprune's
        deterministic evaluation gates it overshoots the target in 150 steps,
        see docs/steered.md); or the exact expectation.
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
    generator: str = "hypernet"
    gate_steps: int = 150
    gate_lr: float | None = None
    gate_optimizer: str = "adamw"
    gate_weight_decay: float = 1e-3
    gate_base: float = 3.0
    gate_init: float = 3.0
    gate_init_noise: float = 0.5
    gate_temperature: float = 0.4
    hard: bool = True
    explanation: str = "masks"
    explanation_weight: float = 10.0
    resource: str = "log"
    macs_weight: float = 1.0
    ce_weight: float = 0.0
    macs_estimate: str = "straight-through"
    checkpoint_every: int = 50

    def __post_init__(self):
        if self.target not in ("label", "predicted"):
            raise XpruneError(f"target must be 'label' or 'predicted' for the steered method, got {self.target!r}")
        choices = {
            "macs_estimate": ("sample", "straight-through", "expected"),
            "generator": ("hypernet", "free"),
            "explanation": ("masks", "params"),
            "resource": ("log", "quadratic"),
            "gate_optimizer": ("adamw", "adam"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise XpruneError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.gate_lr is None:
            self.gate_lr = 1e-3 if self.generator == "hypernet" else 0.03
        if self.kl not in ("forward", "reverse"):
            raise XpruneError(f"kl must be 'forward' or 'reverse', got {self.kl!r}")
        for name in ("predictor_steps", "selector_steps", "gate_steps", "batch_size"):
            if int(getattr(self, name)) < 0 or (name == "batch_size" and self.batch_size < 1):
                raise XpruneError(f"{name} must be a non-negative int, got {getattr(self, name)!r}")
        if self.feature_layers is not None:
            self.feature_layers = tuple(self.feature_layers)
        self.width_range = tuple(self.width_range)

    @classmethod
    def from_options(cls, **options: Any) -> SteeredConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise XpruneError(f"unknown steered options {unknown}; known: {sorted(known)}")
        return cls(**options)
