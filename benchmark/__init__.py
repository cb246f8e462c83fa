"""Stage 3: the benchmark suite of private generation (time, rounds and bytes per method, length and model size).

* :mod:`benchmark.run`: one measurement point (``python -m benchmark.run --help``), one JSON record.
* :mod:`benchmark.harness`: random models of a geometry, the party function, windows, medians and estimates.
* :mod:`benchmark.network`: ``--net BW,RTT`` parsing and the LAN / WAN projections.
* :mod:`benchmark.netns`: the same parties in two Linux network namespaces joined by a ``tc netem``-shaped veth.
* :mod:`benchmark.party`: one party of a benchmark session (namespaces, or separate hosts).
* :mod:`benchmark.sweep` / :mod:`benchmark.report`: resumable sweeps over msl and model size; CSV, JSON,
  Markdown and plots built from the point files only.

How to read the results: ``benchmark/README.md``.
"""
