"""Parity, latency, machine facts and report rendering (numpy only; no torch, no backend imported here).

- parity.py: task metrics of an engine against the reference outputs, thresholds per precision, per-block error.
- latency.py: one timing protocol for every backend (warm-up, p50/p90/p99, CV, batch sweep, interleaved rounds).
- machine.py: the facts printed beside every timing (CPU model, ISA flags, GPU, library versions).
- render.py: report.json (a contract other tools read), report.md, report.html and a terminal table.
"""
