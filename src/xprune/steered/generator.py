r"""The architecture generator of Interpretations Steered Pruning: a hypernetwork (``generator="hypernet"``).

Ganjdanesh, Gao, Huang (ECCV 2022) do not learn one free logit per channel:
in their code (repository ``Alii-Ganjj/InterpretationsSteeredPruning``,
commit 96e5be3c, ``Models/hypernet.py``, class ``HyperStructure``; the
pruning script loads its checkpoint into ``HyperStructure(T=0.4, base=3.0)``)
the gate logits of all :math:`L` gated layers come from one small network:

1. fixed inputs :math:`e \in \mathbb R^{L \times 1 \times 64}`, initialised
   orthogonally and never trained;
2. a bidirectional GRU, 64 inputs, 128 hidden units per direction, zero
   initial state: :math:`h_l \in \mathbb R^{256}` per layer, so each layer's
   gates see every other layer;
3. one shared LayerNorm(256) and a ReLU;
4. one head per layer, a weight-normalised linear map without bias,
   :math:`\ell_l = W_l\,\operatorname{ReLU}(\operatorname{LN}(h_l)) \in \mathbb R^{C_l}`;
5. gates :math:`z = \operatorname{sigmoid}((\ell + g + b)/\tau)`,
   :math:`g \sim \operatorname{Gumbel}(0, 1)` (:math:`-\log(-\log U)`),
   :math:`b = 3`, :math:`\tau = 0.4`; one sample per training batch, shared by
   its images; the FLOPs term reads a fresh straight-through hard sample
   (``resource_output()``).

At evaluation the authors threshold a noisy sample at 1/2; xprune's
evaluation gates are deterministic, :math:`\mathbb 1[\ell + b > 0]`
(:meth:`~xprune.steered.gates.GateGenerator.set_hard`,
:meth:`~xprune.steered.gates.GateGenerator.plan`), so the kept channels do not
depend on a draw. Sampling, straight-through, attaching and plans are those of
:class:`~xprune.steered.gates.GateGenerator`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ..units import UnitSet
from .gates import GateGenerator

__all__ = ["HyperGates"]


class HyperGates(GateGenerator):
    """Gate logits from a bidirectional-GRU hypernetwork (see the module docs).

    Parameters
    ----------
    units : UnitSet
        Channel groups (kind ``"channels"``); the groups of two or more units are gated.
    temperature : float, default 0.4
        :math:`\\tau` (authors' ``T``).
    base : float, default 3.0
        :math:`b` (authors' ``base``), added to the generated logits.
    embedding : int, default 64
        Size of each layer's fixed input.
    hidden : int, default 128
        GRU units per direction.
    seed : int, default 0
        Seeds the initialisation.

    Attributes
    ----------
    inputs : nn.Parameter ``[L, 1, embedding]``
        The fixed inputs (``requires_grad=False``).
    gru : nn.GRU
    norm : nn.LayerNorm
    heads : nn.ModuleList
        One weight-normalised ``Linear(2 * hidden, C_l, bias=False)`` per gated group.
    """

    def __init__(
        self,
        units: UnitSet,
        temperature: float = 0.4,
        base: float = 3.0,
        embedding: int = 64,
        hidden: int = 128,
        seed: int = 0,
    ):
        super().__init__(units, temperature, base, noise="gumbel", per_sample=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.inputs = nn.Parameter(torch.empty(len(self.names), 1, int(embedding)), requires_grad=False)
            nn.init.orthogonal_(self.inputs)
            self.gru = nn.GRU(int(embedding), int(hidden), bidirectional=True)
            self.norm = nn.LayerNorm(2 * int(hidden))
            self.heads = nn.ModuleList(
                weight_norm(nn.Linear(2 * int(hidden), units[n].size, bias=False)) for n in self.names
            )

    def features(self) -> torch.Tensor:
        """``ReLU(LayerNorm(GRU(inputs)))``, ``[L, 2 * hidden]`` (zero initial state)."""
        out, _ = self.gru(self.inputs)
        return F.relu(self.norm(out[:, 0]))

    def raw_logits(self) -> list[torch.Tensor]:
        """:math:`\\ell_l`, one ``[C_l]`` tensor per gated group."""
        h = self.features()
        return [head(h[i]) for i, head in enumerate(self.heads)]
