"""Stage 3a: the "mutant" GRPO branch: rewards favour tests that kill the most mutants.

    python recipes/grpo_mutant.py --config recipes/configs/grpo_mutant.yaml
    accelerate launch --config_file recipes/accelerate/zero2.yaml \\
        recipes/grpo_mutant.py --config recipes/configs/grpo_mutant.yaml

The code is shared with the other branch in recipes/grpo.py; the branches differ only by config.
"""

from grpo import run

if __name__ == "__main__":
    run("mutant")
