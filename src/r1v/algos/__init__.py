"""r1v.algos: pure tensor functions for the R1V training algorithms (no models, no recipes).

- advantages: GRPO-family group-relative advantages (`ADVANTAGES` registry), effective-sample ratio.
- losses:     log-probs/entropy from logits, GRPO clipped surrogate + k3 KL, DPO/BCO/NLL (MPO),
              Bradley-Terry.
- ssb:        R1V2's Selective Sample Buffer and offline prompt pre-filtering.
- entropy:    token entropy, R1V3 critical-token entropy, checkpoint selection.
- length:     AL-CoTD's DRLC repetition penalty.
"""
