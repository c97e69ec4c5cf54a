"""What NEC's memories hold at the end of chapter 4's CartPole runs: entries, writes, and tabular updates.

    .venv/bin/python experiments/ch4_nec_memory.py RUN_DIR [RUN_DIR ...]

Each run directory must still hold its ``policy.pt`` (the DNDs: 2 x 50,000 slots of 64 floats, 26 MB, so it is
not committed) and ``replay.pt`` (the N-step replay, which counts the returns written). For each run it records
the entries each action's DND holds, the capacity, the N-step returns written into the memories (every one
either appended or, when its key was already present, a tabular step ``v <- v + alpha (G - v)``), and so the
tabular steps taken (writes - entries, as nothing was replaced while a DND was not full). Writes
``results/ch4-nec/memory.json`` with provenance (command, commit, versions, hardware).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from companion.records import provenance

if __name__ == "__main__":
    rows = []
    for run in map(Path, sys.argv[1:]):
        policy = torch.load(run / "policy.pt", map_location="cpu", weights_only=True)
        replay = torch.load(run / "replay.pt", map_location="cpu", weights_only=True)
        capacity = int(policy["dnds.0.keys"].shape[0])
        entries = [int(v) for k, v in sorted(policy.items()) if k.startswith("dnds.") and k.endswith(".count")]
        writes = int(replay["pos"]) + (int(replay["returns"].shape[0]) if replay["full"] else 0)
        full = any(e == capacity for e in entries)
        rows.append({"run": run.name, "entries_per_action": entries, "capacity_per_action": capacity,
                     "returns_written": writes, "tabular_steps": None if full else writes - sum(entries)})
        print(rows[-1])
    out = Path(__file__).resolve().parents[1] / "results" / "ch4-nec" / "memory.json"
    out.write_text(json.dumps({"rows": rows, "provenance": provenance("cpu"),
                               "command": " ".join(["python", *sys.argv])}, indent=2) + "\n")
    print("saved", out)
