"""The picture of a tuning run: best latency against trials, whole model and per kernel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from strataml.errors import StrataError


def plot_search(report: Any, path: str | Path, kernels: int = 8) -> None:
    """A PNG: left, the model's estimated latency (ms) with each kernel's best schedule so
    far against the trials spent; right, the `kernels` slowest kernels' best time (ms)
    against their own trials."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise StrataError("--plot needs matplotlib: pip install 'strataml[tune]' "
                          "(or pip install matplotlib)") from None
    figure, (whole, each) = plt.subplots(1, 2, figsize=(12, 4.5))
    total = sum(t.default_ms for t in report.tasks)
    rest = report.default_ms - total if report.default_ms == report.default_ms else 0.0
    trials = [0] + [n for n, _ in report.curve]
    model = [1.0] + [r for _, r in report.curve]
    whole.step(trials, [rest + total * r for r in model], where="post", label="estimated")
    if report.tuned_ms == report.tuned_ms:
        whole.axhline(report.tuned_ms, linestyle="--", color="gray",
                      label=f"tuned, measured ({report.tuned_ms:.2f} ms)")
    whole.set(title="whole model", xlabel="trials", ylabel="latency (ms)")
    whole.legend()
    for task in sorted(report.tasks, key=lambda t: -t.default_ms)[:kernels]:
        xs = [0] + [n for n, _ in task.curve]
        ys = [task.default_ms] + [task.default_ms * min(r, 1.0) for _, r in task.curve]
        each.step(xs, ys, where="post", label=task.label[:32])
    each.set(title="slowest kernels", xlabel="trials of the kernel", ylabel="best time (ms)")
    each.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(str(path), dpi=100)
    plt.close(figure)
