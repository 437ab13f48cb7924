"""The run's report (numpy, and matplotlib for its figures; no torch, no backend imported here).

- contract.py: report.json's keys, `Report` and `EngineResult`, and `validate_report_dict`.
- render.py: report.json (a contract other tools read), report.md, report.html and a terminal table.
- figures.py: the HTML report's figures; tables.py: a table as markdown, text or HTML.
Comparing two reports is lkca_deploy.compare. The meters the report shows live in lkca_deploy.measure (latency,
cost, end to end) and lkca_runtime (parity metrics, machine facts).
"""
