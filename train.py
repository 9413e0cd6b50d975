"""Train a captioner.

    python train.py                                   # built-in shapes dataset, configs/shapes.yaml
    python train.py --config configs/shapes.yaml train.epochs=3 model.cell=gru
    python train.py --resume runs/shapes/last.pt      # continue an interrupted run
    python train.py --force                           # start over in a run_dir that holds a run
    python train.py --config configs/finetune.yaml data.root=my-photos   # fine-tune the shipped photo model
    torchrun --nproc_per_node=4 train.py ...          # data parallel, one process per GPU (captioner/distributed.py)
    python train.py --config configs/scorer.yaml      # a `task: scorer` config: the image–sentence scorer

Every config key can be overridden as a dotted key=value word. Each epoch prints one line (loss,
validation scores, time, an example caption; the full record goes to <run_dir>/history.jsonl). At the
end the best checkpoint is evaluated on the test split, <run_dir>/metrics.json is written, and the
table of its scores, the paths of best.pt and metrics.json and, last, the run directory are printed.
A run_dir that holds another run's checkpoints is refused unless --resume continues that run or --force
starts it over; a run_dir another train.py is writing to is refused too (it is locked while a run trains).
Exit codes: 0 done; 2 bad config, data, image, checkpoint or resume target, or run_dir not writable,
taken or in use (refused before training); 3 non-finite loss, gradient or weight (checkpoints on disk untouched);
4 a write failed during the run, e.g. a full disk (the previous checkpoint is kept); 130 stopped by
SIGINT/SIGTERM after finishing the current step (last.pt saved; continue with --resume), or at once
by a second SIGINT (nothing more saved).
"""
from __future__ import annotations

import argparse
import sys

from captioner.checkpoint import CheckpointError
from captioner.config import ConfigError, load_config
from captioner.data.records import DatasetFormatError
from captioner.encoders.backbones import EncoderError
from captioner.metrics.report import metric_table
from captioner.scorer.training import is_scorer_config
from captioner.scorer.training import main as train_scorer
from captioner.training.stops import EXIT_INTERRUPTED, NonFiniteLoss, TrainingInterrupted

DEFAULT_CONFIG = "configs/shapes.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config file (default: %(default)s)")
    parser.add_argument("--resume", default=None,
                        help="checkpoint to continue from (e.g. runs/shapes/last.pt), or a run directory: its last.pt")
    parser.add_argument("--init-from", default=None, metavar="NAME|DIR|CHECKPOINT",
                        help="fine-tune a release or a checkpoint (the same as the override train.init_from=...)")
    parser.add_argument("--force", action="store_true",
                        help="start a new run in a run_dir that holds one (its last.pt, best.pt and history go)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=3")
    args = parser.parse_args(argv)
    if args.force and args.resume:
        parser.error("--force starts a new run, --resume continues one: give one of them")
    if is_scorer_config(args.config):  # captioner/scorer/training.py trains and measures the scorer
        if args.resume:
            parser.error("--resume: a scorer run (task: scorer) cannot be resumed; start it again")
        return train_scorer(["--config", args.config, *args.overrides])
    try:
        init_from = [f"train.init_from={args.init_from}"] if args.init_from is not None else []
        config = load_config(args.config, [*args.overrides, *init_from])
        from captioner.training.trainer import Trainer  # after the config check: a bad key fails before torch loads

        trainer = Trainer(config, resume=args.resume, force=args.force)
        metrics = trainer.fit()
    except (ConfigError, DatasetFormatError, CheckpointError, EncoderError, PermissionError, ValueError) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except NonFiniteLoss as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 4
    except TrainingInterrupted as stop:
        print(str(stop), file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("stopped at once by an interrupt; checkpoints on disk are as last saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        _leave_process_group()
    if not trainer.cluster.is_main:  # under torchrun, rank 0 prints the result
        return 0
    print(metric_table(metrics))
    if (trainer.run_dir / "best.pt").is_file():  # none when no epoch was validated (train.epochs=0)
        print(f"best checkpoint: {trainer.run_dir / 'best.pt'}")
    print(f"test metrics:    {trainer.run_dir / 'metrics.json'}")
    print(trainer.run_dir)  # the last line: where everything is
    return 0


def _leave_process_group() -> None:
    """Under torchrun, leave the process group (captioner.distributed is loaded only once training starts)."""
    module = sys.modules.get("captioner.distributed")
    if module is not None:
        module.shutdown()


def _one_line(error: Exception) -> str:
    """A DataLoader worker's error arrives as 'Caught X in DataLoader worker...' plus its traceback;
    its last line is the original message (it names the sample and the file)."""
    lines = str(error).strip().splitlines()
    return lines[-1] if len(lines) > 1 and lines[0].startswith("Caught ") else str(error)


if __name__ == "__main__":
    sys.exit(main())
