"""Saving a fit's training state to a file while it trains, and resuming a fit from it.

A fit with ``checkpoint=PATH`` writes PATH after an epoch (at most every
:data:`CHECKPOINT_INTERVAL` seconds, and always when a stage ends). When a fit starts and PATH
exists, it was written by an interrupted fit: if that fit had the same data and parameters
(``random_state`` included when it is an int; without one the fit takes the interrupted fit's
seed), training resumes where it stopped and ends where the uninterrupted fit would have (on
the same machine and number of threads, the same weights and labels); otherwise the fit stops
with an error before any training. A fit that completes removes the file. This is the
behaviour of Keras' ``BackupAndRestore`` callback, for sklearn's ``fit``.

What the file holds, per stage: the state of every finished stage as it ended, and of the
running stage as of its last saved epoch. The state of a stage is its optimisers, schedule,
moving average, stopping rule and epoch count (and float16's gradient scale); the estimator's
network (``module_``) and the fitted attributes set so far (``neighbors_``, ...); what the
method registered with the stage (``trainer.stage(..., state={...})``: networks not yet in
``module_``, tracked assignments, its selection of the best epoch, ...); ``history_``; and
every random number generator the fit draws from (torch's, the fit's ``torch.Generator``,
numpy's global one that faiss uses).

Resuming replays the method's ``_stages`` generator from the start: the work between two stages
(building the networks, mining neighbours, a k-means initialisation) runs again; a finished
stage is not trained again but restored to its end, so the work after it sees what it saw the
first time; the running stage is restored to its last saved epoch and trained on.

Everything is written with :func:`torch.save` as tensors, numbers, strings, lists and dicts,
and read with ``torch.load(..., weights_only=True)``: a checkpoint never executes code.
"""

import os
import time
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

__all__ = ["CHECKPOINT_INTERVAL", "Checkpoint", "decode_state", "encode_state"]

#: Seconds between two writes of the running stage's state (the end of a stage is always
#: written). A write costs a copy of the networks and the optimiser state; on a long fit one a
#: minute bounds the work an interruption loses.
CHECKPOINT_INTERVAL = 60.0

_FORMAT = 1
_NDARRAY = "__ndarray__"
_NUMPY_SCALARS = (np.integer, np.floating, np.bool_)


def encode_state(value):
    """``value`` as what ``torch.load(weights_only=True)`` reads back: tensors (copied to the
    CPU), numbers, strings, None, and lists, tuples and dicts of them; a numpy array becomes a
    tagged tensor, a numpy scalar a Python number. Anything else raises TypeError."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError("A numpy array of Python objects cannot be checkpointed.")
        return {_NDARRAY: torch.from_numpy(np.array(value, copy=True))}
    if isinstance(value, _NUMPY_SCALARS):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if type(value) in (list, tuple):
        return type(value)(encode_state(item) for item in value)
    if type(value) in (dict, OrderedDict):  # a module's state_dict is an OrderedDict
        return _same_mapping(value, {key: encode_state(item) for key, item in value.items()})
    raise TypeError(f"A {type(value).__name__} cannot be checkpointed.")


def _same_mapping(original, items):
    """``items`` in a mapping of the type of ``original``, with its ``_metadata`` (the versions
    that ``Module.load_state_dict`` reads)."""
    mapping = type(original)(items)
    if hasattr(original, "_metadata"):
        mapping._metadata = original._metadata
    return mapping


def decode_state(value):
    """The inverse of :func:`encode_state` (tensors stay on the CPU)."""
    if type(value) in (dict, OrderedDict):
        if type(value) is dict and set(value) == {_NDARRAY}:
            return value[_NDARRAY].numpy()
        return _same_mapping(value, {key: decode_state(item) for key, item in value.items()})
    if type(value) in (list, tuple):
        return type(value)(decode_state(item) for item in value)
    return value


def _capture(thing):
    """The state of a registered object: a module's or a tensor's values, or ``state_dict()``."""
    if isinstance(thing, nn.Module):
        return encode_state(thing.state_dict())
    if isinstance(thing, torch.Tensor):
        return encode_state(thing)
    return encode_state(thing.state_dict())


@torch.no_grad()
def _restore(thing, state):
    if isinstance(thing, nn.Module):
        thing.load_state_dict(state)
    elif isinstance(thing, torch.Tensor):
        thing.copy_(state)
    else:
        thing.load_state_dict(decode_state(state))


def _plain(value):
    """True for the values of a learning-rate schedule that training changes (numbers and
    lists of them); its constructor's arguments (functions, a ``Counter``) are rebuilt."""
    if isinstance(value, (list, tuple)):
        return all(_plain(item) for item in value)
    return value is None or isinstance(value, (bool, int, float))


class Checkpoint:
    """The checkpoint file of one fit (see the module docstring).

    Parameters
    ----------
    path : str or path-like
    fingerprint : object
        What the data and the parameters of the fit are (shape, a checksum of rows, the
        parameters, an int ``random_state``, the precision); a file written under another
        fingerprint is refused.
    estimator : BaseDeepClusterer
        The estimator being fitted: its ``module_`` and the fitted attributes set from now on
        are saved (those set before, by the input's validation, are recomputed by a resumed fit).
    seed : int
        The fit's seed; :meth:`load` replaces it with the saved fit's.
    device : torch.device

    Attributes
    ----------
    generator : torch.Generator
        The fit's generator, set by the estimator once seeded (before the first stage).
    """

    def __init__(self, path, fingerprint, estimator, seed, device):
        self.path = os.fspath(path)
        self.fingerprint = encode_state(fingerprint)
        self.estimator = estimator
        self.seed = int(seed)
        self.generator = None
        self.device = device
        self.known_attributes = set(vars(estimator))
        self.finished = []  # the state of each finished stage, as it ended
        self.running = None  # the running stage's last saved state
        self.resuming = False  # whether the file held a fit when this one started
        self.last_write = time.perf_counter()

    # ------------------------------------------------------------------ reading
    def load(self):
        """Read the file if there is one; True when it holds a fit to resume. Raises
        ValueError when it is not a checkpoint of this fit (nothing is trained then)."""
        if not os.path.exists(self.path):
            return False
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(
                f"checkpoint={self.path!r} exists but cannot be read as a checkpoint "
                f"({type(error).__name__}: {error}). Remove it to start a new fit."
            ) from error
        if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
            raise ValueError(
                f"checkpoint={self.path!r} is not a checkpoint of this version of skdeepcluster. "
                "Remove it to start a new fit."
            )
        if saved["fingerprint"] != self.fingerprint:
            raise ValueError(
                f"checkpoint={self.path!r} was written by a fit of other data, parameters or "
                "random_state than this one. Remove it, or choose another path, to start a "
                "new fit."
            )
        self.resuming = True
        self.seed = saved["seed"]
        self.finished = list(saved["finished"])
        self.running = saved["running"]
        return True

    def describe(self):
        """Where the saved fit stopped, in words (for the progress lines)."""
        if self.running is not None:
            return f"stage {self.running['name']!r} after epoch {self.running['n_epochs']}"
        return f"the end of stage {self.finished[-1]['name']!r}"  # a file holds one at least

    def restore(self, trainer, stage, index):
        """Restore stage number ``index`` if the file saved it. Returns "finished" (the stage
        is at its end: skip it), "running" (continue from its saved epoch) or None."""
        if not self.resuming:
            return None
        if index < len(self.finished):
            state, outcome = self.finished[index], "finished"
        elif index == len(self.finished) and self.running is not None:
            state, outcome = self.running, "running"
        else:
            return None
        if state["name"] != stage.name:
            raise RuntimeError(
                f"checkpoint={self.path!r}: stage {index} is {state['name']!r} in the file and "
                f"{stage.name!r} in this fit."
            )
        self._restore_stage(trainer, stage, state)
        return outcome

    def _restore_stage(self, trainer, stage, state):
        estimator = self.estimator
        stage.n_epochs = state["n_epochs"]
        stage.epoch = max(0, state["n_epochs"] - 1)
        stage.n_steps = state["n_steps"]
        stage.last_lr = state["last_lr"]
        # DeepCluster adds its classifier's optimiser during an epoch; the method restores it
        for optimizer, saved in zip(stage.optimizers, state["optimizers"], strict=False):
            optimizer.load_state_dict(saved)
        if stage.scheduler is not None:
            vars(stage.scheduler).update(decode_state(state["scheduler"]))
        if stage.ema is not None:
            stage.ema.n_updates = state["ema"]["n_updates"]
            averages = state["ema"]["average"]
            if averages is not None:  # None: module_'s own tensors, restored with it below
                with torch.no_grad():
                    for average, saved in zip(stage.ema.average, averages, strict=True):
                        average.copy_(saved)
        vars(stage.rule).update(state["rule"])
        for name, thing in stage.state.items():
            _restore(thing, state["registered"][name])
        for name, value in decode_state(state["attributes"]).items():
            setattr(estimator, name, value)
        if state["module"] is not None:
            _restore(estimator.module_, state["module"])
        if trainer.grad_scaler is not None and state["grad_scaler"]:  # {} when disabled
            trainer.grad_scaler.load_state_dict(state["grad_scaler"])
        trainer.history[:] = decode_state(state["history"])
        trainer.n_epochs = dict(state["n_epochs_by_stage"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["generator"])
        np.random.set_state(decode_state(rng["numpy"]))
        if self.device.type == "cuda" and rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    # ------------------------------------------------------------------ writing
    def _capture_stage(self, trainer, stage):
        estimator = self.estimator
        attributes = {
            name: value
            for name, value in vars(estimator).items()
            if name not in self.known_attributes and name.endswith("_")
            and not name.startswith("_") and not isinstance(value, nn.Module)
        }
        return {
            "name": stage.name,
            "n_epochs": stage.n_epochs,
            "n_steps": stage.n_steps,
            "last_lr": stage.last_lr,
            "optimizers": [encode_state(o.state_dict()) for o in stage.optimizers],
            "scheduler": None if stage.scheduler is None else encode_state(
                {k: v for k, v in vars(stage.scheduler).items() if _plain(v)}
            ),
            "ema": None if stage.ema is None else {
                "n_updates": stage.ema.n_updates,
                "average": None if self._in_module(stage.ema.average)
                else encode_state(stage.ema.average),
            },
            "rule": dict(vars(stage.rule)),
            "registered": {name: _capture(thing) for name, thing in stage.state.items()},
            "attributes": encode_state(attributes),
            "module": _capture(estimator.module_) if hasattr(estimator, "module_") else None,
            "grad_scaler": (None if trainer.grad_scaler is None
                            else encode_state(trainer.grad_scaler.state_dict())),
            "history": encode_state(trainer.history),
            "n_epochs_by_stage": dict(trainer.n_epochs),
            "rng": {
                "torch": torch.get_rng_state(),
                "generator": self.generator.get_state(),
                "numpy": encode_state(np.random.get_state()),
                "cuda": (torch.cuda.get_rng_state(self.device)
                         if self.device.type == "cuda" else None),
            },
        }

    def _in_module(self, tensors):
        """Whether every tensor is one of ``module_``'s (TEMI's teacher heads, the average of
        its students): saved once, with the module."""
        module = getattr(self.estimator, "module_", None)
        if module is None:
            return False
        held = {t.data_ptr() for t in module.state_dict().values()}
        return all(t.data_ptr() in held for t in tensors)

    def epoch_done(self, trainer, stage):
        """After an epoch of a running stage: write it if the last write is old enough."""
        if time.perf_counter() - self.last_write >= CHECKPOINT_INTERVAL:
            self.running = self._capture_stage(trainer, stage)
            self._write()

    def stage_done(self, trainer, stage):
        """After a stage's last epoch (its cap or the stopping rule): write its end."""
        self.finished.append(self._capture_stage(trainer, stage))
        self.running = None
        self._write()

    def _write(self):
        """Write the file whole, through a temporary file and a rename: an interruption while
        writing leaves the previous file intact."""
        content = {
            "format": _FORMAT,
            "fingerprint": self.fingerprint,
            "seed": self.seed,
            "finished": self.finished,
            "running": self.running,
        }
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        temporary = f"{self.path}.tmp{os.getpid()}"
        torch.save(content, temporary)
        os.replace(temporary, self.path)
        self.last_write = time.perf_counter()

    def remove(self):
        """Delete the file (after a completed fit)."""
        if os.path.exists(self.path):
            os.remove(self.path)
