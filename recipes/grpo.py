"""Stage 3: GRPO with rewards from really running the generated tests, one branch per reward preset.

    python recipes/grpo_mutant.py --config recipes/configs/grpo_mutant.yaml   # strongest tests
    python recipes/grpo_speed.py  --config recipes/configs/grpo_speed.yaml    # fast, stable tests
    accelerate launch --config_file recipes/accelerate/zero2.yaml \\
        recipes/grpo_mutant.py --config recipes/configs/grpo_mutant.yaml

Both branches start from the same GKD checkpoint and differ only by their config (reward preset,
sampling temperature, completion length). This module holds the shared code; the two scripts call
``run(branch)``.
"""

from fastdistill.trainers.launch import configure_environment

configure_environment()  # before accelerate / torch.distributed initialise

from trl import ModelConfig, TrlParser, get_peft_config  # noqa: E402

from common import RecipeArguments, prompt_dataset  # noqa: E402
from fastdistill import GRPOConfig, GRPOTrainer  # noqa: E402
from fastdistill.trainers import model_init_kwargs  # noqa: E402
from fastdistill.trainers.launch import RunInfoCallback, finish, parse_args, resolve_resume, setup_logging  # noqa: E402


def main(script_args: RecipeArguments, training_args: GRPOConfig, model_args: ModelConfig, branch: str = "grpo"):
    logger = setup_logging(training_args)
    training_args.model_init_kwargs = {**model_init_kwargs(model_args), **(training_args.model_init_kwargs or {})}
    if training_args.teacher_model_name_or_path:  # teacher for the JSD term, in the student's dtype by default
        training_args.teacher_model_init_kwargs = {
            "dtype": model_args.dtype or "auto",
            **(training_args.teacher_model_init_kwargs or {}),
        }
    if branch != "grpo" and training_args.reward_preset != branch:
        logger.warning("the %s recipe runs with reward_preset=%r", branch, training_args.reward_preset)

    # 1. Data: prompts asking for tests, plus the code the generated tests are run against
    dataset = prompt_dataset(script_args, code_column=training_args.code_column)
    logger.info("%s branch: %d prompts from %s, reward preset %r, jsd_lambda %s", branch, len(dataset),
                script_args.dataset, training_args.reward_preset, training_args.jsd_lambda)

    # 2. Trainer: reward_funcs=None means the composite reward preset of the config
    trainer = GRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=None,
        args=training_args,
        train_dataset=dataset,
        peft_config=get_peft_config(model_args),
    )

    # 3. Train (resuming when asked: --resume_from_checkpoint <dir> | last), then save
    checkpoint = resolve_resume(training_args)
    trainer.add_callback(RunInfoCallback(trainer, recipe=f"grpo_{branch}", resumed_from=checkpoint))
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(training_args.output_dir)
    logger.info("model saved to %s", training_args.output_dir)
    finish(trainer)  # wait for all processes, then tear the process group down


def run(branch: str, args=None):
    """Parse ``--config`` + command line (the branch's preset is the default) and train."""
    parser = TrlParser((RecipeArguments, GRPOConfig, ModelConfig))
    parser.set_defaults(reward_preset=branch, output_dir=f"runs/grpo_{branch}")
    main(*parse_args(parser, args), branch=branch)


if __name__ == "__main__":
    run("mutant")
