"""analysis: recorded electrophysiology in, latent models fitted, scored with the field's metrics.

Conventions every module here follows (and that ``circuits`` meets when it hands data over):

**A recording** is an ``xarray.Dataset`` with

- ``counts``: spike counts, integer, dims ``(trial, time, neuron)``; counts per bin.
- coordinates: ``trial`` (trial ids), ``time`` (bin centres in seconds relative to the
  alignment event; ``attrs["units"] = "s"``), ``neuron`` (unit ids); ``heldout`` (bool, along
  ``neuron``) marks the neurons a model must predict without seeing them on test trials;
  ``split`` (str along ``trial``: "train", "val" or "test") and any trial condition columns
  (e.g. ``condition``) as coordinates along ``trial``.
- attrs: ``bin_width`` (seconds), ``align`` (name of the alignment column, if any).
- optional: ``observed`` (bool, dims ``(trial, time, neuron)``; e.g. from NWB ``obs_intervals``):
  False marks a bin whose count is missing data, not silence; every model's fit and every
  score leaves such bins out. ``rates`` (true firing rates, counts per bin, same dims as ``counts``),
  ``latents`` (true latent state, ``(trial, time, latent)``), ``behaviour``
  (``(trial, time, behaviour_dim)``), ``spike_times`` are never stored in the Dataset (NWB
  keeps them; :mod:`analysis.nwb` bins them).

**Rates are in counts per bin** everywhere inside analysis (metrics, models); Hz is converted
at the boundary (``rate_hz * bin_width``).

A recording is checked once, at the boundary, into an :class:`analysis.recording.Recording`
(plain arrays; passed on, it is not checked again), and
:func:`analysis.recording.split_recording` is the one policy choosing held-out neurons and
test trials where a recording does not say.

**Latent models** are scikit-learn estimators with one surface (xarray in/out): ``fit(recording)``
on training trials (all neurons visible), ``transform(recording) -> DataArray`` latents
``(trial, time, latent)`` inferred from held-in neurons only, ``predict(recording) ->
DataArray`` rates ``(trial, time, neuron)`` in counts per bin for every neuron from held-in
neurons only, ``forecast(recording, n_forward)`` rates of the bins after the window (or a
clear ``NotImplementedError``), and ``score(recording) -> float`` (co-smoothing bits per spike
on the held-out neurons); ``infer(recording)`` infers once and gives all of them.
Hyper-parameters go to ``__init__`` (checked in ``fit``); learned state ends in ``_``.
"""
