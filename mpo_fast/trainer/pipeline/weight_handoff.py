"""Handing updated weights from the trainer thread to the rollout side without a torn read.

With max_staleness > 0 the producer generates while the optimizer writes the parameters, so it
cannot sample from the training module itself. `RolloutCopy` keeps a second module for the
producer and a staging buffer between them:

    trainer thread, after update v : staging <- trainable parameters   (publish, under the lock)
    producer thread, before step j : rollout module <- staging          (sync, under the lock)

Only trainable parameters travel (frozen ones never differ): for a LoRA policy that is the
adapter (a few MB), for full fine-tuning every weight (135M x 4 B = 540 MB per copy for the
embedded model). On CUDA the publish copies are queued on the trainer's stream and the producer's
stream waits on an event recorded after them, so neither thread blocks on the device.
"""
from __future__ import annotations

import copy
import threading

import torch


class RolloutCopy:
    def __init__(self, model: torch.nn.Module):
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        if not self.names:
            raise ValueError("the policy has no trainable parameters to hand over")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        params = dict(model.named_parameters())
        self._staged = {n: params[n].detach().clone() for n in self.names}
        self._targets = dict(self.module.named_parameters())
        self._lock = threading.Lock()
        self._event = None
        self.staged_version: int | None = None
        self.loaded_version: int | None = None

    @torch.no_grad()
    def publish(self, model: torch.nn.Module, version: int) -> None:
        params = dict(model.named_parameters())
        with self._lock:
            for n in self.names:
                self._staged[n].copy_(params[n].detach(), non_blocking=True)
            if self._staged[self.names[0]].is_cuda:
                self._event = torch.cuda.Event()
                self._event.record()
            self.staged_version = version

    @torch.no_grad()
    def sync(self, version: int) -> None:
        with self._lock:
            if self.staged_version is None:
                return  # nothing published yet: the copy still holds the initial weights
            if self.staged_version < version:
                raise RuntimeError(f"rollout asked for policy version {version}, only {self.staged_version} was published")
            if self._event is not None:
                torch.cuda.current_stream().wait_event(self._event)
            for n in self.names:
                self._targets[n].copy_(self._staged[n], non_blocking=True)
            self.loaded_version = self.staged_version
