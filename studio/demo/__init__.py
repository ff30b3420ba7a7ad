"""The demo family's domain: the lowest layer of the studio core, importing nothing else from ``studio``.

    shapes      the synthetic data set ("a red circle on a blue background"), its splits and evaluation prompts
    concepts    concepts the family never saw ("heart", "orange"), for the LoRA demo
    evaluator   the analytic prompt-fidelity score (no learned weights)
    tokenizer   the project's byte-level CLIP BPE tokenizer, one token per demo word

``studio`` (the Layers tab's fidelity score) and ``training`` (data, validation, the demo-family report) use it.
"""
