"""Training classifiers on single-cell crops, split by job.

* :mod:`~epikit.options`: :class:`~epikit.options.TrainingOptions`.
* :mod:`~epikit.training.fit`: the fit loop every classifier shares (``train_classifier``).
* :mod:`~epikit.training.fold_store`: finished folds on disk, so a cross-validation resumes.
* :mod:`~epikit.training.cross_validation`: ``cross_validate``, one model per fold.
* :mod:`~epikit.training.stage`: the train stage on a run folder (``train_run``).

Splits (grouped folds, validation split, fold assignment) are :mod:`epikit.splits`.
"""
