"""Units and long names of the coordinates circuit results carry, stated once.

Every circuit result follows :func:`pcsim.results.convention_problems`: each coordinate has a
``units`` and a ``long_name`` attribute ("" units for labels and indices, "1" for
dimensionless numbers) and every time is in seconds. The circuits, the epoch cutter, the
spiking decoder and the experiments all label their coordinates through :func:`label`, so a
coordinate such as ``p_deviant`` means the same thing, in the same units, in every file.
"""

from __future__ import annotations

import xarray as xr

__all__ = ["COORDINATES", "label", "seconds"]

# name -> (units, long_name); a coordinate created with its own attrs keeps them
COORDINATES: dict[str, tuple[str, str]] = {
    # circuit structure
    "area": ("", "area of the hierarchy, bottom-up (input: the sensory stage)"),
    "population": ("", "rate population"),
    "layer": ("", "cortical layer of the population"),
    "unit": ("", "unit index within an area"),
    "lfp_layer": ("", "layer of the LFP proxy"),
    "n_units": ("1", "number of units of the area"),
    "top_unit": ("", "unit of the top area"),
    "input_unit": ("", "input channel"),
    # blocks, slots and their labels (circuits.paradigms)
    "block": ("", "block (sequence simulated side by side)"),
    "slot": ("", "slot (tone position) within the block"),
    "onset_time": ("s", "slot onset from block start"),
    "pattern": ("", "index of the stimulus pattern shown in the slot"),
    "kind": ("", "kind of slot (standard, deviant, control, omission)"),
    "since_deviant": ("1", "slots since the last deviant"),
    "tone": ("", "tone channel"),
    "p_deviant": ("1", "deviant probability of the block"),
    "deviance": ("channels", "deviant tone minus standard tone"),
    "seed": ("", "random seed of the block"),
    "paradigm": ("", "paradigm of the block"),
    "repetition": ("1", "repetition number of the tone within its train"),
    "length": ("px", "bar length"),
    "trial_index": ("", "trial"),
    # measures
    "deviant_probability": ("1", "deviant probability"),
    "deviance_channels": ("channels", "deviance (deviant minus standard tone)"),
    "repetition_number": ("1", "repetition number within a train"),
    "stream": ("", "population stream (superficial L2/3, granular L4, deep L5/6)"),
    "frequency": ("Hz", "frequency"),
    "model": ("", "circuit (rate reference or spiking translation)"),
    # spiking translation
    "polarity": ("", "push-pull polarity of the neuron group (on: positive part, off: negative part)"),
    "group": ("", "neuron group"),
    "group_area": ("", "area of the neuron group"),
    "group_population": ("", "population of the neuron group"),
    "group_polarity": ("", "polarity of the neuron group"),
    "group_units": ("1", "number of rate units the neuron group encodes"),
    "neuron": ("", "neuron index within its group"),
    "neuron_unit": ("", "rate unit the neuron encodes"),
}


def label(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with the ``units`` and ``long_name`` of :data:`COORDINATES` filled in on every
    coordinate of that name that lacks them (attributes already set are kept). Returns a
    new Dataset; the data are not copied."""
    out = ds.copy(deep=False)
    for name in out.coords:
        if name in COORDINATES:
            units, long_name = COORDINATES[name]
            attrs = out[name].attrs
            attrs.setdefault("units", units)
            attrs.setdefault("long_name", long_name)
    return out


def seconds(ms) -> "object":
    """Milliseconds (the unit of circuit time constants and configs) to seconds (the unit of
    every time in a result): ``ms / 1000`` for a number or an array."""
    return ms / 1000.0
