"""Run ``autotimm train`` and kill -9 itself at a chosen point: the killed runs of tests/test_resume.py.

``python tests/resume_script.py KILL ARGS...`` runs ``autotimm.cli.main(ARGS)``
with a callback that sends SIGKILL to its own process (no clean-up, no
``finally``, as ``kill -9`` from outside) when KILL is reached:

- ``step:N``: before optimizer step N+1, i.e. after every checkpoint of step N was written;
- ``epoch:E``: at the start of epoch E, after the checkpoints of epoch E-1 were written;
- ``write:N``: during the N-th checkpoint write: half of the file is written, then the process dies;
- ``none``: never.

With ``RESUME_TRACE=FILE`` in the environment, a `Trace` callback appends one line per batch to FILE.
"""

from __future__ import annotations

import os
import signal
import sys
import zlib

import pytorch_lightning as pl
import torch

from autotimm.training import trainer as trainer_module


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class _Kill(pl.Callback):
    def __init__(self, kind: str, at: int) -> None:
        self.kind, self.at = kind, at

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if self.kind == "step" and trainer.global_step >= self.at:
            _die()

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if self.kind == "epoch" and trainer.current_epoch >= self.at:
            _die()


class Trace(pl.Callback):
    """Append ``epoch batch step sum(x) lr sum(weights) crc32(rng state)`` of every batch to a file.

    Drawing nothing itself, so a traced run trains exactly as an untraced one.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        weights = sum(float(p.detach().double().sum()) for p in pl_module.parameters())
        rng = zlib.crc32(torch.get_rng_state().numpy().tobytes())
        with open(self.path, "a") as out:
            out.write(
                f"{trainer.current_epoch} {batch_idx} {trainer.global_step} {float(batch[0].double().sum())!r} "
                f"{lr!r} {weights!r} {rng}\n"
            )


def _slow_write_kill(at: int) -> None:
    """Make the ``at``-th ``torch.save`` into a file write half its bytes and then kill the process."""
    save, count = torch.save, [0]

    def dying_save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        count[0] += 1
        if count[0] < at or isinstance(f, (str, os.PathLike)):
            save(obj, f, *args, **kwargs)
            return
        import io

        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])  # type: ignore[attr-defined]
        f.flush()  # type: ignore[attr-defined]
        _die()

    torch.save = dying_save


def main() -> int:
    kill, args = sys.argv[1], sys.argv[2:]
    kind, _, at = kill.partition(":")
    extra: list[pl.Callback] = [Trace(os.environ["RESUME_TRACE"])] if os.environ.get("RESUME_TRACE") else []
    if kind == "write":
        _slow_write_kill(int(at))
    if kind in ("step", "epoch") or extra:
        init = trainer_module.AutoTrainer.__init__
        if kind in ("step", "epoch"):
            extra.append(_Kill(kind, int(at)))

        def patched(self: trainer_module.AutoTrainer, *a: object, **k: object) -> None:
            k["callbacks"] = list(extra)
            init(self, *a, **k)

        trainer_module.AutoTrainer.__init__ = patched  # type: ignore[method-assign]
    from autotimm.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
