"""Issue 12's accelerator targets against the figures bench/gpu_suite.sh wrote (OUT/*.json): one table, each row
the figure, what was measured, the bar it must reach, and whether it does. A section that did not run shows n/a.

    python bench/targets.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(out: Path, name: str) -> dict | None:
    p = out / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def sftjax_run(data: dict | None) -> dict | None:
    runs = [r for r in (data or {}).get("runs", []) if r.get("framework") == "sftjax" and "tokens_s" in r]
    return runs[0] if runs else None


def hf_run(data: dict | None, mode: str) -> dict | None:
    runs = [r for r in (data or {}).get("runs", []) if r.get("framework") == "hf" and r["name"].endswith(mode)
            and "tokens_s" in r]
    return runs[0] if runs else None


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench_out")
    rows = []

    def add(figure, value, fmt, bar=None, ok=None):
        shown = "n/a" if value is None else fmt.format(value)
        verdict = "" if ok is None or value is None else ("met" if ok(value) else "MISSED")
        rows.append((figure, shown, bar or "reported", verdict))

    train, pallas = load(out, "train"), load(out, "train_pallas")
    scan, scan_min, long = load(out, "train_scan"), load(out, "train_scan_minimal"), load(out, "long")
    unrolled = [r for r in (sftjax_run(train), sftjax_run(pallas)) if r]
    best = max(unrolled, key=lambda r: r["tokens_s"]) if unrolled else None
    for label, r in (("unrolled, sdpa", sftjax_run(train)), ("unrolled, pallas_gpu", sftjax_run(pallas)),
                     ("scanned", sftjax_run(scan)), ("scanned, remat minimal", sftjax_run(scan_min))):
        add(f"MFU (of --peak, 989 TFLOP/s on GPU), {label}", r and r["mfu"], "{:.1%}", ">= 50% (goal 55%)",
            lambda v: v >= 0.5)
    for mode, bar, need in (("eager", ">= 1.4x (goal 1.6x)", 1.4), ("compile", "reported (goal >= 1.15x)", None)):
        hf = hf_run(train, mode)
        ratio = best["tokens_s"] / hf["tokens_s"] if best and hf else None
        add(f"train ratio over HF {mode} (best unrolled)", ratio, "{:.2f}x", bar, need and (lambda v: v >= need))
    ref = sftjax_run(train)
    for label, r in (("scanned", sftjax_run(scan)), ("scanned, remat minimal", sftjax_run(scan_min))):
        if r and ref:
            add(f"{label} speed vs unrolled sdpa", r["tokens_s"] / ref["tokens_s"], "{:.1%}", ">= 95%",
                lambda v: v >= 0.95)
            if r.get("peak_bytes") and ref.get("peak_bytes"):
                add(f"{label} peak memory vs unrolled sdpa", r["peak_bytes"] / ref["peak_bytes"], "{:.1%}",
                    "<= 105%", lambda v: v <= 1.05)
    attn = load(out, "attention")
    for r in (attn or {}).get("runs", []):
        if r["seq"] == 2048 and "ms" in r:
            add(f"attention layer fwd+bwd b{r['rows']}x2048, {r['impl']}", r["ms"], "{:.2f} ms", "<= 1.5 ms",
                lambda v: v <= 1.5)
    lr, pr = sftjax_run(long), sftjax_run(pallas)
    if lr and pr and lr.get("peak_bytes") and pr.get("peak_bytes"):
        add("peak memory, seq 8192 x 2 rows over 2048 x 8 (same kernel)", lr["peak_bytes"] / pr["peak_bytes"],
            "{:.2f}x", "<= 1.0x", lambda v: v <= 1.0)
    dec = {r["batch"]: r for r in (load(out, "decode") or {}).get("runs", [])}
    for batch, need in ((1, 1000), (32, 25000)):
        r = dec.get(batch)
        add(f"decode batch {batch}, new tokens/s (decode only)", r and r["decode_tokens_s"], "{:,.0f}",
            f">= {need:,}", lambda v, n=need: v >= n)
        add(f"decode batch {batch}, fraction of memory bandwidth", r and r["bandwidth_fraction"], "{:.0%}",
            ">= 60%" if batch == 1 else None, (lambda v: v >= 0.6) if batch == 1 else None)
    widths = [max(len(row[i]) for row in rows + [("figure", "measured", "target", "")]) for i in range(4)]
    print(f"\ntargets ({out})")
    for row in [("figure", "measured", "target", "")] + rows:
        print("  ".join(x.ljust(w) for x, w in zip(row, widths)))


if __name__ == "__main__":
    main()
