"""One training run: model selection on validation, the test set once at the end, resumable every epoch.

Example::

    >>> recipe = load_recipe("recipes/fashion_mnist/lenet.yaml", {"rule": "fa"})
    >>> metrics = Trainer(recipe, "runs/lenet_fa").fit()       # or Trainer(..., resume=True)
    >>> metrics["test_top1"]

Fine-tuning (``init_from``) starts the model from a checkpoint (:func:`biotorch.init_from`); the head may learn
faster than the backbone (``backbone_lr_scale``), and the backbone may be frozen for the first epochs or the
whole run (``freeze_backbone_epochs``, ``freeze_backbone``: linear probing).

The epoch loop never waits for the device: loss and accuracy are summed on it and read once per epoch.
``step`` is the whole training step (forward, backward, optimizer, feedback update); with
``cuda_graph: true`` it is captured once and replayed. ``train_together`` interleaves the steps of
several runs in one process, each on its own CUDA stream.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..card import describe_start, pct
from ..convert import feedback_step, rule_layers, set_targets
from ..data import DATASETS, DatasetInfo, DeviceLoader, balanced_subset, dataset_info, has_split, imagefolder_info
from ..factory import create_model, data_config
from ..pretrained import init_from
from ..errors import CheckpointError, ConfigError, NonFiniteError
from ..files import LOCK, write_json
from ..hub import RUN_WEIGHTS, checkpoint_config, file_record, load_checkpoint, save_weights
from ..metrics import alignment, count_parameters, gradient_alignment
from ..models import DEFAULT_CFGS
from ..registry import fit_channels, timm_cfg
from ..version import __version__
from ..weights import fetch, folder_source, resolve
from . import checkpoint as ckpt
from . import datasets
from .evaluate import evaluate
from .optim import create_optimizer, create_scheduler
from .recipe import Recipe, describe_parent_recipe, save_recipe
from .records import TensorBoard, plot_alignment, plot_curves, write_history
from .runtime import Distributed, configure_determinism, resolve_amp, resolve_device

_GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture (allocates optimizer state)


def graph_memory(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, ...]:
    """Addresses of the tensors a captured training step reads and writes outside its own memory pool:
    parameters, gradients, buffers (feedback included) and the optimizer's state. A CUDA graph replays on
    these addresses; if one moved (a tensor replaced rather than updated in place) the graph would touch
    freed memory, so the step is captured again."""
    tensors = [*model.parameters(), *model.buffers(), *(p.grad for p in model.parameters() if p.grad is not None),
               *(v for state in optimizer.state.values() for v in state.values() if isinstance(v, Tensor)),
               *(g["lr"] for g in optimizer.param_groups if isinstance(g["lr"], Tensor))]
    return tuple(t.data_ptr() for t in tensors)


PROGRESS_EVERY_S = 30.0  # where stdout is no terminal, a line this often within an epoch


def _say(line: str) -> None:
    print(line, flush=True)  # a line per epoch shows up at once where stdout is a pipe or a file (nohup, CI)


def data_info(recipe: Recipe) -> DatasetInfo:
    """The run's data: a catalogued dataset as it is; an image folder's classes, brought to what the model takes.
    That is the data cfg of the checkpoint fine-tuned (``init_from``: its size, channels, normalisation,
    interpolation and crop), else the architecture's own (:func:`biotorch.registry.timm_cfg`: an image folder's
    preprocessing at its input size) in RGB; then the recipe's ``img_size``, ``in_chans``, ``mean``, ``std`` and
    ``interpolation``."""
    if recipe.data != "imagefolder":
        return dataset_info(recipe.data, recipe.data_dir)
    if recipe.init_from:
        cfg = dict(data_config(recipe.init_from))
    else:  # the cfg of the model from scratch (biotorch.transforms(create_model(...)) says the same), in RGB
        cfg = timm_cfg(recipe.model_name).to_dict()
        fit_channels(cfg, DATASETS["imagefolder"].in_chans)
    cfg.pop("dataset", None)  # a published record's: the folder's images are brought to size by its crop_pct
    if recipe.in_chans is not None:
        fit_channels(cfg, recipe.in_chans)
    if recipe.img_size is not None:
        cfg["input_size"] = (cfg["input_size"][0], recipe.img_size, recipe.img_size)
    cfg.update({k: getattr(recipe, k) for k in ("mean", "std", "interpolation") if getattr(recipe, k) is not None})
    if not len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0]:
        raise ConfigError(f"recipe keys 'mean' {list(cfg['mean'])} and 'std' {list(cfg['std'])} need one value per "
                          f"channel of the images ({cfg['input_size'][0]}; set in_chans to change it)")
    return imagefolder_info(recipe.data_dir, DatasetInfo.from_cfg(cfg))


def seeded_model(recipe: Recipe, info: DatasetInfo, device: torch.device) -> nn.Module:
    """The run's model as initialised from its seed (``init_from`` then starts it from a checkpoint), its timm cfg
    describing the run's data (size, normalisation, crop, classes), so that its checkpoints reload with it."""
    torch.manual_seed(recipe.seed)
    size = {"img_size": info.input_size[1:]} if DEFAULT_CFGS[recipe.model]["img_size"] else {}
    model = create_model(recipe.model_name, num_classes=info.num_classes, in_chans=info.in_chans,
                         device=device, seed=recipe.seed, **size, **recipe.rule_options)
    model.pretrained_cfg.update(input_size=tuple(info.input_size), mean=tuple(info.mean), std=tuple(info.std),
                                interpolation=info.interpolation, crop_pct=info.crop_pct,
                                label_names=tuple(info.label_names) or None)
    model.biotorch_config["input_size"] = list(info.input_size)
    if recipe.weight_init == "xavier":  # from the run's seed, after the model drew its own
        for module in model.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
    return model


def default_run_dir(recipe: Recipe) -> Path:
    start = f"-ft-{resolve(recipe.init_from).label()}" if recipe.init_from else ""
    return Path("runs") / f"{recipe.model_name}.{recipe.data}{start}-seed{recipe.seed}"


# ---------------------------------------------------------------------------------------------------
# the run


class Trainer:
    """A run in ``run_dir``: ``fit()`` trains it to the end; ``begin_epoch``/``step``/``end_epoch``/``finish``
    let ``train_together`` interleave several runs.

    Args:
        recipe: a validated :class:`Recipe`.
        run_dir: where records, checkpoints and weights go (written by rank 0 only).
        resume: continue from ``run_dir/checkpoint`` when there is one.
        progress: progress within each epoch (rank 0): a tqdm bar where stderr is a terminal, else a line through
            ``log`` every ``progress_every_s`` seconds (nohup, CI, a pipe).
        log: where the one line per epoch goes (rank 0).
    """

    def __init__(self, recipe: Recipe, run_dir, *, resume: bool = False, tensorboard: bool = False,
                 progress: bool = True, log: Optional[Callable[[str], None]] = _say, name: Optional[str] = None,
                 progress_every_s: float = PROGRESS_EVERY_S):
        self.recipe, self.run_dir = recipe, Path(run_dir)
        self.name = name or recipe.model_name
        self.device = resolve_device(recipe.device)
        self.dist = Distributed(self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if recipe.cuda_graph and (self.device.type != "cuda" or self.dist.world_size > 1):
            # A recipe written for one GPU still runs elsewhere, step by step; the saved recipe says so.
            why = "one process on CUDA" if self.device.type == "cuda" else f"CUDA, not {self.device.type}"
            print(f"biotorch train: cuda_graph needs {why}: training without it", file=sys.stderr)
            recipe = self.recipe = dataclasses.replace(recipe, cuda_graph=False)
        if recipe.batch_size % self.dist.world_size:
            raise ValueError(f"recipe key 'batch_size' ({recipe.batch_size}) must divide by the number of "
                             f"processes ({self.dist.world_size}): it is the global batch")
        self.log = log if self.dist.main and log is not None else (lambda line: None)
        self.bar = progress and self.dist.main and sys.stderr.isatty()
        self.progress_every_s = progress_every_s if progress and log is not None and not self.bar else None
        created = not self.run_dir.exists()
        self.lock = self._claim_run_dir(resume)
        try:
            self._setup(recipe, resume, tensorboard)
        except BaseException:
            self.close()
            if created and self.dist.main and {p.name for p in self.run_dir.iterdir()} <= {LOCK}:
                shutil.rmtree(self.run_dir, ignore_errors=True)  # a run that never started leaves nothing
            raise

    def _claim_run_dir(self, resume: bool) -> Optional[ckpt.RunLock]:
        """Own the run folder (rank 0 holds its lock for the run's life), clean what killed writes left, and
        refuse to mix two runs in one folder or to resume from an incomplete checkpoint."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"the run folder {self.run_dir} is a file: choose another --out")
        ours = {LOCK, "recipe.yaml", "metrics.json", "config.json", ckpt.CHECKPOINT}
        if self.run_dir.is_dir() and not any((self.run_dir / n).exists() for n in ours - {LOCK}) and any(
                p.name not in ours for p in self.run_dir.iterdir()):
            raise ConfigError(f"{self.run_dir} is a folder of other files, not a run: --out takes a new or empty "
                              "folder (or a run, with --resume)")
        lock = ckpt.RunLock(self.run_dir).acquire() if self.dist.main else None
        if lock is not None:
            for path in ckpt.remove_stale_files(self.run_dir):
                self.log(f"[{self.name}] removed {path.name}, left by a write that was killed")
        holds_run = any((self.run_dir / n).exists() for n in ("recipe.yaml", "metrics.json", ckpt.CHECKPOINT))
        if holds_run and not resume:
            if lock is not None:
                lock.release()
            raise ConfigError(f"{self.run_dir} already holds a run: continue it with --resume {self.run_dir}, "
                              "or choose another --out")
        if resume and (self.run_dir / ckpt.CHECKPOINT).exists() and ckpt.find_checkpoint(self.run_dir) is None:
            if lock is not None:
                lock.release()
            raise CheckpointError(f"{self.run_dir / ckpt.CHECKPOINT} is incomplete (no state.json): it cannot be "
                                  "resumed; start the run again in a new folder")
        return lock

    def _setup(self, recipe: Recipe, resume: bool, tensorboard: bool) -> None:
        if recipe.init_from:
            self.log(f"[{self.name}] {describe_parent_recipe(recipe)}")
        configure_determinism(recipe.deterministic)
        random.seed(recipe.seed)
        self._setup_data(recipe)
        found = ckpt.find_checkpoint(self.run_dir) if resume else None
        self._setup_model(recipe, start=found is None)
        self._setup_optimization(recipe)
        self.epoch, self.global_step = 0, 0
        self.best_val, self.best_epoch = -1.0, None
        self.history: list[dict] = []
        self.alignment_records: list[dict] = []
        self.train_time_s, self.images_trained = 0.0, 0
        if found is not None:
            self._restore(ckpt.restore_checkpoint(found, model=self.model, optimizer=self.optimizer,
                                                  scheduler=self.scheduler, scaler=self.scaler,
                                                  device=self.device, epochs=recipe.epochs))
            self.log(f"[{self.name}] resumed from {found} after epoch {self.epoch}")
        self.log(f"[{self.name}] precision: {'fp32' if self.amp == 'none' else self.amp + ' autocast'} "
                 f"({self._amp_why}); the test set is evaluated in fp32")
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_recipe(recipe, self.run_dir / "recipe.yaml")
            write_json(self.run_dir / "config.json", checkpoint_config(self.model, {}))
        self.tensorboard = TensorBoard(self.run_dir / "tensorboard", tensorboard and self.dist.main)

        self.frozen = self.backbone_frozen
        self._set_backbone_trainable(not self.frozen)
        self.net = self._wrap()
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self._correct = torch.zeros((), device=self.device, dtype=torch.int64)
        self._graph = None
        self._graph_memory: tuple[int, ...] = ()
        self._eager_steps = 0
        self._epoch_start = 0.0
        self._alignment_batch = self._fixed_batch()

    # -- setup helpers ------------------------------------------------------------------------------

    def _setup_data(self, recipe: Recipe) -> None:
        """The splits, resident on the device, and their loaders."""
        self.info = data_info(recipe)
        self.has_test = has_split(recipe.data, recipe.data_dir, "test")
        self.val_held_out = recipe.val_size is not None or not has_split(recipe.data, recipe.data_dir, "val")
        if not self.has_test:
            self.log(f"[{self.name}] no test/ in {recipe.data_dir}: no test number will be reported (the run is "
                     "selected on validation; add <data_dir>/test/<class>/ images to measure it)")
        load = dict(data_dir=recipe.data_dir, download=recipe.download, val_size=recipe.val_size,
                    info=self.info, device=self.device)
        train_x, train_y = datasets.load(recipe.data, "train", **load)
        if recipe.limit_train:  # the first images of every class in turn, not the first files (one class)
            keep = balanced_subset(train_y, recipe.limit_train)
            train_x, train_y = train_x[keep], train_y[keep]
        self.val_x, self.val_y = datasets.load(recipe.data, "val", **load)
        self.has_val = len(self.val_y) > 0
        self.split_images = {"train": len(train_y), "val": len(self.val_y)}
        norm = dict(mean=self.info.mean, std=self.info.std, device=self.device, channels_last=recipe.channels_last)
        self.train_loader = DeviceLoader(
            train_x, train_y, recipe.batch_size // self.dist.world_size, train=True, augment=recipe.augment,
            seed=recipe.seed, drop_last=recipe.cuda_graph, rank=self.dist.rank,
            world_size=self.dist.world_size, **norm)
        if len(self.train_loader) == 0:
            raise ValueError(f"recipe key 'batch_size' ({recipe.batch_size}) is larger than the "
                             f"{len(train_y)} training images")
        self.val_loader = DeviceLoader(self.val_x, self.val_y, recipe.eval_batch_size, train=False,
                                       rank=self.dist.rank, world_size=self.dist.world_size, **norm)
        self._norm = norm
        self.log(f"[{self.name}] {recipe.data}: {len(train_y):,} training and {len(self.val_y):,} validation images"
                 f"{' (held out of the training set)' if self.val_held_out and self.has_val else ''} at "
                 f"{'x'.join(map(str, self.info.input_size))}; {recipe.epochs} epoch"
                 f"{'s' if recipe.epochs != 1 else ''} of {len(self.train_loader):,} steps on {self.device}")

    def _setup_model(self, recipe: Recipe, start: bool) -> None:
        """The model from its seed, started from ``init_from`` when ``start`` (a resumed run's checkpoint holds
        everything)."""
        self.model = seeded_model(recipe, self.info, self.device)
        self.started_from: Optional[dict] = None
        if recipe.init_from and start:
            self.started_from = init_from(self.model, recipe.init_from, label_names=self.info.label_names)
            self.log(f"[{self.name}] {describe_start(self.started_from, recipe.rule, recipe.rule_options, recipe.data)}")
        if recipe.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._head = {id(p) for p in self.model.get_classifier().parameters()}
        self._direct = any(layer.output_error is not None for _, layer in rule_layers(self.model))  # once, not per step
        self.params_forward, self.params_feedback = count_parameters(self.model)

    def _setup_optimization(self, recipe: Recipe) -> None:
        self.optimizer = create_optimizer(self.model, recipe, self.device, head=self._head)
        self.scheduler = create_scheduler(self.optimizer, recipe, len(self.train_loader))
        self.amp, why = resolve_amp(recipe.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp == "fp16" else None
        self._amp_why = why

    def _wrap(self) -> nn.Module:
        """The module the step calls: the model, in DDP across processes, compiled when the recipe asks."""
        net: nn.Module = self.model
        if self.dist.world_size > 1:
            # Buffers are not broadcast each step: feedback is identical by construction (seeds), and
            # BatchNorm statistics are averaged across ranks at the end of every epoch.
            ddp = nn.parallel.DistributedDataParallel
            no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                       else {"broadcast_buffers": False})
            net = ddp(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None, **no_sync)
        if self.recipe.compile != "none":
            net = torch.compile(net, mode=None if self.recipe.compile == "default" else self.recipe.compile)
        return net

    @property
    def backbone_frozen(self) -> bool:
        """Whether everything but the head is frozen in the epoch about to run (``self.epoch`` done)."""
        return self.recipe.freeze_backbone or self.epoch < self.recipe.freeze_backbone_epochs

    def _set_backbone_trainable(self, trainable: bool) -> None:
        # A frozen parameter gets no gradient, so the optimizer leaves it (and its momentum, weight decay and
        # Adam state) alone, and the backward pass stops at the head.
        for p in self.model.parameters():
            if id(p) not in self._head:
                p.requires_grad_(trainable)

    def _fixed_batch(self) -> tuple[Tensor, Tensor]:
        """A fixed batch (validation, else training images) for gradient alignment."""
        if self.has_val:
            x, y = self.val_x, self.val_y
        else:
            x, y = self.train_loader.images, self.train_loader.labels
        n = min(256, len(y))
        loader = DeviceLoader(x[:n], y[:n], n, train=False, **self._norm)
        return next(iter(loader))

    def _restore(self, state: dict) -> None:
        self.started_from = state.get("started_from")
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.best_val, self.best_epoch = state["best_val"], state["best_epoch"]
        self.history, self.alignment_records = state["history"], state["alignment"]
        self.train_time_s, self.images_trained = state["train_time_s"], state["images_trained"]
        if self.recipe.amp == "auto" and state.get("amp") in ("none", "bf16"):
            # amp auto was resolved where the run started: it ends in the same precision, on any machine
            self.amp, self._amp_why = state["amp"], "amp auto, as resolved where the run started"

    @property
    def done(self) -> bool:
        return self.epoch >= self.recipe.epochs

    def stream_context(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype, cache_enabled=not self.recipe.cuda_graph)

    # -- the training step --------------------------------------------------------------------------

    def begin_epoch(self):
        """The batches of the next epoch (an iterator of (x, y) on the device)."""
        if self.frozen != self.backbone_frozen:  # the backbone starts learning: a new DDP reducer, a new graph
            self.frozen = self.backbone_frozen
            self._set_backbone_trainable(not self.frozen)
            self.net, self._graph, self._eager_steps = self._wrap(), None, 0
        if self._graph is not None and graph_memory(self.model, self.optimizer) != self._graph_memory:
            self.log(f"[{self.name}] a tensor of the captured step moved since capture: capturing it again")
            self._graph = None
        self.model.train()
        if self.frozen:  # frozen means frozen: the backbone's normalisation statistics stay as they are too
            head = set(self.model.get_classifier().modules())
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._NormBase) and module not in head:
                    module.eval()
        self.train_loader.set_epoch(self.epoch)
        self._loss_sum.zero_()
        self._correct.zero_()
        self._epoch_images = 0
        self._epoch_first_step = self.global_step
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # this run's stream only
        self._epoch_start = time.perf_counter()
        batches = iter(self.train_loader)
        if self.bar:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=len(self.train_loader), leave=False, dynamic_ncols=True,
                           desc=f"{self.name} epoch {self.epoch + 1}/{self.recipe.epochs}")
        elif self.progress_every_s is not None:
            batches = self._progress_lines(batches)
        return batches

    def _progress_lines(self, batches):
        """``batches``, with a line through ``log`` every ``progress_every_s`` seconds: where no bar can be drawn, a
        long epoch still shows it is moving (from the host's clock and counters: no device sync)."""
        total, last = len(self.train_loader), self._epoch_start
        for step, batch in enumerate(batches, 1):
            yield batch  # the caller's step on it runs before the generator resumes
            now = time.perf_counter()
            if now - last >= self.progress_every_s and step < total:
                last, seconds = now, now - self._epoch_start
                self.log(f"[{self.name}] epoch {self.epoch + 1}/{self.recipe.epochs}  step {step:,}/{total:,}  "
                         f"{seconds:.0f}s ({self._epoch_images / seconds:,.0f} img/s)")

    def epoch_lr(self) -> float:
        """The head's learning rate averaged over the steps of the epoch being trained (what the epoch line and the
        history report: a warm-up's first step is not the epoch's lr). From the schedule, no device read."""
        steps = range(self._epoch_first_step, self.global_step)
        factor = self.scheduler.lr_lambdas[-1]
        return self.scheduler.base_lrs[-1] * sum(map(factor, steps)) / max(len(steps), 1)

    def _step_ops(self, x: Tensor, y: Tensor) -> None:
        """Forward, backward, optimizer step, feedback update, statistics: all on the device."""
        if self._direct:  # rules that learn from the targets read them from the model's output context (drtp)
            set_targets(self.model, y)
        with self._autocast():
            logits = self.net(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.recipe.label_smoothing)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        feedback_step(self.model)
        self._loss_sum.add_(loss.detach().double() * len(y))
        self._correct.add_((logits.detach().argmax(1) == y).sum())

    def step(self, x: Tensor, y: Tensor) -> None:
        """One training step on a batch; no host synchronisation."""
        if not self.recipe.cuda_graph:
            self.optimizer.zero_grad(set_to_none=True)
            self._step_ops(x, y)
        elif self._graph is None and self._eager_steps < _GRAPH_WARMUP_STEPS:
            # Warm-up on a side stream (as torch.cuda.graphs asks); these are real training steps.
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.optimizer.zero_grad(set_to_none=True)
                self._step_ops(x, y)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._eager_steps += 1
        else:
            if self._graph is None:
                self._static_x, self._static_y = x.clone(), y.clone()
                self.optimizer.zero_grad(set_to_none=True)
                self._graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self._graph, stream=self.stream):
                    self._step_ops(self._static_x, self._static_y)
                self._graph_memory = graph_memory(self.model, self.optimizer)
            else:
                self._static_x.copy_(x)
                self._static_y.copy_(y)
            self._graph.replay()
        self.scheduler.step()
        self.global_step += 1
        self._epoch_images += len(y) * self.dist.world_size

    # -- end of epoch -------------------------------------------------------------------------------

    def _average_buffers(self) -> None:
        """BatchNorm statistics differ per rank (each saw its shard): average them."""
        if self.dist.world_size == 1:
            return
        for module in self.model.modules():
            if not module.training:  # a frozen backbone's statistics did not change
                continue
            for name, buffer in module.named_buffers(recurse=False):
                if buffer.is_floating_point() and not name.startswith("feedback_"):
                    dist.all_reduce(buffer)
                    buffer.div_(self.dist.world_size)

    def _record_alignment(self, epoch: int) -> dict:
        x, y = self._alignment_batch
        was_training = self.model.training
        self.model.train()
        angles = alignment(self.model)
        cosines = gradient_alignment(self.model, lambda m: F.cross_entropy(m(x), y), targets=y)
        self.model.train(was_training)
        layers = {name: {"rule": angles.get(name, {}).get("rule"), "angle": angles.get(name, {}).get("angle"),
                         "norm_ratio": angles.get(name, {}).get("norm_ratio"), "gradient_cosine": cosine}
                  for name, cosine in cosines.items()}
        return {"epoch": epoch, "layers": layers}

    def end_epoch(self) -> dict:
        """Read the epoch's statistics (the one host sync), validate, record, checkpoint."""
        r, epoch = self.recipe, self.epoch + 1
        totals = self.dist.all_sum(torch.stack([self._loss_sum, self._correct.double()]))
        loss_sum, correct = totals.tolist()
        epoch_time = time.perf_counter() - self._epoch_start
        images = self._epoch_images
        self.train_time_s += epoch_time
        self.images_trained += images
        train_loss = loss_sum / images
        if not math.isfinite(train_loss):
            raise NonFiniteError(f"{self.name}: the training loss became {train_loss} in epoch {epoch}; the "
                                 f"checkpoint of epoch {epoch - 1} is kept; lower lr (now {r.lr}) or add warmup_epochs")
        self._average_buffers()
        row = {"epoch": epoch, "train_loss": train_loss, "train_top1": 100.0 * correct / images,
               "val_loss": None, "val_top1": None, "lr": self.epoch_lr(), "epoch_time_s": epoch_time}
        validate = self.has_val and (epoch % r.val_every == 0 or epoch == r.epochs)
        if validate:
            result = evaluate(self.model, self.val_loader, self.info.num_classes, autocast=self._autocast,
                              all_sum=self.dist.all_sum)
            row["val_loss"], row["val_top1"] = result["loss"], result["top1"]
            if not math.isfinite(result["loss"]):
                raise NonFiniteError(f"{self.name}: the validation loss became {result['loss']} in epoch {epoch}; "
                                     f"the checkpoint of epoch {epoch - 1} is kept; lower lr (now {r.lr})")
        improved = (validate and row["val_top1"] > self.best_val) or (not self.has_val and epoch == r.epochs)
        if improved:
            self.best_val, self.best_epoch = row["val_top1"] if validate else -1.0, epoch
        self.history.append(row)
        if r.alignment_every and (epoch % r.alignment_every == 0 or epoch == r.epochs) and self.dist.main:
            self.alignment_records.append(self._record_alignment(epoch))
        self.epoch = epoch
        if self.dist.main:
            # A run finished early (bench's budget, a deadline) and now trained on: its numbers were the old weights'
            (self.run_dir / "metrics.json").unlink(missing_ok=True)
            if improved:
                best = save_weights(self.model, self.run_dir / RUN_WEIGHTS)
                files = {RUN_WEIGHTS: file_record(best)}
                write_json(self.run_dir / "config.json", checkpoint_config(self.model, files))
            write_history(self.run_dir, self.history)
            if self.alignment_records:
                write_json(self.run_dir / "alignment.json", self.alignment_records)
            ckpt.save_checkpoint(self.run_dir, model=self.model, optimizer=self.optimizer,
                                 scheduler=self.scheduler, scaler=self.scaler, state=self._state())
            self.tensorboard.epoch(row)
        val = f"  val loss {row['val_loss']:.4f} top1 {row['val_top1']:.2f}" if validate else ""
        self.log(f"[{self.name}] epoch {epoch}/{r.epochs}  train loss {train_loss:.4f} "
                 f"top1 {row['train_top1']:.2f}{val}  lr {row['lr']:.4g}  {epoch_time:.1f}s "
                 f"({images / epoch_time:,.0f} img/s)")
        return row

    def _state(self) -> dict:
        return {"epoch": self.epoch, "global_step": self.global_step, "best_val": self.best_val,
                "best_epoch": self.best_epoch, "history": self.history, "alignment": self.alignment_records,
                "train_time_s": self.train_time_s, "images_trained": self.images_trained,
                "started_from": self.started_from, "amp": self.amp, "biotorch_version": __version__}

    # -- the end ------------------------------------------------------------------------------------

    def finish(self) -> Optional[dict]:
        """Evaluate the best model on the test set once, write metrics.json and the plots (rank 0)."""
        metrics = None
        if self.dist.main:
            metrics_path = self.run_dir / "metrics.json"
            if metrics_path.is_file():  # a run resumed with nothing left to train: the test set was already used
                metrics = json.loads(metrics_path.read_text())
            else:
                metrics = self._test_metrics()
                write_json(metrics_path, metrics)
            title = f"{self.recipe.model_name} on {self.recipe.data}, seed {self.recipe.seed}"
            plot_curves(self.run_dir / "curves.png", self.history, title)
            if self.alignment_records:
                plot_alignment(self.run_dir / "alignment.png", self.alignment_records, title)
            test = ("no test split" if metrics["test_top1"] is None else
                    f"test top1 {metrics['test_top1']:.2f} top5 {metrics['test_top5']:.2f}")
            self.log(f"[{self.name}] best epoch {metrics['best_epoch']}: val top1 {pct(metrics['val_top1'])}, "
                     f"{test} → {self.run_dir}")
        self.tensorboard.close()
        self.dist.barrier()
        self.close()
        return metrics

    def _test_metrics(self) -> dict:
        best = fetch(folder_source(self.run_dir / RUN_WEIGHTS), require_model=False, config_required=False)
        load_checkpoint(self.model, best.file, best.sha256)  # its sha256 is in the run's config.json
        test = dict.fromkeys(("top1", "top5", "loss"), None) | {"images": 0}  # an image folder without test/
        if self.has_test:
            test_x, test_y = datasets.load(self.recipe.data, "test", self.recipe.data_dir,
                                           download=self.recipe.download, info=self.info, device=self.device)
            loader = DeviceLoader(test_x, test_y, self.recipe.eval_batch_size, train=False, **self._norm)
            # fp32 whatever the run trained in: the card's number is the one `biotorch eval` gives on these bytes
            test = evaluate(self.model, loader, self.info.num_classes)
        r = self.recipe
        return {"model": r.model_name, "arch": r.model, "rule": r.rule, "dataset": r.data, "seed": r.seed,
                "epochs": r.epochs, "epochs_trained": self.epoch, "best_epoch": self.best_epoch,
                "val_top1": self.best_val if self.has_val else None,
                "test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"],
                "images": {**self.split_images, "test": test["images"]}, "val_held_out": self.val_held_out,
                "train_time_s": self.train_time_s,
                "images_per_s": self.images_trained / self.train_time_s if self.train_time_s else None,
                "params_forward": self.params_forward, "params_feedback": self.params_feedback,
                "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
                "world_size": self.dist.world_size, "amp": self.amp, "test_precision": "fp32",
                "biotorch_version": __version__, "recipe": r.to_dict(),
                "init_from": self.started_from}

    def close(self) -> None:
        """Give the run folder back (its lock) and leave the process group; safe to call twice."""
        if getattr(self, "lock", None) is not None:
            self.lock.release()
            self.lock = None

    def fit(self) -> Optional[dict]:
        """Train the remaining epochs, then :meth:`finish`; returns metrics (rank 0) or None."""
        try:
            while not self.done:
                for x, y in self.begin_epoch():
                    self.step(x, y)
                self.end_epoch()
            return self.finish()
        finally:
            self.close()
            self.dist.close()


def train_together(make_trainers, *, max_concurrent: Optional[int] = None,
                   log: Callable[[str], None] = print, deadline: Optional[float] = None) -> list:
    """Train several runs in one process, one step of each in turn, each on its own CUDA stream.

    ``make_trainers`` yields zero-argument callables that build a :class:`Trainer`; at most
    ``max_concurrent`` are alive at once (default all), the next starts when one finishes. One
    process keeps the GPU busy where separate processes would contend; on CPU the steps simply alternate.
    Past ``deadline`` (a ``time.perf_counter()`` value) no new run starts and every active run stops where
    it is and is finished on its best validated epoch (``epochs_trained`` in its metrics says how far it got).
    Returns each run's metrics, or the exception that ended it.
    """
    pending = list(make_trainers)
    limit = max_concurrent or len(pending)
    active: dict[int, tuple[Trainer, object]] = {}
    results: list = [None] * len(pending)
    queue = list(range(len(pending)))
    images, start_time = 0, time.perf_counter()

    def start(index: int) -> None:
        try:
            trainer = pending[index]()
            if trainer.done:
                results[index] = trainer.finish()
                return
            with trainer.stream_context():
                active[index] = (trainer, trainer.begin_epoch())
        except Exception as error:  # one bad run does not stop the others
            log(f"run {index} failed to start: {error}")
            results[index] = error

    while queue or active:
        if deadline is not None and time.perf_counter() > deadline:
            for index in queue:
                results[index] = RuntimeError("not started: the time budget ran out")
            queue.clear()
            for index, (trainer, _) in list(active.items()):
                log(f"[{trainer.name}] stopped by the time budget after epoch {trainer.epoch}/{trainer.recipe.epochs}")
                try:
                    if trainer.epoch == 0:
                        raise RuntimeError("the time budget ran out before its first epoch")
                    results[index] = trainer.finish()
                except Exception as error:
                    results[index] = error
                    trainer.close()
                del active[index]
            break
        while queue and len(active) < limit:
            start(queue.pop(0))
        for index in list(active):
            trainer, batches = active[index]
            try:
                with trainer.stream_context():
                    batch = next(batches, None)
                    if batch is not None:
                        trainer.step(*batch)
                        images += len(batch[1])
                        continue
                    trainer.end_epoch()
                    if not trainer.done:
                        active[index] = (trainer, trainer.begin_epoch())
                        continue
                    results[index] = trainer.finish()
            except Exception as error:
                log(f"[{trainer.name}] failed: {error}")
                results[index] = error
                trainer.close()
            del active[index]
    wall = time.perf_counter() - start_time
    log(f"trained {images:,} images in {wall:.1f}s: {images / wall:,.0f} images/s in aggregate "
        "(including validation, checkpoints and start-up)")
    return results


def seconds_per_round(trainers: list, steps: int, warmup: int = _GRAPH_WARMUP_STEPS + 2) -> float:
    """Seconds for one training step of every trainer in turn (as ``train_together`` runs them), measured
    after ``warmup`` rounds (CUDA-graph capture included there). The steps are real: use scratch runs."""
    streams = []
    for trainer in trainers:
        def batches(trainer=trainer):
            while True:
                yield from trainer.begin_epoch()
        streams.append(batches())

    def run(rounds: int) -> None:
        for _ in range(rounds):
            for trainer, stream in zip(trainers, streams):
                with trainer.stream_context():
                    trainer.step(*next(stream))

    def sync() -> None:
        for device in {t.device for t in trainers if t.device.type == "cuda"}:
            torch.cuda.synchronize(device)

    run(warmup)
    sync()
    start = time.perf_counter()
    run(steps)
    sync()
    return (time.perf_counter() - start) / steps
