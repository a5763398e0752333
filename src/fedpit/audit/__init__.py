"""The privacy audit of a run (``fedpit audit RUN_DIR``): membership inference, canary exposure, extraction, leaks.

- :mod:`fedpit.audit.data`: the held-out non-members and the canaries, decided once in the data preparation;
- :mod:`fedpit.audit.mia`: membership scores, ROC AUC with a bootstrap interval, TPR at a low FPR;
- :mod:`fedpit.audit.canaries`: canaries and their exposure over the whole secret space (a digit trie);
- :mod:`fedpit.audit.leaks`: canary secrets found in what a run wrote (synthetic data, metrics rows);
- :mod:`fedpit.audit.run`: the audit itself, which writes ``audit.json`` in the run folder.

This package's ``__init__`` imports nothing, so the data preparation can import :mod:`fedpit.audit.data` without
loading the audit (which imports the federation core).
"""
