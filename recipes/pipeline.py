"""The whole training run: SFT -> GKD -> both GRPO branches from the same GKD checkpoint.

    python recipes/pipeline.py --output_root runs
    python recipes/pipeline.py --output_root runs --launcher zero2          # each stage via accelerate launch
    python recipes/pipeline.py --output_root runs --student Qwen/Qwen2.5-Coder-0.5B-Instruct \\
        --gkd_args "--teacher_model_name_or_path Qwen/Qwen2.5-Coder-7B-Instruct"

Each stage is the recipe of the same name run as a subprocess, with ``recipes/configs/<stage>.yaml``
and its output in ``<output_root>/<stage>``:

    sft          --model_name_or_path <student>       -> <root>/sft
    gkd          --model_name_or_path <root>/sft      -> <root>/gkd
    grpo_mutant  --model_name_or_path <root>/gkd      -> <root>/grpo_mutant
    grpo_speed   --model_name_or_path <root>/gkd      -> <root>/grpo_speed

Re-running the same command is safe: a stage whose output holds ``pipeline_done.json`` (written once
the stage has exited successfully and saved its model) is skipped, and an interrupted stage is
re-run with ``--resume_from_checkpoint last``, so it continues from the last ``checkpoint-*`` in its
output directory. To redo a stage, delete its output directory (and those of the stages after it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger("recipes.pipeline")

HERE = Path(__file__).resolve().parent
STAGES = ("sft", "gkd", "grpo_mutant", "grpo_speed")
INPUT_OF = {"sft": None, "gkd": "sft", "grpo_mutant": "gkd", "grpo_speed": "gkd"}
DONE_MARKER = "pipeline_done.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_root", default="runs", help="Each stage writes to <output_root>/<stage>.")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="Stages to run, in order.")
    parser.add_argument("--launcher", default="python",
                        help="'python', or an accelerate config: ddp | zero2 | zero3 (recipes/accelerate/) or a path.")
    parser.add_argument("--num_processes", type=int, default=None, help="Override the accelerate config's count.")
    parser.add_argument("--config_dir", default=str(HERE / "configs"), help="Where <stage>.yaml configs live.")
    parser.add_argument("--student", default=None, help="Model the SFT stage starts from (default: sft.yaml's).")
    parser.add_argument("--common_args", default="", help="Extra recipe flags for every stage (one string).")
    for stage in STAGES:
        parser.add_argument(f"--{stage}_args", default="", help=f"Extra recipe flags for the {stage} stage.")
    parser.add_argument("--grpo_args", default="", help="Extra recipe flags for both GRPO branches.")
    return parser.parse_args(argv)


def launcher_command(args: argparse.Namespace) -> list[str]:
    if args.launcher == "python":
        return [sys.executable]
    config = Path(args.launcher)
    if not config.suffix:
        config = HERE / "accelerate" / f"{args.launcher}.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"no accelerate config {config}")
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate) if accelerate.exists() else "accelerate", "launch", "--config_file", str(config)]
    return cmd + (["--num_processes", str(args.num_processes)] if args.num_processes else [])


def stage_command(stage: str, args: argparse.Namespace, root: Path) -> list[str]:
    cmd = launcher_command(args) + [str(HERE / f"{stage}.py"), "--config", str(Path(args.config_dir) / f"{stage}.yaml")]
    source = INPUT_OF[stage]
    model = str(root / source) if source else args.student
    if model:
        cmd += ["--model_name_or_path", model]
    cmd += ["--output_dir", str(root / stage), "--resume_from_checkpoint", "last"]
    extra = [args.common_args, args.grpo_args if stage.startswith("grpo") else "", getattr(args, f"{stage}_args")]
    return cmd + [flag for text in extra for flag in shlex.split(text)]


def checkpoints(output_dir: Path) -> list[str]:
    return sorted((p.name for p in output_dir.glob("checkpoint-*")), key=lambda name: int(name.split("-")[-1]))


def run_stage(stage: str, args: argparse.Namespace, root: Path) -> str:
    """Run one stage unless it is done; returns 'skipped' or 'ran'. Raises if the recipe fails."""
    output_dir = root / stage
    if (output_dir / DONE_MARKER).is_file():
        logger.info("[%s] done already (%s), skipping", stage, output_dir / DONE_MARKER)
        return "skipped"
    source = INPUT_OF[stage]
    if source and not (root / source / DONE_MARKER).is_file():
        raise RuntimeError(f"[{stage}] needs the finished {source} stage in {root / source}")
    found = checkpoints(output_dir) if output_dir.is_dir() else []
    logger.info("[%s] %s", stage, f"resuming from {found[-1]}" if found else "starting")
    cmd = stage_command(stage, args, root)
    logger.info("[%s] %s", stage, shlex.join(cmd))
    started = time.time()
    proc = subprocess.run(cmd, cwd=HERE.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"[{stage}] failed with exit code {proc.returncode}; "
                           "re-run to resume from its last checkpoint")
    info_path = output_dir / "run_info.json"
    marker = {
        "stage": stage,
        "command": cmd,
        "seconds": round(time.time() - started, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "run_info": json.loads(info_path.read_text()) if info_path.is_file() else None,
    }
    (output_dir / DONE_MARKER).write_text(json.dumps(marker, indent=2))
    logger.info("[%s] finished in %.0f s", stage, marker["seconds"])
    return "ran"


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    root = Path(args.output_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        summary = {stage: run_stage(stage, args, root) for stage in STAGES if stage in args.stages}
    except RuntimeError as err:
        logger.error("%s", err)
        return 1
    logger.info("pipeline: %s", ", ".join(f"{stage} {what}" for stage, what in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
