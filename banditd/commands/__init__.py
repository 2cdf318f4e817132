"""The `banditd` command line: one module per command family, and the benchmarks (bench/)."""
