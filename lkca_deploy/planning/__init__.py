"""Choosing a lowering rule per conv: from the targets table and a small cost model (`auto`, planner.py), or by
timing every candidate on the machine at hand (`tune`, tune.py). The rules themselves are lkca_deploy.lowering's;
this package adds what they must not know: targets, backends and the latency meter."""
