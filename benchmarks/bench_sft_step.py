"""Seconds per SFT step on CPU: TRL's fused, chunked LM head vs full logits (``SFTConfig.full_logits_loss``).

The demo's models and data: the teacher (Qwen2, hidden 128, 2 layers) and the student (hidden 96, 2 layers),
vocabulary 1024 (a tokenizer built offline with ``tokenizers``), batches of 16 rows of the demo's training
split (prompt + reference tests, ~110 tokens). For each model the two heads run ``--steps`` steps each, from
the same initial weights, alternating ``--rounds`` times (best of the rounds), in one process with 2 torch
threads. Loss at the last step is printed next to each: the same NLL, so the two agree up to float rounding.

Prints a table and writes ``benchmarks/results/bench_sft_step.json``.
Usage: ``python benchmarks/bench_sft_step.py [--steps 100 --rounds 2]``
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_sft_step.json"))
    args = parser.parse_args(argv)

    import torch
    import transformers

    from fastdistill import SFTConfig, SFTTrainer
    from fastdistill.demo import DemoConfig
    from fastdistill.demo.families import _sft_dataset, _with_renames, family_examples
    from fastdistill.demo.run import MODEL_SHARED, demo_tokenizer
    from fastdistill.testing import tiny_causal_lm

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(2)
    cfg = DemoConfig()
    train, _ = family_examples(0, cfg.n_train, cfg.n_held_out)
    tokenizer = demo_tokenizer(train, cfg.vocab_size)
    ds = _sft_dataset(_with_renames(train, 0, 0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, size in (("student", cfg.student), ("teacher", cfg.teacher)):
            best = {}
            for _ in range(args.rounds):
                for head, full in (("TRL fused head", False), ("full logits", True)):
                    model, _ = tiny_causal_lm(seed=1, tokenizer=tokenizer, **MODEL_SHARED, **size)
                    trainer = SFTTrainer(model=model, train_dataset=ds, processing_class=tokenizer, args=SFTConfig(
                        output_dir=tmp, bf16=False, max_steps=args.steps, per_device_train_batch_size=cfg.batch_size,
                        learning_rate=cfg.lr, logging_steps=args.steps, report_to=[], save_strategy="no", seed=0,
                        disable_tqdm=True, gradient_checkpointing=False, max_length=cfg.max_length,
                        full_logits_loss=full))
                    start = time.perf_counter()
                    trainer.train()
                    seconds = time.perf_counter() - start
                    loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
                    if head not in best or seconds < best[head][0]:
                        best[head] = (seconds, loss)
            base = best["TRL fused head"][0]
            for head, (seconds, loss) in best.items():
                rows.append({"model": model_name, "hidden_size": size["hidden_size"], "head": head,
                             "ms_per_step": round(1000 * seconds / args.steps, 1), "loss": round(float(loss), 4),
                             "speedup_vs_trl": round(base / seconds, 2)})
    print(f"{'model':8s} {'head':15s} {'ms/step':>8s} {'speed-up':>9s} {'loss':>7s}")
    for r in rows:
        print(f"{r['model']:8s} {r['head']:15s} {r['ms_per_step']:8.1f} {r['speedup_vs_trl']:8.2f}x {r['loss']:7.4f}")
    result = {"steps": args.steps, "rounds": args.rounds, "batch_size": cfg.batch_size, "vocab_size": cfg.vocab_size,
              "torch_threads": 2, "load_before": os.getloadavg(), "rows": rows,
              "environment": {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
                              "transformers": transformers.__version__},
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
