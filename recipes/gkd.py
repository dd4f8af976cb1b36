"""Stage 2: generalized knowledge distillation (CE + JSD + reverse KL) from a teacher into the SFT student.

    python recipes/gkd.py --config recipes/configs/gkd.yaml
    accelerate launch --config_file recipes/accelerate/zero3.yaml recipes/gkd.py --config recipes/configs/gkd.yaml

With ``teacher_model_name_or_path`` the teacher runs live (TRL prepares it for DeepSpeed); without one
the dataset must carry ``teacher_logprobs`` columns (see fastdistill.GKDTrainer).
"""

from fastdistill.trainers.launch import configure_environment

configure_environment()  # before accelerate / torch.distributed initialise

from trl import ModelConfig, TrlParser, get_peft_config  # noqa: E402

from common import RecipeArguments, supervised_dataset  # noqa: E402
from fastdistill import GKDConfig, GKDTrainer  # noqa: E402
from fastdistill.trainers import model_init_kwargs  # noqa: E402
from fastdistill.trainers.launch import RunInfoCallback, finish, parse_args, resolve_resume, setup_logging  # noqa: E402


def main(script_args: RecipeArguments, training_args: GKDConfig, model_args: ModelConfig):
    logger = setup_logging(training_args)
    training_args.model_init_kwargs = {**model_init_kwargs(model_args), **(training_args.model_init_kwargs or {})}
    # the teacher loads in the student's dtype unless teacher_model_init_kwargs says otherwise
    training_args.teacher_model_init_kwargs = {
        "dtype": model_args.dtype or "auto",
        **(training_args.teacher_model_init_kwargs or {}),
    }

    # 1. Data: the same prompt/completion rows as SFT (plus teacher_logprobs columns, if any)
    dataset = supervised_dataset(script_args)
    logger.info("distilling on %d rows from %s; teacher: %s", len(dataset), script_args.dataset,
                training_args.teacher_model_name_or_path or "stored teacher_logprobs")

    # 2. Trainer: the student (usually the SFT output) learns the teacher's token distributions
    trainer = GKDTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset,
        peft_config=get_peft_config(model_args),
    )

    # 3. Train (resuming when asked: --resume_from_checkpoint <dir> | last), then save
    checkpoint = resolve_resume(training_args)
    trainer.add_callback(RunInfoCallback(trainer, recipe="gkd", resumed_from=checkpoint))
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(training_args.output_dir)
    logger.info("model saved to %s", training_args.output_dir)
    finish(trainer)  # wait for all processes, then tear the process group down


if __name__ == "__main__":
    parser = TrlParser((RecipeArguments, GKDConfig, ModelConfig))
    main(*parse_args(parser))
