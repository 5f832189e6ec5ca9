"""The `vqrt bench` document (suite.bench_document) as a terminal table, as markdown tables
(benchmarks/bench_suite.py writes them into BENCHMARKS.md), and as a plot (matplotlib, imported
only by plot()). Pure formatting: no measurement here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

TOKEN_HEADERS = ("token generation", "batch", "prefill ms", "token ms p50", "p90", "p99",
                 "tokens/s", "spread", "x upstream", "x bound", "peak MB")
IMAGE_HEADERS = ("image stage", "batch", "decode ms", "spread", "x torch", "end-to-end ms/image")


def _number(value: Optional[float], digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _spread(summary: Dict[str, float]) -> str:
    """Half the min-max range relative to the median."""
    return f"±{50 * (summary['max'] - summary['min']) / summary['median']:.0f}%"


def token_rows(doc: Dict) -> List[List[str]]:
    rows = []
    for e in doc["results"]:
        if "tokens_per_s" not in e:
            continue
        latency = e["token_latency_ms"] or {}
        rows.append([e["name"], str(e["batch"]), _number(e["prefill_ms"]["median"], 2),
                     _number(latency.get("p50"), 2), _number(latency.get("p90"), 2),
                     _number(latency.get("p99"), 2), _number(e["tokens_per_s"]["median"]),
                     _spread(e["tokens_per_s"]), _number(e["x_upstream"], 2, "x"),
                     _number(e["bound"] and e["bound"]["step_vs_bound"], 2, "x"),
                     _number(e["peak_host_mb"], 0)
                     + ("" if e["peak_device_mb"] is None
                        else f" (GPU {e['peak_device_mb']:.0f})")])
    return rows


def image_rows(doc: Dict) -> List[List[str]]:
    rows = []
    for e in doc["results"]:
        decode = e["image_decode_ms"]
        if decode is None:
            continue
        e2e = e["end_to_end_per_image_ms"]
        rows.append([e["name"], str(e["batch"]), _number(decode["median"], 2), _spread(decode),
                     _number(e["x_torch_decoder"], 2, "x"),
                     _number(None if e2e is None else e2e["median"], 1)])
    return rows


def _text_table(headers: Sequence[str], rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in [list(headers)] + rows) for i in range(len(headers))]
    lines = []
    for row in [list(headers)] + rows:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _markdown_table(headers: Sequence[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "| --- |" + " ---: |" * (len(headers) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def describe(doc: Dict) -> List[str]:
    """Two lines: the workload, and the machine with its bandwidth."""
    t, s, m = doc["model"]["transformer"], doc["settings"], doc["machine"]
    h, w = doc["model"]["grid"]
    bandwidth = doc["bandwidth"]["bytes_per_s"]
    return [f"GPT {t['n_layer']} layers x {t['n_embd']} wide ({t['n_head']} heads), vocabulary "
            f"{t['vocab_size']}; {h}x{w} grid, {s['tokens']} tokens per row after "
            f"{doc['model']['prefix_tokens']} prefix token(s), top-k {s['top_k']}; median of "
            f"{s['repeat']} repeats after {s['warmup']} warm-up",
            f"{m['cpu']}, {m['cores']} cores, ISA {m['cpu_isa']}; read bandwidth "
            f"{bandwidth['median'] / 1e9:.1f} GB/s (range {bandwidth['min'] / 1e9:.1f}-"
            f"{bandwidth['max'] / 1e9:.1f})"]


def format_text(doc: Dict) -> str:
    """The terminal report: the workload, then one table per stage."""
    parts = ["\n".join(describe(doc)), _text_table(TOKEN_HEADERS, token_rows(doc))]
    images = image_rows(doc)
    if images:
        parts.append(_text_table(IMAGE_HEADERS, images))
    parts.append("x upstream: tokens/s over the upstream torch sampler's; x bound: median "
                 "per-token latency over the bandwidth bound (1.0 = at the memory roofline); "
                 "x torch: the torch decoder's time over this one; spread: half the min-max "
                 "range of the repeats")
    if doc["notes"]:
        parts.append("\n".join(f"note: {note}" for note in doc["notes"]))
    return "\n\n".join(parts)


def format_markdown(doc: Dict) -> str:
    parts = [_markdown_table(TOKEN_HEADERS, token_rows(doc))]
    images = image_rows(doc)
    if images:
        parts.append(_markdown_table(IMAGE_HEADERS, images))
    return "\n\n".join(parts)


def plot(doc: Dict, path: Path) -> None:
    """Two panels: tokens/s against batch per contender (log scale), and per-image latency
    by stage at the smallest batch (prefill, token steps, image decode)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    token_entries = [e for e in doc["results"] if "tokens_per_s" in e]
    names = list(dict.fromkeys(e["name"] for e in doc["results"]))
    batch = min(doc["settings"]["batches"])
    figure, (rate, stages) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name in dict.fromkeys(e["name"] for e in token_entries):
        points = sorted((e["batch"], e["tokens_per_s"]["median"]) for e in token_entries
                        if e["name"] == name)
        rate.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    rate.set(xlabel="batch", ylabel="tokens/s (median)", yscale="log",
             title="Throughput against batch")
    rate.set_xticks(sorted(doc["settings"]["batches"]))
    rate.grid(True, which="both", alpha=0.3)
    rate.legend(fontsize=8)

    at_batch = {e["name"]: e for e in doc["results"] if e["batch"] == batch}
    prefill, steps, decode = [], [], []
    for name in names:
        e = at_batch[name]
        first = e["prefill_ms"]["median"] if "prefill_ms" in e else 0.0
        # tokens/s = B * N / (prefill + steps): the token stage's median time back
        total = (batch * doc["settings"]["tokens"] / e["tokens_per_s"]["median"] * 1e3
                 if "tokens_per_s" in e else 0.0)
        prefill.append(first / batch)
        steps.append(max(total - first, 0.0) / batch)
        decode.append(e["image_decode_ms"]["median"] / batch if e["image_decode_ms"] else 0.0)
    rows = range(len(names))
    stages.barh(rows, prefill, label="prefill")
    stages.barh(rows, steps, left=prefill, label="token steps")
    stages.barh(rows, decode, left=[a + b for a, b in zip(prefill, steps)], label="image decode")
    stages.set_yticks(list(rows), names, fontsize=8)
    stages.invert_yaxis()
    stages.set(xlabel=f"ms per image at batch {batch} (median)", title="Latency per stage")
    stages.legend(fontsize=8)
    figure.suptitle(describe(doc)[0], fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
