"""The benchmark suite behind ``xprune bench`` and ``docs/results.md``.

Each named scenario (``toy``, ``transfer``, ``resnet``, ``vit``, ``minilm``, ``perf``,
``heatmaps``; one module each) runs one experiment and writes ``<name>.json``, ``<name>.md``
and plots into an output folder. :func:`run` runs scenarios with a progress display;
:func:`results_page` turns an output folder into the results page. What each scenario
measures: ``docs/bench.md``.
"""

from __future__ import annotations

from ._common import (
    _TUNE, ROOT, Context, Spec, _auc_ranking, _commit, _curves, _first, _fmt, _include, _mean_std, _record, _script,
    _specs, _tuned_lrp,
)
from ._guide import GUIDE, _guide
from ._heatmaps import _enlarge, heatmaps
from ._minilm import minilm
from ._page import _guarantee_from_readme, results_page
from ._perf import _fwd_bwd, _median_time, _spearman, _tp_taylor, _zennit_cost, perf
from ._resnet import _plot_bars, resnet
from ._runner import QUICK, SCENARIOS, estimate, run
from ._toy import TOY_N, TOY_N_QUICK, TOY_SETS, _plot_toy, _toy_steps, _toy_write, toy
from ._transfer import transfer_task
from ._vit import _VIT_SPECS, vit

__all__ = [
    "GUIDE", "QUICK", "ROOT", "SCENARIOS", "TOY_N", "TOY_N_QUICK", "TOY_SETS", "Context", "Spec", "estimate",
    "heatmaps", "minilm", "perf", "resnet", "results_page", "run", "toy", "transfer_task", "vit",
]
