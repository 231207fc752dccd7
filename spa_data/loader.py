"""ShardDataset (map-style, one sample per index) and make_loader (batches on the device).

Files are opened lazily in whichever process reads them (the dataset pickles as a
path and settings only), so the dataset is safe in DataLoader workers under fork, spawn
and forkserver, and with DistributedSampler.

Two paths to a batch:
- CPU: each worker decodes, resizes and pads its samples; the collate pads and normalises.
- CUDA: workers return the stored bytes (JPEG or raw pixels) plus the labels; the main
  process decodes the whole batch with nvJPEG (``decode_jpeg(list, device="cuda")``),
  resizes same-sized images together, pads, flips and normalises on the GPU, on a side stream
  in a helper thread, up to three batches ahead (so decoding overlaps the training step instead of adding
  to it; with worker processes the CPU path finishes batches on a helper thread too). Collated
  tensors come from pinned memory with non_blocking copies.

Horizontal flip mirrors the image, boxes, masks and every grid about the vertical axis
of the content's stride-aligned box ``[0, Wf)``, ``Wf = ceil(w / max_stride) * max_stride``
(<= canvas width): a mirror of grid columns, hence exact at every stride; IN-S content
(64 px) stays at the upper left.

Resize jitter (multi-scale training, :mod:`spa_data.jitter`): ``ds[(epoch, i, short_side)]`` lays
sample ``i`` out at another fit geometry. The image is resized from its original on the
device as always; boxes and masks are scaled from the originals; the selection labels are
recomputed at the new layout by ``spa_data.labels`` with the shards' own settings (the code
and coverage rule of ``spa-data labels``).
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import math
import queue
import signal
import struct
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from spa_common.errors import SpaError
from spa_data.geometry import Geometry
from spa_data.images import decode_jpeg_rgb, decoder_message
from spa_data.jitter import jittered_layout
from spa_data.labels import selection_labels, threshold_code
from spa_data.rle import decode_rle
from spa_data.shards import ShardReader, load_index, open_listed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BATCH_MULTIPLE = 32


# ------------------------------------------------------------------------------------ dataset


class ShardDataset(Dataset):
    """The samples of a shard directory (or its subset directory, or its index.json).

    ``ds[i]`` is a dict: ``image`` uint8 (3, H, W) on the canonical canvas, ``image_id``,
    ``select`` {stride: float32 (H/stride, W/stride) of 0/1, positive iff coverage >
    select_threshold}, ``image_size`` (h, w) of the content extent, ``original_size`` (h, w) of
    the source image, and the task targets:
    cls ``label`` (int64), multilabel ``labels`` (float32 (num_classes,)), det ``boxes``
    float32 (K, 4) in pixels of ``image``, ``categories`` int64 (K,), ``iscrowd`` uint8 (K,)
    and ``masks`` uint8 (K, H, W) where the subset has masks (objects without one get their box).
    ``ds[(epoch, i, short_side)]`` is sample ``i`` resized to that short side (see ``spa_data.jitter``).
    """

    def __init__(self, path: str | Path, *, select_threshold: float = 0.0, train: bool = False,
                 hflip: float = 0.5, masks: bool = True, seed: int = 0):
        self.path, self.index = load_index(Path(path))
        self.seed = seed
        self.select_threshold = select_threshold
        self._code = threshold_code(select_threshold)
        self.train = train
        self.hflip = hflip if train else 0.0
        self.with_masks = masks and bool(self.index.get("has_masks"))
        self.task: str = self.index["task"]
        self.classes: list[str] = list(self.index["classes"])
        self.num_classes = len(self.classes)
        self.category_ids = self.index.get("category_ids")
        self.strides: list[int] = list(self.index["strides"])
        self.geometry = Geometry.from_json(self.index["geometry"])
        counts = [entry["num_samples"] for entry in self.index["shards"]]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._readers: dict[int, ShardReader] = {}
        self._image_ids: Optional[list] = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_readers"] = {}  # h5py handles never cross a process boundary
        return state

    @property
    def image_ids(self) -> list:
        if self._image_ids is None:
            self._image_ids = [i for k in range(len(self.index["shards"])) for i in self._reader(k).image_ids]
        return self._image_ids

    def _reader(self, k: int) -> ShardReader:
        reader = self._readers.get(k)
        if reader is None:
            reader = self._readers[k] = open_listed(self.path, self.index, k)
        return reader

    def raw(self, i: int) -> dict:
        """Stored fields of sample ``i`` (image still encoded), and ``where`` it is (for messages)."""
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range 0..{len(self) - 1}")
        k = int(np.searchsorted(self._starts, i, side="right") - 1)
        reader = self._reader(k)
        raw = reader.read(i - int(self._starts[k]), objects=self.task == "det")
        raw["where"] = f"{reader.path}: sample {i - int(self._starts[k])} (image {raw['image_id']!r})"
        return raw

    def draw(self, epoch: int, i: int, k: int = 0) -> float:
        """Uniform draw ``k`` in [0, 1) for sample ``i`` in ``epoch``: a hash of (seed, epoch, i, k)
        alone, so the sample is augmented alike by whichever worker, process or resumed run reads
        it. A hash rather than a generator seeded per sample: this runs for every sample."""
        key = struct.pack("<4Q", *(v % 2**64 for v in (self.seed, epoch, i, k)))
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") / 2**64

    def __getitem__(self, key: int | tuple) -> dict:
        """Sample ``key``: an index (drawn as in epoch 0), ``(epoch, index)``, or
        ``(epoch, index, short_side)`` (resize jitter: laid out with that short side)."""
        sample = self.encoded(key)
        try:
            sample["image"] = render_image(sample.pop("encoded"), sample.pop("image_format"), sample["orig_hw"],
                                           sample["resized_hw"], sample["canvas_hw"], sample["flip_width"])
        except RuntimeError as e:
            raise SpaError(f"{sample['where']}: image does not decode ({decoder_message(e)})") from None
        for name in ("orig_hw", "resized_hw", "flip_width", "where"):
            sample.pop(name)
        return sample

    def encoded(self, key: int | tuple) -> dict:
        """Like ``ds[key]`` but with the image left as stored (``encoded``), for batched GPU decoding."""
        epoch, i, short_side = sample_key(key)
        raw = self.raw(i)
        if short_side is not None:
            raw = self._relaid(raw, short_side)
        (h, w), (rh, rw), (ch, cw) = raw["orig_hw"], raw["resized_hw"], raw["canvas_hw"]
        flip = self.hflip > 0 and self.draw(int(epoch), int(i)) < self.hflip
        fw = min(cw, math.ceil(rw / max(self.strides)) * max(self.strides)) if flip else 0
        select = {}
        for s, q in raw["select"].items():
            grid = torch.from_numpy((q > self._code).astype(np.float32))
            select[s] = _flip_columns(grid, fw // s) if flip else grid
        out = {"image_id": raw["image_id"], "encoded": torch.from_numpy(np.asarray(raw["image"])),
               "image_format": raw["image_format"], "orig_hw": (h, w), "resized_hw": (rh, rw), "canvas_hw": (ch, cw),
               "flip_width": fw, "select": select, "image_size": (rh, fw or rw), "original_size": (h, w),
               "where": raw["where"]}
        if self.task == "cls":
            out["label"] = torch.tensor(raw["label"], dtype=torch.int64)
        elif self.task == "multilabel":
            out["labels"] = torch.from_numpy(raw["labels"].astype(np.float32))
        else:
            out.update(self._det_targets(raw, fw))
        return out

    def _relaid(self, raw: dict, short_side: int) -> dict:
        """``raw`` at the fit geometry of ``short_side``, its labels recomputed there."""
        if self.task != "det":
            raise SpaError(f"{self.path}: resize jitter needs detection shards, these are {self.task!r}")
        h, w = raw["orig_hw"]
        layout = jittered_layout(self.geometry, short_side, width=w, height=h)
        (rw, rh), (cw, ch) = layout.resized, layout.canvas
        if (rh, rw) == raw["resized_hw"] and (ch, cw) == raw["canvas_hw"]:
            return raw
        objects = [{"box": box.tolist(), "iscrowd": bool(crowd),
                    "mask": {"size": [h, w], "counts": rle} if rle else None}
                   for box, crowd, rle in zip(raw["boxes"], raw["iscrowd"], raw["rles"])]
        select = selection_labels(objects, w, h, layout, self.strides, use_masks=self.index["use_masks"],
                                  crowd=self.index["crowd"])
        return {**raw, "resized_hw": (rh, rw), "canvas_hw": (ch, cw), "select": select}

    def _det_targets(self, raw: dict, flip_width: int) -> dict:
        (h, w), (rh, rw), (ch, cw) = raw["orig_hw"], raw["resized_hw"], raw["canvas_hw"]
        boxes = torch.from_numpy(raw["boxes"].astype(np.float32)) * torch.tensor([rw / w, rh / h, rw / w, rh / h])
        if flip_width:
            boxes = torch.stack([flip_width - boxes[:, 2], boxes[:, 1], flip_width - boxes[:, 0], boxes[:, 3]], 1)
        out = {"boxes": boxes, "categories": torch.from_numpy(raw["categories"].astype(np.int64)),
               "iscrowd": torch.from_numpy(raw["iscrowd"].astype(np.uint8))}
        if self.with_masks:   # every sample of a subset with masks gets them, so batches stay uniform
            decoded = [decode_rle(r, h, w) if r else _box_mask(box, h, w) for r, box in zip(raw["rles"], raw["boxes"])]
            masks = (F.interpolate(torch.from_numpy(np.stack(decoded))[None], size=(rh, rw), mode="nearest-exact")[0]
                     if decoded else torch.zeros((0, rh, rw), dtype=torch.uint8))
            masks = F.pad(masks, (0, cw - rw, 0, ch - rh))
            out["masks"] = _flip_columns(masks, flip_width) if flip_width else masks
        return out


def _box_mask(box: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pixels whose centres lie in the box (a stand-in mask for an object without one)."""
    m = np.zeros((h, w), dtype=np.uint8)
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    m[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = 1
    return m


def _flip_columns(t: torch.Tensor, width: int) -> torch.Tensor:
    """Mirror the first ``width`` columns (last dimension) of ``t``."""
    out = t.clone()
    out[..., :width] = t[..., :width].flip(-1)
    return out


def render_image(encoded: torch.Tensor, image_format: str, orig_hw, resized_hw, canvas_hw, flip_width: int = 0,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """Stored image -> uint8 (3, H, W) on the canvas (decode, resize, pad, flip)."""
    return render_images([encoded], image_format, [orig_hw], [resized_hw], canvas_hw, [flip_width], device)[0]


def render_images(encoded: list[torch.Tensor], image_format: str, orig_hw: list, resized_hw: list, canvas_hw,
                  flip_widths: list[int], device: str | torch.device) -> torch.Tensor:
    """Decode a batch on ``device`` and place it on one (B, 3, H, W) uint8 canvas.

    Images that share (original size, resized size, flip) go through resize and flip together.
    """
    from torchvision.transforms.v2.functional import resize

    device = torch.device(device)
    if image_format == "jpeg":
        decoded = decode_jpeg_rgb(encoded, device)
    elif image_format == "raw" and isinstance(encoded, torch.Tensor):   # one copy for a uniform batch
        (h, w), = set(map(tuple, orig_hw))
        decoded = encoded.to(device, non_blocking=True).view(-1, h, w, 3).permute(0, 3, 1, 2)
    elif image_format == "raw":
        decoded = [e.to(device, non_blocking=True).view(h, w, 3).permute(2, 0, 1)
                   for e, (h, w) in zip(encoded, orig_hw)]
    else:
        raise SpaError(f"unknown image_format {image_format!r} in shard")
    canvas = torch.zeros((len(orig_hw), 3, *canvas_hw), dtype=torch.uint8, device=device)
    groups: dict[tuple, list[int]] = {}
    for b, key in enumerate(zip(orig_hw, resized_hw, flip_widths)):
        groups.setdefault(tuple(key), []).append(b)
    for ((h, w), (rh, rw), fw), members in groups.items():
        x = decoded if len(members) == len(decoded) and torch.is_tensor(decoded) else torch.stack(
            [decoded[b] for b in members])
        if (rh, rw) != (h, w):
            x = resize(x, [rh, rw], antialias=True)
        if fw:
            x = F.pad(x, (0, fw - rw)).flip(-1)   # the content mirrored within [0, fw)
        # slices, not an index tensor: its host-to-device copy would make the host wait for the decode
        runs = [members] if members == list(range(members[0], members[-1] + 1)) else [[b] for b in members]
        start = 0
        for run in runs:
            canvas[run[0]:run[-1] + 1, :, :rh, :max(rw, fw)] = x[start:start + len(run)]
            start += len(run)
    return canvas


# ------------------------------------------------------------------------------------ batches


@dataclass
class Batch:
    """One batch on its device (docs/shards.md, "Loading")."""

    images: torch.Tensor                       # float32 (B, 3, H, W), normalised
    select: dict[int, torch.Tensor]            # {stride: float32 (B, H/stride, W/stride)}
    targets: Any                               # cls: (B,) int64; multilabel: (B, K); det: list of dicts
    image_ids: list
    image_sizes: list[tuple[int, int]]         # (h, w) of each image's content extent
    original_sizes: list[tuple[int, int]]      # (h, w) of each source image


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 normalised with ImageNet mean/std."""
    mean, std = _mean_std(images.device)
    return (images.float() - mean) / std


@functools.lru_cache(maxsize=None)
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The constants, copied to ``device`` once (each copy would make the host wait for the device)."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    return mean, torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255


def _batch_hw(samples: list[dict], strides: list[int]) -> tuple[int, int]:
    m = max(BATCH_MULTIPLE, max(strides))
    h = max(s["canvas_hw"][0] for s in samples)
    w = max(s["canvas_hw"][1] for s in samples)
    return math.ceil(h / m) * m, math.ceil(w / m) * m


def _pad_to(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2]))


class Collate:
    """Collate samples into CPU tensors; ``encoded=True`` keeps images as stored for the GPU."""

    def __init__(self, task: str, strides: list[int], encoded: bool):
        self.task, self.strides, self.encoded = task, strides, encoded

    def __call__(self, samples: list[dict]) -> dict:
        failed = [s["error"] for s in samples if "error" in s]
        if failed:   # raised by finish_batch in the main process, as one line
            return {"error": failed[0]}
        bh, bw = _batch_hw(samples, self.strides)
        out = {
            "select": {st: torch.stack([_pad_to(s["select"][st], bh // st, bw // st) for s in samples])
                       for st in self.strides},
            "image_ids": [s["image_id"] for s in samples],
            "image_sizes": [tuple(s["image_size"]) for s in samples],
            "original_sizes": [tuple(s["original_size"]) for s in samples],
            "batch_hw": (bh, bw),
        }
        if self.encoded:
            out.update({k: [s[k] for s in samples]
                        for k in ("encoded", "orig_hw", "resized_hw", "flip_width", "where")})
            out["image_format"] = samples[0]["image_format"]
            if out["image_format"] == "raw" and len(set(out["orig_hw"])) == 1:
                out["encoded"] = torch.stack(out["encoded"])   # one pinned host-to-device copy
        else:
            out["images"] = torch.stack([_pad_to(s["image"], bh, bw) for s in samples])
        if self.task == "cls":
            out["targets"] = torch.stack([s["label"] for s in samples])
        elif self.task == "multilabel":
            out["targets"] = torch.stack([s["labels"] for s in samples])
        else:
            out["targets"] = [_det_target(s) for s in samples]
        return out


def _det_target(sample: dict) -> dict:
    target = {"boxes": sample["boxes"], "labels": sample["categories"] + 1, "iscrowd": sample["iscrowd"]}
    if "masks" in sample:
        target["masks"] = sample["masks"]
    return target


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, list):
        return [_to_device(v, device) for v in x]
    return x


def finish_batch(collated: dict, device: torch.device) -> Batch:
    """Move a collated batch to ``device``; decode (GPU path), pad and normalise there."""
    if "error" in collated:
        raise SpaError(collated["error"])
    if "encoded" in collated:
        args = (collated["image_format"], collated["orig_hw"], collated["resized_hw"], collated["batch_hw"],
                collated["flip_width"], device)
        try:
            images = render_images(collated["encoded"], *args)
        except RuntimeError as e:
            raise SpaError(f"{_undecodable(collated, device)}: image does not decode ({decoder_message(e)})") from None
    else:
        images = collated["images"].to(device, non_blocking=True)
    return Batch(images=normalize(images), select=_to_device(collated["select"], device),
                 targets=_to_device(collated["targets"], device), image_ids=collated["image_ids"],
                 image_sizes=collated["image_sizes"], original_sizes=collated["original_sizes"])


def _undecodable(collated: dict, device: torch.device) -> str:
    """Where the first image of a batch that fails to decode alone is (the batch decoder does not say)."""
    if collated["image_format"] == "jpeg":
        for encoded, where in zip(collated["encoded"], collated["where"]):
            try:
                decode_jpeg_rgb(encoded, device)
            except RuntimeError:
                return where
    return ", ".join(collated["where"])


def sample_key(key: int | tuple) -> tuple[int, int, int | None]:
    """(epoch, index, short_side or None) of a dataset key: an index, ``(epoch, index)`` or
    ``(epoch, index, short_side)``."""
    if isinstance(key, (int, np.integer)):
        return 0, int(key), None
    epoch, i, *short_side = key
    return int(epoch), int(i), (int(short_side[0]) if short_side else None)


class _Reported(Dataset):
    """What DataLoader workers index: a ``SpaError`` comes back as data (``{"error": line}``) and
    is raised in the main process, so a damaged shard or image ends in its own one line, not in
    a worker's traceback. ``encoded``: the GPU path's ``ds.encoded``."""

    def __init__(self, ds: ShardDataset, encoded: bool):
        self.ds, self.encoded = ds, encoded

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key) -> dict:
        try:
            return self.ds.encoded(key) if self.encoded else self.ds[key]
        except SpaError as e:
            return {"error": str(e)}


class EpochKeys(Sampler):
    """Yields ``(epoch, index)`` for each index of ``sampler``, so a sample's random draws
    (``ShardDataset.draw``) depend on (seed, epoch, index) only: exact under any number of
    workers and on resume. The epoch is ``sampler.epoch`` (DistributedSampler's ``set_epoch``),
    else the number of passes started."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.passes = 0

    def __iter__(self):
        epoch = getattr(self.sampler, "epoch", self.passes)
        self.passes += 1
        return ((epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


@dataclass
class ShardLoader:
    """Iterates batches already on ``device``; with ``prefetch``, on CUDA or with worker processes, a
    helper thread finishes them ahead (:class:`_Prefetched`), one pass at a time."""

    loader: DataLoader
    device: torch.device
    prefetch: bool = True

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def sampler(self):
        sampler = self.loader.sampler
        return sampler.sampler if isinstance(sampler, EpochKeys) else sampler

    def close(self) -> None:
        """Stop the helper thread, then shut the worker processes down."""
        self._close_passes()
        close_workers(self.loader)

    def _close_passes(self) -> None:
        for running in list(_RUNNING_PASSES):
            if running.loader is self.loader:
                running.close()

    def __iter__(self) -> Iterator[Batch]:
        if not self.prefetch or (self.device.type != "cuda" and not self.loader.num_workers):
            return (finish_batch(collated, self.device) for collated in self.loader)
        self._close_passes()  # passes share the persistent workers' one DataLoader iterator
        return _Prefetched(self.loader, self.device)


_END = object()
_RUNNING_PASSES: weakref.WeakSet = weakref.WeakSet()   # closed by their loader, and at exit before the workers


class _Prefetched:
    """One pass over ``loader``: a helper thread finishes its batches (decode, resize, normalise; on
    CUDA on a side stream) up to ``depth`` queued ahead, plus the one it holds while the queue is full,
    and this iterator hands them over in order. Decoding
    holds the host (nvJPEG's host stage, stream waits): on the training thread that time adds to every
    step, on its own thread it overlaps the step.

    ``close()``, from any thread, stops the helper and waits for it (the loader closes its pass before
    another one and at exit); a pass dropped unclosed only asks it to stop, since a finaliser may run
    on any thread, the helper's own included.
    """

    def __init__(self, loader: DataLoader, device: torch.device, depth: int = 2):
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.loader = loader
        self.stop = threading.Event()
        self.ready: queue.Queue = queue.Queue(maxsize=depth)
        # the thread holds no reference to this object, so dropping the pass finalises it
        self.thread = threading.Thread(target=_produce, args=(loader, device, self.ready, self.stop),
                                       name="spa-batches", daemon=True)
        _RUNNING_PASSES.add(self)

    def __iter__(self) -> "_Prefetched":
        return self

    def __next__(self) -> Batch:
        if self.stop.is_set():
            raise StopIteration
        if self.thread.ident is None:  # started by the first request, like a generator
            self.thread.start()
        while True:
            try:
                item = self.ready.get(timeout=0.1)
                break
            except queue.Empty:
                if self.stop.is_set():   # closed from another thread
                    raise StopIteration from None
        if item is _END or isinstance(item, BaseException):
            self.close()
            if item is _END:
                raise StopIteration
            raise item
        return _handoff(*item)

    def close(self) -> None:
        self.stop.set()
        if self.thread.ident is not None and self.thread is not threading.current_thread():
            self.thread.join()

    def __del__(self) -> None:
        self.stop.set()


def _produce(loader: DataLoader, device: torch.device, ready: queue.Queue, stop: threading.Event) -> None:
    """The helper thread of a :class:`_Prefetched` pass: (batch, CUDA event or None), then ``_END`` or
    the exception that ended the pass, into ``ready`` while ``stop`` is clear."""
    def offer(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    cuda = device.type == "cuda"
    try:
        stream = torch.cuda.Stream(device) if cuda else None
        with torch.cuda.device(device) if cuda else contextlib.nullcontext(), \
                torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
            collated_batches = iter(loader)
            _close_at_exit(loader)  # again, now that torch has registered its own exit hook
            for collated in collated_batches:
                if stop.is_set():
                    return
                batch = finish_batch(collated, device)
                if not offer((batch, stream.record_event() if cuda else None)):
                    return
        offer(_END)
    except BaseException as error:  # raised on the consuming thread
        offer(error)


def _handoff(batch: Batch, finished: Optional[torch.cuda.Event]) -> Batch:
    """On CUDA: make the current stream wait for ``batch`` and keep its memory alive on it."""
    if finished is None:
        return batch
    current = torch.cuda.current_stream(batch.images.device)
    current.wait_event(finished)
    for t in _tensors(batch):
        t.record_stream(current)
    return batch


def _tensors(x: Any) -> Iterator[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, Batch):
        for v in (x.images, x.select, x.targets):
            yield from _tensors(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, list):
        for v in x:
            yield from _tensors(v)


def make_loader(ds: ShardDataset, *, batch_size: int = 1, shuffle: bool = False, sampler=None, num_workers: int = 0,
                device: str | torch.device = "cpu", drop_last: bool = False, multiprocessing_context=None,
                prefetch: bool = True, generator: Optional[torch.Generator] = None,
                batch_sampler=None) -> ShardLoader:
    """Batches of ``ds`` on ``device`` (the GPU path when ``device`` is CUDA).

    ``batch_sampler`` (lists of dataset keys: ``(epoch, index)``, or ``(epoch, index, short_side)``
    for resize jitter) replaces ``batch_size``, ``shuffle``, ``sampler`` and ``drop_last``. Otherwise,
    with random augmentation (``ds.hflip > 0``) the indices travel as ``(epoch, index)`` keys (see
    ``EpochKeys``). Workers leave SIGINT/SIGTERM to the main process; ``close()`` (or the end of the
    program) shuts them down.
    """
    device = torch.device(device)
    gpu = device.type == "cuda"
    if batch_sampler is not None:
        batching = {"batch_sampler": batch_sampler}
    else:
        if sampler is None:
            sampler = RandomSampler(ds, generator=generator) if shuffle else SequentialSampler(ds)
        if ds.hflip > 0:
            sampler = EpochKeys(sampler)
        batching = {"batch_size": batch_size, "sampler": sampler, "drop_last": drop_last}
    loader = DataLoader(
        _Reported(ds, encoded=gpu), **batching, num_workers=num_workers,
        collate_fn=Collate(ds.task, ds.strides, encoded=gpu), pin_memory=gpu,
        persistent_workers=num_workers > 0, worker_init_fn=_leave_signals_to_main if num_workers > 0 else None,
        multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
        prefetch_factor=4 if num_workers > 0 else None, generator=generator)
    if num_workers > 0:
        _close_at_exit(loader)
    return ShardLoader(loader, device, prefetch)


def _leave_signals_to_main(worker_id: int) -> None:
    """A scheduler's SIGTERM (or Ctrl-C) reaches the whole process group: the main process
    finishes its step, saves and shuts the workers down, so the workers must not die first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


_OPEN_LOADERS: "weakref.WeakSet[DataLoader]" = weakref.WeakSet()


def _close_at_exit(loader: DataLoader) -> None:
    """Shut persistent workers down before interpreter exit: ``multiprocessing`` would stop them
    with SIGTERM, which they ignore, and wait forever. (Registered after torch's own exit hook,
    so it runs first, while the DataLoader can still shut down.)"""
    atexit.unregister(_close_open_loaders)   # registered once
    atexit.register(_close_open_loaders)
    _OPEN_LOADERS.add(loader)


def _close_open_loaders() -> None:
    for running in list(_RUNNING_PASSES):   # helper threads first: they may be reading from the workers
        running.close()
    for loader in list(_OPEN_LOADERS):
        close_workers(loader)


def close_workers(loader: DataLoader) -> None:
    """Shut down the persistent worker processes of ``loader`` now (a later pass starts new ones)."""
    iterator = getattr(loader, "_iterator", None)   # where DataLoader keeps the iterator of its persistent workers
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None
