"""The demo's sizes and settings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DemoConfig:
    """Sizes and settings of the demo; :meth:`quick` is the reduced version used by the tests."""

    seed: int = 0
    vocab_size: int = 1024
    renames: int = 0                      # renamed copies of each training example (teacher and student data)
    max_length: int = 256
    n_train: int = 360                    # generated training family instances
    n_held_out: int = 96                  # generated held-out family instances (unseen names and constants)
    n_grpo: int = 100                     # fresh training-pool instances used as GRPO prompts (not in SFT data)
    n_seen_eval: int = 0                  # training instances also scored, reported apart as "seen code"
    # mix of reference-test styles in the training corpus (None: fastdistill.demo.families.STYLES)
    styles: dict | None = None
    teacher: dict = field(default_factory=lambda: dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2))
    student: dict = field(default_factory=lambda: dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2))
    # 600 / 500 steps (was 700 / 700) keep the full demo under 6 minutes on 2 cores; over three seeds every
    # comparison still holds (docs/learning.md, "The 6-minute demo")
    teacher_steps: int = 600
    teacher_lr: float = 5e-3
    sft_steps: int = 500
    # 120 (was 40): the teacher's full distribution, for longer, is what made the weakest seed's student copy
    # names better; over three seeds GKD is then above SFT and GRPO-mutant above SFT in every seed
    # (docs/learning.md, "Longer GKD")
    gkd_steps: int = 120
    # peak learning rate of GKD (None: ``lr``, the SFT peak). Restarting at the SFT peak (5e-3) undid SFT:
    # held-out kill rate -0.055 vs SFT (95% CI -0.088..-0.024); at 1e-3 GKD is level with SFT and the GRPO
    # branch built on it is above SFT (docs/learning.md, "What changed the effect")
    gkd_lr: float | None = 1e-3
    lr: float = 5e-3
    batch_size: int = 16
    grpo_steps: int = 50
    grpo_lr: float = 2e-4
    grpo_generations: int = 8
    grpo_prompts_per_step: int = 2
    # reward weights of the GRPO-mutant branch (None: the library's "mutant" preset, which gives test speed a
    # weight of 0.1)
    grpo_mutant_weights: dict | None = None
    mutant_temperature: float = 0.8
    mutant_max_tokens: int = 96
    speed_temperature: float = 0.5
    speed_max_tokens: int = 40
    eval_max_tokens: int = 96
    eval_samples: int = 4                 # sampled completions per held-out instance, scored next to the greedy one
    eval_temperature: float = 0.7         # sampling temperature of those completions
    eval_batch_size: int = 64             # prompts per generation batch in the evaluation
    # torch threads while the evaluation generates (0 or None: ``threads``). The sandbox scores the previous
    # model's completions meanwhile; a second thread did not make the demo's models generate faster
    eval_threads: int | None = 1
    bootstrap_resamples: int = 10_000     # resamples of the paired bootstrap intervals of the comparisons
    deterministic: bool = True            # torch.use_deterministic_algorithms (warn_only) during the run
    max_mutants: int = 15
    speed_repeats: int = 5
    workers: int = 2
    # torch CPU threads (0: torch's choice). Training, generation and the sandboxes never run at the same
    # time in the demo, so 2 threads cost the sandboxes nothing: teacher SFT ran 1.6x faster than with 1
    threads: int | None = 2

    @classmethod
    def quick(cls) -> "DemoConfig":
        """A reduced run (a minute or two on 2 cores) with the same stages and report.

        The teacher is just large enough (two layers: copying a name from the prompt needs them) and
        trained just long enough to learn its 6 training tests, and generations are long enough to hold
        one, so curation keeps rows and the sandbox scores real kills; the students are too small and
        too briefly trained to learn anything (their kill rates are 0).
        """
        return cls(n_seen_eval=2, teacher=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2),
                   student=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1), teacher_steps=100,
                   teacher_lr=1e-2, sft_steps=3, gkd_steps=2, grpo_steps=1, mutant_max_tokens=24,
                   speed_max_tokens=16, eval_max_tokens=64, max_mutants=5, speed_repeats=2, n_train=6, n_held_out=12,
                   vocab_size=512, batch_size=8, n_grpo=8, eval_samples=2,
                   bootstrap_resamples=2000)
