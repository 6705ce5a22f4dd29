"""Small-scale reproduction of the paper's stability findings: `python -m research.stability`.

Modules: `task` (the verifiable addition task), `coldstart` (SFT'd `tiny-moe` initializations),
`matrix` (cells and budgets), `runner` (one run through keel's `Trainer`), `probe` (size of the
training–inference discrepancy), `orchestrate` (the pool), `criterion` (the pre-declared collapse
criterion), `results`/`findings`/`figures`/`report` (REPORT.md and its artifacts).
"""
