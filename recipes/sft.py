"""Stage 1: supervised fine-tuning of the student on the teacher's (or reference) tests.

    python recipes/sft.py --config recipes/configs/sft.yaml
    python recipes/sft.py --config recipes/configs/sft.yaml --load_in_4bit --use_peft   # QLoRA
    accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/sft.py --config recipes/configs/sft.yaml

Without a GPU the same commands run on the CPU (see ``fastdistill.trainers.launch``).
"""

from fastdistill.trainers.launch import configure_environment

configure_environment()  # before accelerate / torch.distributed initialise

from trl import ModelConfig, TrlParser, get_peft_config  # noqa: E402

from common import RecipeArguments, supervised_dataset  # noqa: E402
from fastdistill import SFTConfig, SFTTrainer  # noqa: E402
from fastdistill.trainers import model_init_kwargs  # noqa: E402
from fastdistill.trainers.launch import RunInfoCallback, finish, parse_args, resolve_resume, setup_logging  # noqa: E402


def main(script_args: RecipeArguments, training_args: SFTConfig, model_args: ModelConfig):
    logger = setup_logging(training_args)
    training_args.model_init_kwargs = {**model_init_kwargs(model_args), **(training_args.model_init_kwargs or {})}

    # 1. Data: prompt = "write tests for <code>", completion = the tests
    dataset = supervised_dataset(script_args)
    logger.info("training on %d rows from %s", len(dataset), script_args.dataset)

    # 2. Trainer: TRL's SFT (+ optional augmentation hook); LoRA/QLoRA when --use_peft
    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset,
        peft_config=get_peft_config(model_args),
    )

    # 3. Train (resuming when asked: --resume_from_checkpoint <dir> | last), then save
    checkpoint = resolve_resume(training_args)
    trainer.add_callback(RunInfoCallback(trainer, recipe="sft", resumed_from=checkpoint))
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(training_args.output_dir)
    logger.info("model saved to %s", training_args.output_dir)
    finish(trainer)  # wait for all processes, then tear the process group down


if __name__ == "__main__":
    parser = TrlParser((RecipeArguments, SFTConfig, ModelConfig))
    main(*parse_args(parser))
