"""Stage 3b: the "speed" GRPO branch: rewards favour fast, stable tests that still catch bugs.

    python recipes/grpo_speed.py --config recipes/configs/grpo_speed.yaml
    accelerate launch --config_file recipes/accelerate/zero2.yaml \\
        recipes/grpo_speed.py --config recipes/configs/grpo_speed.yaml

The code is shared with the other branch in recipes/grpo.py; the branches differ only by config.
"""

from grpo import run

if __name__ == "__main__":
    run("speed")
