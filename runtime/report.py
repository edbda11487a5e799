"""Replay/simulation reports: the metrics of docs/DESIGN.md §2, per layer and overall, plus the exact
configuration.

Why one dataclass for simulate, replay and the dense baseline: comparisons (solver vs solver, cache vs no cache,
dense vs sparse) must put identical definitions side by side, and the JSON must say exactly what was run.

Definitions (counts are summed over tokens; "per token" sums over layers first):

- ``active`` = Σ|A(t,l)|, ``loaded`` = Σ|S(t,l)| (load sets, after the cache);
- ``runs``: maximal blocks of consecutive positions of the load sets; ``mean_run_length`` = loaded / runs;
- ``collapsed_reads``: reads after access collapse, in bundles (= runs when the collapse gap is 0);
- ``reads``: I/O requests actually issued: collapsed reads as byte ranges aligned outward to 4 KiB, with ranges
  that then overlap or touch merged (so reads <= collapsed_reads; equal when bundles are 4 KiB multiples);
- ``bytes_requested`` = loaded * bundle_bytes; ``bytes_read`` = bytes of the issued requests; ``overread`` =
  bytes_read / bytes_requested;
- ``latency``: per token, the time from the first read submitted to the last completed, summed over layers
  (None when simulated); ``effective_bandwidth`` = bytes_requested / total I/O time (bytes/s);
- ``hit_rate`` = 1 - loaded / active (0 without a cache).

Presentation: :meth:`Report.summary_rows` and :meth:`Report.layer_rows` give formatted plain rows that any front
end can print; :meth:`Report.table` and :func:`rich_table` wrap such rows in rich Tables for the CLI.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
from rich.table import Table

COUNT_FIELDS = ("active", "loaded", "runs", "collapsed_reads", "reads", "bytes_requested", "bytes_read")


@dataclass
class TraceCounts:
    """Per (token, layer) counts of a planned trace: every array is int64 [T, n_selected_layers]."""

    layers: list[int]
    active: np.ndarray
    loaded: np.ndarray
    runs: np.ndarray
    collapsed_reads: np.ndarray
    reads: np.ndarray
    bytes_requested: np.ndarray
    bytes_read: np.ndarray

    @classmethod
    def concat(cls, parts: list["TraceCounts"], layers: list[int]) -> "TraceCounts":
        if not parts:
            z = np.zeros((0, len(layers)), dtype=np.int64)
            return cls(list(layers), *(z.copy() for _ in COUNT_FIELDS))
        return cls(list(layers), *(np.concatenate([getattr(p, f) for p in parts]) for f in COUNT_FIELDS))

    @property
    def n_tokens(self) -> int:
        return int(self.active.shape[0])


def spread(xs: Sequence[float | None]) -> dict[str, float | None]:
    """{"min", "median", "max"} of the values that are not None (all None when there are none).

    Why: repeated measurements (interleaved pipeline rounds, fio runs) are reported as their spread, never as one
    number, so a noisy disk shows as a wide range instead of a misleading mean.
    """
    v = [float(x) for x in xs if x is not None]
    if not v:
        return {"min": None, "median": None, "max": None}
    return {"min": float(np.min(v)), "median": float(np.median(v)), "max": float(np.max(v))}


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


@dataclass
class LayerMetrics:
    """Totals and ratios of one layer over all tokens."""

    layer: int
    active: int
    loaded: int
    runs: int
    collapsed_reads: int
    reads: int
    bytes_requested: int
    bytes_read: int
    mean_run_length: float | None
    reads_per_token: float | None
    overread: float | None
    hit_rate: float | None
    latency_ms_mean: float | None = None
    #: The placement unit this row is (mixture-of-experts: one row per expert): its decoder layer and expert
    #: (None: a dense FFN layer); both None when the layout lists no units (row = layer).
    model_layer: int | None = None
    expert: int | None = None

    @property
    def label(self) -> str:
        """``"3"`` for layer 3, ``"3.e5"`` for expert 5 of layer 3."""
        if self.expert is None:
            return str(self.layer if self.model_layer is None else self.model_layer)
        return f"{self.model_layer}.e{self.expert}"


@dataclass
class Report:
    """Metrics of one simulated or replayed trace (see the module docstring for the definitions)."""

    mode: str  # "simulate" or "replay"
    plan: str  # "sparse" or "dense"
    n_tokens: int
    layers: list[int]
    config: dict[str, Any]
    active: int
    loaded: int
    runs: int
    collapsed_reads: int
    reads: int
    bytes_requested: int
    bytes_read: int
    mean_run_length: float | None
    runs_per_token: float | None
    reads_per_token: float | None
    bytes_requested_per_token: float | None
    bytes_read_per_token: float | None
    overread: float | None
    hit_rate: float | None
    latency_ms_mean: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None
    io_time_s: float | None = None
    effective_bandwidth: float | None = None  # bytes requested per second of I/O
    read_bandwidth: float | None = None  # bytes read per second of I/O (what the device delivered)
    per_layer: list[LayerMetrics] = field(default_factory=list)

    @classmethod
    def from_counts(
        cls,
        counts: TraceCounts,
        *,
        mode: str,
        plan: str,
        config: dict[str, Any],
        latency_ns: np.ndarray | None = None,
    ) -> "Report":
        """Aggregate per (token, layer) counts (and, for a replay, per (token, layer) I/O times in ns)."""
        T = counts.n_tokens
        tot = {f: int(getattr(counts, f).sum()) for f in COUNT_FIELDS}
        units = config.get("units") or None  # [{"layer", "expert", "n"}] per unit (runtime.layout.Unit)
        per_layer = []
        for j, layer in enumerate(counts.layers):
            c = {f: int(getattr(counts, f)[:, j].sum()) for f in COUNT_FIELDS}
            unit = units[int(layer)] if units is not None else {}
            per_layer.append(
                LayerMetrics(
                    layer=int(layer),
                    model_layer=unit.get("layer"),
                    expert=unit.get("expert"),
                    **c,
                    mean_run_length=_ratio(c["loaded"], c["runs"]),
                    reads_per_token=_ratio(c["reads"], T),
                    overread=_ratio(c["bytes_read"], c["bytes_requested"]),
                    hit_rate=(1.0 - c["loaded"] / c["active"]) if c["active"] else None,
                    latency_ms_mean=(float(latency_ns[:, j].mean()) / 1e6 if latency_ns is not None and T else None),
                )
            )
        report = cls(
            mode=mode,
            plan=plan,
            n_tokens=T,
            layers=[int(x) for x in counts.layers],
            config=dict(config),
            **tot,
            mean_run_length=_ratio(tot["loaded"], tot["runs"]),
            runs_per_token=_ratio(tot["runs"], T),
            reads_per_token=_ratio(tot["reads"], T),
            bytes_requested_per_token=_ratio(tot["bytes_requested"], T),
            bytes_read_per_token=_ratio(tot["bytes_read"], T),
            overread=_ratio(tot["bytes_read"], tot["bytes_requested"]),
            hit_rate=(1.0 - tot["loaded"] / tot["active"]) if tot["active"] else None,
            per_layer=per_layer,
        )
        if latency_ns is not None and T:
            per_token = np.asarray(latency_ns, dtype=np.int64).sum(axis=1)
            io_s = float(per_token.sum()) / 1e9
            report.latency_ms_mean = float(per_token.mean()) / 1e6
            report.latency_ms_p50 = float(np.percentile(per_token, 50)) / 1e6
            report.latency_ms_p99 = float(np.percentile(per_token, 99)) / 1e6
            report.io_time_s = io_s
            report.effective_bandwidth = tot["bytes_requested"] / io_s if io_s > 0 else None
            report.read_bandwidth = tot["bytes_read"] / io_s if io_s > 0 else None
        return report

    def counts_dict(self) -> dict[str, int]:
        """The integer counts only (what simulate and replay must agree on)."""
        return {f: getattr(self, f) for f in ("n_tokens", *COUNT_FIELDS)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (plain ints/floats/None/str, nested per-layer list)."""
        return _plain(asdict(self))

    def summary_rows(self) -> list[tuple[str, str]]:
        """(metric, formatted value) rows of the overall metrics: plain data for any front end."""
        return [
            ("tokens", f"{self.n_tokens:,}"),
            ("layers", str(len(self.layers))),
            ("mean run length (bundles)", _fmt(self.mean_run_length, ".3f")),
            ("runs / token", _fmt(self.runs_per_token, ".1f")),
            ("reads / token", _fmt(self.reads_per_token, ".1f")),
            ("requested / token", _bytes(self.bytes_requested_per_token)),
            ("read / token", _bytes(self.bytes_read_per_token)),
            ("over-read", _fmt(self.overread, ".3f", "x")),
            ("cache hit rate", _fmt(None if self.hit_rate is None else 100 * self.hit_rate, ".1f", " %")),
            ("I/O latency / token mean", _fmt(self.latency_ms_mean, ".3f", " ms")),
            ("I/O latency / token p50", _fmt(self.latency_ms_p50, ".3f", " ms")),
            ("I/O latency / token p99", _fmt(self.latency_ms_p99, ".3f", " ms")),
            ("effective bandwidth", _rate(self.effective_bandwidth)),
            ("read bandwidth", _rate(self.read_bandwidth)),
        ]

    def caption(self) -> str:
        """One line saying what was run (layout, cache, collapse gap, engine, bundle size)."""
        cfg = self.config
        cache = cfg.get("cache") or {}
        return (
            f"layout={cfg.get('layout_solver') or '?'} cache={cache.get('policy', 'none')}"
            f"({_bytes(cache.get('budget_bytes', 0))}) collapse={cfg.get('collapse_gap')} "
            f"engine={cfg.get('engine') or '-'} bundle={cfg.get('bundle_bytes')} B"
        )

    def expert_reads(self) -> dict[str, int]:
        """I/O requests per expert unit (label ``"layer.eE"``, :attr:`LayerMetrics.label`); empty for dense models."""
        return {m.label: m.reads for m in self.per_layer if m.expert is not None}

    def layer_rows(self) -> tuple[list[str], list[list[str]]]:
        """(column names, one formatted row per layer, or per unit (``layer.eE`` for an expert) with MoE)."""
        cols = ["layer", "mean run", "reads/token", "over-read", "hit rate", "latency ms"]
        rows = [[m.label, _fmt(m.mean_run_length, ".3f"), _fmt(m.reads_per_token, ".2f"),
                 _fmt(m.overread, ".3f"), _fmt(None if m.hit_rate is None else 100 * m.hit_rate, ".1f", " %"),
                 _fmt(m.latency_ms_mean, ".4f")] for m in self.per_layer]
        return cols, rows

    def table(self, title: str | None = None) -> Table:
        """A rich Table of :meth:`summary_rows` (the configuration in the caption)."""
        t = Table(title=title or f"coact {self.mode} ({self.plan})", show_header=True)
        t.add_column("metric")
        t.add_column("value", justify="right")
        for name, value in self.summary_rows():
            t.add_row(name, value)
        t.caption = self.caption()
        return t

    def layer_table(self) -> Table:
        """A rich Table of :meth:`layer_rows`."""
        return rich_table("per layer", *self.layer_rows())


def rich_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], *,
               first_left: bool = False) -> Table:
    """A rich Table from plain (columns, rows), numbers right-aligned (the first column left with `first_left`)."""
    t = Table(title=title)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if (first_left and i == 0) else "right")
    for row in rows:
        t.add_row(*row)
    return t


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def _fmt(x: float | None, spec: str, unit: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{unit}"


def _bytes(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} B"


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e6:.1f} MB/s"
