"""The oneroster-cdc benchmark harness (issue 7): ``python -m bench --size S|M|L``.

One run starts (or reuses) the local Kafka broker and a simulator in a child process, measures
the ceilings (raw HTTP paging, raw aiokafka and librdkafka transactional produce, raw
read_committed consume) and the product's scenarios on the same data, and writes
``bench/results/bench-<size>.json`` plus a Markdown table (see ``docs/performance.md``).

Modules: :mod:`bench.sim` (the simulator child process), :mod:`bench.ceilings`,
:mod:`bench.scenarios`, :mod:`bench.run` (sizes, orchestration, report), :mod:`bench.child`
(scenarios that need a process of their own: memory).
"""
