"""The result of :func:`xprune.guarantee.choose_rate`: :class:`RateChoice`, the chosen rate and its evidence.

See docs/guarantee.md for what the guarantee it reports says.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any

from .calibration import calibration_size
from .stats import clopper_pearson_upper

__all__ = ["RateChoice"]


@dataclass
class RateChoice:
    """The rate :func:`choose_rate` picked, and the evidence for it.

    Attributes
    ----------
    rate : float
        Chosen pruning rate (fraction of units removed); 0.0 when no positive
        rate could be certified.
    max_drop, confidence, method :
        The requested guarantee and the procedure (``"ltt"`` or ``"crc"``).
    n_calibration : int
        Number of calibration samples.
    rates : list of float
        Candidate rates, increasing (0.0 always included).
    accuracies : list of float
        Calibration accuracy of the pruned model at each rate (``accuracies[0]``
        is the unpruned model's).
    flips : list of int
        Calibration samples right before pruning and wrong after, per rate
        (:math:`S(\\lambda)`); ``flips / n_calibration`` is the observed flip rate,
        at least the observed accuracy drop.
    removed : list of int
        Units removed at each rate.
    p_values : list of float or None
        LTT: binomial p-value of :math:`H: R(\\lambda) > \\text{max\\_drop}` per rate
        (0 for rates that remove nothing). The sequence stops at the first
        p-value above ``1 - confidence``; later ones are shown, not used.
    crc_risk : list of float or None
        CRC: :math:`(\\tilde S(\\lambda) + 1) / (n + 1)` per rate (monotone envelope).
    criterion, scope, units : str
        How the units were ranked.
    """

    rate: float
    max_drop: float
    confidence: float
    method: str
    n_calibration: int
    rates: list[float]
    accuracies: list[float]
    flips: list[int]
    removed: list[int]
    p_values: list[float] | None = None
    crc_risk: list[float] | None = None
    criterion: str = ""
    scope: str = "global"
    units: str = "channels"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def index(self) -> int:
        """Position of the chosen rate in :attr:`rates`."""
        return self.rates.index(self.rate)

    @property
    def base_accuracy(self) -> float:
        """Calibration accuracy of the unpruned model."""
        return self.accuracies[0]

    @property
    def drops(self) -> list[float]:
        """Observed calibration accuracy drop at each rate (may be negative)."""
        return [self.base_accuracy - a for a in self.accuracies]

    @property
    def drop(self) -> float:
        """Observed calibration accuracy drop at the chosen rate."""
        return self.drops[self.index]

    @functools.cached_property
    def ucb(self) -> list[float]:
        """Upper confidence bounds on the flip risk :math:`R(\\lambda)` at every rate, simultaneous over the grid.

        Clopper-Pearson at level :math:`1 - \\delta / m` for the :math:`m` rates
        that remove something (Bonferroni; rates removing nothing have risk 0),
        so that they remain valid at a rate chosen from the data.
        """
        m = max(1, sum(v > 0 for v in self.removed))
        level = 1 - (1 - self.confidence) / m
        return [
            0.0 if rm == 0 else clopper_pearson_upper(k, self.n_calibration, level)
            for k, rm in zip(self.flips, self.removed, strict=True)
        ]

    @property
    def bound(self) -> float:
        """Upper confidence bound (level ``confidence``, simultaneous over the grid) on the flip risk at the chosen
        rate.

        It bounds the expected accuracy drop there. It is a separate statement
        from the certificate ``drop <= max_drop`` (each holds with probability
        at least ``confidence``; both together with at least ``1 - 2 delta``),
        and may lie above ``max_drop``: Bonferroni over the grid is looser than
        the fixed-sequence test that chose the rate.
        """
        return self.ucb[self.index]

    @property
    def certified(self) -> bool:
        """Whether a rate that removes something was certified."""
        return self.removed[self.index] > 0

    def needed_calibration(self, tightness: float | None = None) -> int:
        """Calibration samples needed to certify a rate with observed flip rate ``max_drop - tightness``.

        See :func:`calibration_size`; ``None`` asks for zero observed flips.
        """
        return calibration_size(self.max_drop, self.confidence, tightness)

    def explain(self) -> str:
        """What was chosen, what the guarantee says, and what it does not."""

        def pct(v: float) -> str:
            return f"{100 * v:.2f}".rstrip("0").rstrip(".") + "%"

        n, i = self.n_calibration, self.index
        delta = 1 - self.confidence
        total = self.meta.get("total")
        head = (
            f"Chosen pruning rate: {100 * self.rate:g}% of the {self.units}"
            + (f" ({self.removed[i]} of {total} removed)" if total else "")
            + f", ranked by {self.criterion or 'the given scores'} ({self.scope} ranking)."
        )
        lines = [head]
        if self.method == "ltt":
            lines.append(
                f"Guarantee (Learn-then-Test, fixed-sequence exact binomial tests over {len(self.rates)} "
                f"rates in increasing order, {n} calibration samples): with probability at least "
                f"{pct(self.confidence)} over the draw of the calibration set, the expected accuracy of the "
                f"pruned model on the deployment distribution is at most {pct(self.max_drop)} below that of the "
                "unpruned model. Precisely, it bounds the probability that pruning breaks a sample the unpruned "
                "model gets right (the flip risk), which is at least the accuracy drop."
            )
        else:
            lines.append(
                f"Guarantee (conformal risk control on the monotone flip loss, {n} calibration samples): "
                f"averaged over calibration draws, the expected accuracy drop of the pruned model on the "
                f"deployment distribution is at most {pct(self.max_drop)}. This is an average, not a "
                f"high-probability statement; confidence {pct(self.confidence)} only sets the reported bound."
            )
        lines.append(
            f"On the calibration set: accuracy {pct(self.base_accuracy)} unpruned, {pct(self.accuracies[i])} "
            f"pruned (drop {pct(self.drop)}; {self.flips[i]} of {n} samples broken by pruning). "
            f"Upper {pct(self.confidence)} bound on the flip risk at this rate, simultaneous over the grid: "
            f"{pct(self.bound)}."
        )
        if not self.certified:
            need = self.needed_calibration()
            lines.append(
                "No rate that removes anything could be certified, so nothing is pruned. "
                + (
                    f"With {n} calibration samples even zero broken samples cannot certify a "
                    f"{pct(self.max_drop)} drop at {pct(self.confidence)}: that needs at least {need} samples "
                    f"(calibration_size). "
                    if n < need
                    else "The first rate tested already broke too many samples. "
                )
                + "Use more calibration data, a larger max_drop or a lower confidence."
            )
        elif i + 1 < len(self.rates):
            nxt = self.rates[i + 1]
            if self.p_values is not None:
                why = f"p-value {self.p_values[i + 1]:.3g} > {delta:.3g}"
            else:
                assert self.crc_risk is not None  # the result of one of the two methods
                why = f"adjusted risk {self.crc_risk[i + 1]:.3g} > {self.max_drop:.3g}"
            lines.append(
                f"The next rate, {100 * nxt:g}%, was not certified ({self.flips[i + 1]} broken samples, {why})."
            )
        half = self.max_drop / 2
        lines.append(
            f"Tightness: certifying a rate whose observed flip rate is {pct(self.max_drop - half)} "
            f"(half of the allowed drop) needs about {self.needed_calibration(half)} calibration samples."
        )
        lines.append(
            "What it does not mean: (1) it is not a bound on the drop measured on any particular finite test "
            "set, which fluctuates around the expected drop; (2) "
            + (
                f"up to {pct(delta)} of calibration draws can give a rate whose expected drop exceeds "
                f"{pct(self.max_drop)}; (3) "
                if self.method == "ltt"
                else ""
            )
            + "it assumes calibration and deployment samples are independent draws from the same distribution "
            "(no shift) and that the calibration set was not used to train the model, to compute the scores or to "
            "pick settings (criterion, grid, max_drop) after seeing results; choosing among m criteria on the same "
            "calibration set needs confidence 1 - delta/m; fine-tuning after pruning voids it."
        )
        return "\n".join(lines)

    def table(self) -> str:
        """Markdown table: per rate, calibration accuracy, flips, p-value / risk, bound, chosen."""
        stat = "p-value" if self.p_values is not None else "CRC risk"
        rows = [
            f"| rate | removed | cal. acc. | drop | flips | {stat} | UCB | |",
            "|---:|---:|---:|---:|---:|---:|---:|:---|",
        ]
        values = self.p_values if self.p_values is not None else self.crc_risk
        assert values is not None  # the result of one of the two methods
        for j, r in enumerate(self.rates):
            rows.append(
                f"| {r:.2f} | {self.removed[j]} | {100 * self.accuracies[j]:.2f}% | "
                f"{100 * self.drops[j]:+.2f}% | {self.flips[j]} | {values[j]:.3g} | "
                f"{100 * self.ucb[j]:.2f}% | {'**chosen**' if j == self.index else ''} |"
            )
        return "\n".join(rows)

    def __str__(self) -> str:
        return (
            f"RateChoice(rate={self.rate:g}, max_drop={self.max_drop:g}, confidence={self.confidence:g}, "
            f"method={self.method!r}, n={self.n_calibration}, calibration drop={self.drop:+.4f}, "
            f"bound={self.bound:.4f})"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ucb=self.ucb, bound=self.bound, drop=self.drop, certified=self.certified)
        return d
