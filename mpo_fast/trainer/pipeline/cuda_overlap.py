"""CUDA streams, events and pinned host buffers that let the stages overlap on one GPU.

- The producer thread generates on `rollout`; the trainer updates on the thread's default stream;
  rewards go to the device and group advantages are computed on `side`. PyTorch's current stream
  is per thread, so each thread selecting its stream once is enough.
- A batch's advantages are ready when `side` reaches the event recorded after them; the trainer's
  stream waits on that event (a device-side wait: the host never blocks) and the tensors are
  marked as used on the trainer's stream so the caching allocator does not recycle them early.
- Host -> device copies of rewards go through page-locked (pinned) buffers so they are truly
  asynchronous; a pageable source makes cudaMemcpyAsync stage through a driver buffer and block.

Everything degrades to no-ops on CPU (and when torch sees no CUDA device), so the same pipeline
code runs everywhere.
"""
from __future__ import annotations

import threading
from contextlib import nullcontext

import torch


class StreamSet:
    def __init__(self, device: str | torch.device | None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.enabled = self.device.type == "cuda" and torch.cuda.is_available()
        if self.enabled:
            self.rollout = torch.cuda.Stream(self.device)
            self.side = torch.cuda.Stream(self.device)
        else:
            self.rollout = self.side = None
        self._pinned: dict[tuple, tuple] = {}  # (shape, dtype) -> (pinned buffer, event after its last copy)
        self._pin_lock = threading.Lock()

    def use(self, which: str):
        """Context selecting the rollout or side stream on the calling thread (no-op on CPU)."""
        stream = getattr(self, which) if self.enabled else None
        return torch.cuda.stream(stream) if stream is not None else nullcontext()

    def record(self, which: str):
        """An event after the work queued so far on `which` (None on CPU)."""
        if not self.enabled:
            return None
        event = torch.cuda.Event()
        event.record(getattr(self, which))
        return event

    def wait(self, event, *tensors: torch.Tensor) -> None:
        """Make the calling thread's current stream wait for `event` and own `tensors` from now on."""
        if not self.enabled or event is None:
            return
        current = torch.cuda.current_stream(self.device)
        current.wait_event(event)
        for t in tensors:
            if t is not None and t.is_cuda:
                t.record_stream(current)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """Copy a host tensor to the device through a pinned buffer on the current stream (async)."""
        if not self.enabled:
            return tensor
        key = (tuple(tensor.shape), tensor.dtype)
        with self._pin_lock:
            buf, last_copy = self._pinned.get(key, (None, None))
            if buf is None:
                buf = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            # The buffer is reused for every batch of this shape: the host must not overwrite it
            # while the previous asynchronous copy out of it may still be reading it.
            if last_copy is not None:
                last_copy.synchronize()
            buf.copy_(tensor)
            out = buf.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))
            self._pinned[key] = (buf, done)
        return out
