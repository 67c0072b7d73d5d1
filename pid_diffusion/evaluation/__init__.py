"""Evaluation, one module per concern (each imports only those above it):

    detectors.py   the feature networks by --detector name (Inception, DINOv2, digits classifier, pixels), their input
    statistics.py  streamed float64 feature statistics, reference statistics, the Fréchet distance
    sampling.py    the model a --training_mode names, its samples in order for a detector, samples files read and written
    metrics.py     Inception Score, precision/recall, KID, and which of them a walk measures (--metrics)
    results.py     the results tables: each row the question it answers
    walk.py        scripts/fid_evaluation.py's walk over a run folder, and --samples / --write_reference
    demo.py        the digits demo's table (teacher, few-step samplers, students) on the digits classifier
"""
