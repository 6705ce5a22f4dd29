"""keel's research harness: the paper's stability findings reproduced on tiny models
(`research.stability`) and the evidence for the guard's defaults (`research.guard_thresholds`,
`research.guard_service`). See research/README.md; `bench/` measures speed."""
