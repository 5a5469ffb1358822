"""Train Tandem's default model from scratch on synthetic shapes, on the CPU, in minutes.

    python -m recipes.default_model.train --out DIR [--steps 3000] [--vision-steps 2500] [--seed 0]

Builds the tokenizer, processor and an untrained ``LlavaForConditionalGeneration`` (see
``model``), then trains with plain PyTorch AdamW on batches drawn on the fly from
``data.sample_stream(seed)``, in two phases:

1. vision warm-up (``--vision-steps``): the vision tower and projector alone, with the per-patch
   probes of ``probe``, on batches of pictures without questions (``data`` seed + 1; cheap: no
   language model in the loop);
2. the full model (``--steps``): next-token loss on the assistant answers only (and their
   ``</s>``), plus the probe loss, whose weight fades to ``--aux-floor`` of itself by
   ``--aux-until`` of the phase; the vision tower learns ``--vision-lr-scale`` times slower.

Both phases warm the learning rate up, the second decays it on a cosine. Progress (step, losses,
learning rate, elapsed time, ETA) goes to stdout. Pictures are drawn and chats tokenised in
one background process (a ``DataLoader`` worker, so the order is fixed) while the model trains
with one torch thread (``--threads``): on two cores that keeps both busy. The result is
written with ``save_pretrained`` (weights in float16 safetensors, tokenizer, processor, chat
template, generation config) plus ``training.json`` (settings and timings). The same seed and
thread count give the same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from recipes.default_model.batch import Batch, Encoder
from recipes.default_model.data import Sample, sample_stream
from recipes.default_model.model import Architecture, build_model, build_processor, build_tokenizer
from recipes.default_model.probe import VisionProbe
from recipes.default_model.scenes import random_scene, render

DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one run; the defaults made the shipped checkpoint."""

    out: Path
    steps: int = 3000
    vision_steps: int = 2500
    batch_size: int = 32
    vision_batch_size: int = 64
    lr: float = 2e-3
    vision_lr: float = 2e-3
    vision_lr_scale: float = 0.25
    warmup: int = 100
    weight_decay: float = 0.01
    aux_weight: float = 1.0
    aux_until: float = 0.6
    aux_floor: float = 0.2
    arch: Architecture = field(default_factory=Architecture)
    seed: int = 0
    threads: int = 1
    dtype: str = "float16"
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.steps < 1 or self.vision_steps < 0 or self.batch_size < 1:
            raise ValueError(f"{self.steps=}, {self.batch_size=} must be >= 1, {self.vision_steps=} >= 0")
        if self.dtype not in DTYPES:
            raise ValueError(f"{self.dtype=} must be one of {DTYPES}")


def learning_rate(peak: float, warmup: int, total: int, step: int, cosine: bool = True) -> float:
    """Linear warm-up, then (``cosine``) decay to a tenth of ``peak`` at ``total`` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if not cosine:
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def aux_weight(config: TrainConfig, step: int) -> float:
    """Weight of the probe loss in phase 2: full for half of ``aux_until``, then linearly down to
    ``aux_floor`` (a fraction of full) at ``aux_until``, and that for the rest of the run."""
    end = config.aux_until * config.steps
    ramp = max(0.0, min(1.0, 2 * (1 - step / end))) if end > 0 else 0.0
    return config.aux_weight * max(config.aux_floor, ramp)


def batches(stream: Iterator[Sample], encoder: Encoder, size: int, rng: random.Random) -> Iterator[Batch]:
    """Batches of ``size`` samples; four batches at a time are sorted by length to cut padding."""
    while True:
        pool = [(sample, encoder.encode(sample)) for sample in (next(stream) for _ in range(4 * size))]
        order = sorted(range(len(pool)), key=lambda i: (len(pool[i][1][0]), i))
        chunks = [order[i : i + size] for i in range(0, len(order), size)]
        rng.shuffle(chunks)
        for chunk in chunks:
            yield encoder.collate([pool[i][0] for i in chunk], [pool[i][1] for i in chunk])


class BatchStream(torch.utils.data.IterableDataset[Batch]):
    """``batches`` of ``sample_stream(seed)``, for a ``DataLoader`` with one worker process.

    Drawing the pictures and tokenising is single-threaded Python; in a worker it runs on the
    second core while the first trains, and one worker keeps the order (and so the run) fixed.
    """

    def __init__(self, processor: Any, size: int, seed: int):
        super().__init__()
        self.processor, self.size, self.seed = processor, size, seed

    def __iter__(self) -> Iterator[Batch]:
        return batches(sample_stream(self.seed), Encoder(self.processor), self.size, random.Random(self.seed))


Pictures = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class PictureStream(torch.utils.data.IterableDataset[Pictures]):
    """Batches of ``size`` random scenes alone, for the vision warm-up: (pixel values, patch
    shape labels, patch colour labels)."""

    def __init__(self, processor: Any, size: int, seed: int):
        super().__init__()
        self.processor, self.size, self.seed = processor, size, seed

    def __iter__(self) -> Iterator[Pictures]:
        rng = random.Random(self.seed)
        encoder = Encoder(self.processor)
        while True:
            scenes = [random_scene(rng) for _ in range(self.size)]
            yield encoder.pictures(scenes, [render(scene, rng.getrandbits(32)) for scene in scenes])


def background(dataset: torch.utils.data.IterableDataset[Any]) -> Iterator[Any]:
    """Endless items of ``dataset``, made in one background process (so in a fixed order)."""
    return iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1, prefetch_factor=8))


class Progress:
    """Prints one line every ``every`` steps: step, smoothed losses, learning rate, elapsed, ETA."""

    def __init__(self, phase: str, total: int, every: int):
        self.phase, self.total, self.every = phase, total, every
        self.start = time.monotonic()
        self.smoothed: dict[str, float] = {}

    def update(self, step: int, lr: float, **losses: float) -> None:
        for name, value in losses.items():
            self.smoothed[name] = value if step == 0 else 0.95 * self.smoothed[name] + 0.05 * value
        done = step + 1
        if done % self.every and done != self.total:
            return
        elapsed = time.monotonic() - self.start
        eta = elapsed / done * (self.total - done)
        shown = "  ".join(f"{name} {value:.4f}" for name, value in self.smoothed.items())
        print(
            f"{self.phase} {done:5d}/{self.total}  {shown}  lr {lr:.2e}  "
            f"elapsed {elapsed / 60:5.1f} min  eta {eta / 60:5.1f} min",
            flush=True,
        )


def _step(optimizer: torch.optim.Optimizer, params: list[Any], loss: torch.Tensor, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("scale", 1.0)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def warm_up_vision(model: Any, probe: VisionProbe, data: Iterator[Pictures], config: TrainConfig) -> None:
    """Phase 1: vision tower + projector + probe on the per-patch shape labels."""
    params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]
    params += list(probe.parameters())
    optimizer = torch.optim.AdamW(params, betas=(0.9, 0.98), weight_decay=config.weight_decay)
    progress = Progress("vision", config.vision_steps, config.log_every)
    for step in range(config.vision_steps):
        pixels, shapes, colours = next(data)
        model.model.get_image_features(pixel_values=pixels)
        loss = probe.loss(shapes, colours)
        lr = learning_rate(config.vision_lr, config.warmup, config.vision_steps, step)
        _step(optimizer, params, loss, lr)
        progress.update(step, lr, probe=loss.item())


def train_full(model: Any, probe: VisionProbe, data: Iterator[Batch], config: TrainConfig) -> float:
    """Phase 2: the whole model on the answers, plus the fading probe loss; returns the final loss.

    The vision tower learns ``vision_lr_scale`` times slower than the rest, so the features the
    language model is learning to read stay put while it does.
    """
    vision = list(model.model.vision_tower.parameters())
    seen = {id(p) for p in vision}
    rest = [p for p in [*model.parameters(), *probe.parameters()] if id(p) not in seen]
    groups = [{"params": vision, "scale": config.vision_lr_scale}, {"params": rest, "scale": 1.0}]
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=config.weight_decay)
    params = vision + rest
    progress = Progress("step", config.steps, config.log_every)
    for step in range(config.steps):
        batch = next(data)
        loss = model(**batch.as_kwargs()).loss
        probe_loss = probe.loss(batch.patch_shapes, batch.patch_colours)
        lr = learning_rate(config.lr, config.warmup, config.steps, step)
        _step(optimizer, params, loss + aux_weight(config, step) * probe_loss, lr)
        progress.update(step, lr, loss=loss.item(), probe=probe_loss.item())
    return progress.smoothed["loss"]


def train(config: TrainConfig) -> dict[str, Any]:
    """Run the training described by ``config`` and save the checkpoint; return the run's summary."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    started, cpu_started = time.monotonic(), time.process_time()
    processor = build_processor(build_tokenizer())
    model = build_model(processor.tokenizer, config.arch).train()
    probe = VisionProbe(model)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model: {params / 1e6:.2f}M parameters; {config.vision_steps} vision warm-up steps, then "
        f"{config.steps} steps of {config.batch_size} samples; {config.threads} thread(s)",
        flush=True,
    )
    pictures = background(PictureStream(processor, config.vision_batch_size, config.seed + 1))
    warm_up_vision(model, probe, pictures, config)
    del pictures  # stops its worker
    chats = background(BatchStream(processor, config.batch_size, config.seed))
    loss = train_full(model, probe, chats, config)
    summary = {
        "parameters": params,
        "final_loss": round(loss, 4),
        "train_seconds": round(time.monotonic() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "config": {
            f.name: str(getattr(config, f.name)) if f.name == "out" else getattr(config, f.name)
            for f in fields(config)
            if f.name != "arch"
        },
        "architecture": asdict(config.arch),
        "torch": torch.__version__,
    }
    save(model, processor, config, summary)
    return summary


def save(model: Any, processor: Any, config: TrainConfig, summary: dict[str, Any]) -> None:
    """``save_pretrained`` of the model (in ``config.dtype``) and processor, plus ``training.json``."""
    config.out.mkdir(parents=True, exist_ok=True)
    model.eval().to(getattr(torch, config.dtype)).save_pretrained(config.out)
    processor.save_pretrained(config.out)
    (config.out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    for file in config.out.iterdir():
        file.chmod(0o644)  # save_pretrained writes the weights owner-only
    print(f"saved {config.out} after {summary['train_seconds'] / 60:.1f} min", flush=True)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.default_model.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the checkpoint to")
    defaults = TrainConfig(out=Path("."))
    for setting in fields(TrainConfig):
        if setting.name not in ("out", "dtype", "arch"):
            value = getattr(defaults, setting.name)
            flag = "--" + setting.name.replace("_", "-")
            parser.add_argument(flag, type=type(value), default=value, help="(default: %(default)s)")
    parser.add_argument(
        "--dtype", default=defaults.dtype, choices=DTYPES, help="weight dtype of the saved model"
    )
    sizes = parser.add_argument_group("architecture (defaults: the shipped model's)")
    for setting in fields(Architecture):
        value = getattr(defaults.arch, setting.name)
        flag = "--" + setting.name.replace("_", "-")
        sizes.add_argument(flag, type=type(value), default=value, help="(default: %(default)s)")
    args = vars(parser.parse_args(argv))
    arch = Architecture(**{f.name: args.pop(f.name) for f in fields(Architecture)})
    return TrainConfig(**args, arch=arch)


def main(argv: list[str] | None = None) -> None:
    summary = train(parse_args(argv))
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}))


if __name__ == "__main__":
    main()
