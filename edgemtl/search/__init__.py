"""Hardware-aware search over a slimmable model's width configurations (`edgemtl tune`, docs/tune.md).

objectives (what is optimised and how each number is obtained), evaluate (one configuration for real), predictors
(a cheap model per objective), study (the real evaluations in optuna storage, shared by workers), linas (the search
loop), controller (budget + preference -> one configuration), front (the result file)."""
