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
- optional: ``rates`` (true firing rates, counts per bin, same dims as ``counts``),
  ``latents`` (true latent state, ``(trial, time, latent)``), ``behaviour``
  (``(trial, time, behaviour_dim)``), ``spike_times`` are never stored in the Dataset (NWB
  keeps them; :mod:`analysis.nwb` bins them).

**Rates are in counts per bin** everywhere inside analysis (metrics, models); Hz is converted
at the boundary (``rate_hz * bin_width``).

**Latent models** share one surface (scikit-learn style, xarray in/out): ``fit(recording)``
on training trials (all neurons visible), ``transform(recording) -> DataArray`` latents
``(trial, time, latent)`` inferred from held-in neurons only, ``predict(recording) ->
DataArray`` rates ``(trial, time, neuron)`` in counts per bin for every neuron from held-in
neurons only, and ``score(recording) -> float`` (co-smoothing bits per spike on the held-out
neurons). Hyper-parameters go to ``__init__``; learned state ends in ``_``.
"""
