"""r1v.rewards: answer extraction, verification and reward functions, shared by training and eval.

- `extract`: `split_think`, `last_boxed`, `extract_answer`, `extract_choice` (pure string work).
- `verify`: `verify_answer`, `VerifyPool` (math-verify in worker processes with hard timeouts), `numeric_equal`.
- `rules`: reward functions `fn(completion, columns) -> {"overall", ...}` (accuracy, format, length,
  repetition, R1V2 hybrid).
- `registry`: `get_reward(name | "file.py:function")`, `combine([(spec, weight), ...])`.
"""
