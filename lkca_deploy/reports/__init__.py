"""The run's report (numpy, and matplotlib for its figures; no torch, no backend imported here).

- contract.py: report.json's keys, `Report` and `EngineResult`, and `validate_report_dict`.
- render.py: report.json (a contract other tools read), report.md, report.html and a terminal table.
- figures.py: the HTML report's figures; compare.py: two runs, engine by engine, as a CI gate.
The meters the report shows live in lkca_deploy.measure (latency, cost, end to end) and lkca_runtime (parity
metrics, machine facts).
"""
