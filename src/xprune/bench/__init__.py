"""The benchmark suite behind ``xprune bench`` and ``docs/results.md``.

Each named scenario (``toy``, ``transfer``, ``resnet``, ``vit``, ``minilm``, ``perf``,
``heatmaps``; one module each) runs one experiment and writes ``<name>.json``, ``<name>.md``
and plots into an output folder. :func:`run` runs scenarios with a progress display;
:func:`results_page` turns an output folder into the results page. What each scenario
measures: ``docs/bench.md``.
"""

from __future__ import annotations

from ._common import ROOT, Context, Spec
from ._guide import GUIDE
from ._heatmaps import heatmaps
from ._minilm import minilm
from ._page import results_page
from ._perf import perf
from ._resnet import resnet
from ._runner import QUICK, SCENARIOS, estimate, run
from ._toy import TOY_N, TOY_N_QUICK, TOY_SETS, toy
from ._transfer import transfer_task
from ._vit import vit

__all__ = [
    "GUIDE",
    "QUICK",
    "ROOT",
    "SCENARIOS",
    "TOY_N",
    "TOY_N_QUICK",
    "TOY_SETS",
    "Context",
    "Spec",
    "estimate",
    "heatmaps",
    "minilm",
    "perf",
    "resnet",
    "results_page",
    "run",
    "toy",
    "transfer_task",
    "vit",
]
