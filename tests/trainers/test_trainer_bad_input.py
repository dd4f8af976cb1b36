"""Trainer configs and datasets with bad values are refused up front, naming the field or row."""

import math

import pytest

from fastdistill import GKDConfig, GKDTrainer, GRPOConfig, SFTConfig
from fastdistill.data.loading import check_teacher_columns
from helpers import ROWS, dataset, student_and_teacher, teacher_logprob_columns


def _poison(ds, row, column, value, position=(0,)):
    def edit(example, idx):
        if idx != row:
            return {}
        values = example[column]
        target = values
        for p in position[:-1]:
            target = target[p]
        target[position[-1]] = value
        return {column: values}

    return ds.map(edit, with_indices=True)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 3.0])
def test_gkd_trainer_refuses_non_finite_teacher_logprobs_in_a_dataset(tmp_path, value):
    student, teacher, tok = student_and_teacher()
    good = teacher_logprob_columns(teacher, tok, dataset(ROWS[:4]))  # a Dataset built in memory, not a file
    bad = _poison(good, 2, "teacher_logprobs", value, position=(1,))
    args = GKDConfig(output_dir=str(tmp_path), bf16=False, lmbda=0.0, report_to=[], max_steps=1)
    with pytest.raises(ValueError, match=r"train dataset, row 2, column 'teacher_logprobs'"):
        GKDTrainer(model=student, args=args, train_dataset=bad, processing_class=tok)


def test_check_teacher_columns_top_k_nulls_and_selected_rows():
    student, teacher, tok = student_and_teacher()
    good = teacher_logprob_columns(teacher, tok, dataset(ROWS[:5]), top_k=2)
    check_teacher_columns(good)  # finite: fine
    bad = _poison(good, 3, "teacher_topk_logprobs", math.nan, position=(1, 1))
    with pytest.raises(ValueError, match=r"row 3, column 'teacher_topk_logprobs'"):
        check_teacher_columns(bad)
    # rows are counted in the dataset as the trainer sees it (after select)
    with pytest.raises(ValueError, match=r"row 1, column 'teacher_topk_logprobs'"):
        check_teacher_columns(bad.select([0, 3, 4]))
    check_teacher_columns(bad.select([0, 1, 2, 4]))
    nulled = good.map(lambda ex, i: {"teacher_logprobs": None if i == 4 else ex["teacher_logprobs"]},
                      with_indices=True)
    with pytest.raises(ValueError, match=r"row 4, column 'teacher_logprobs': null"):
        check_teacher_columns(nulled, "eval")


@pytest.mark.parametrize("make, match", [
    (lambda d: GKDConfig(output_dir=d, bf16=False, ce_lambda=math.nan), "ce_lambda"),
    (lambda d: GKDConfig(output_dir=d, bf16=False, rkl_lambda=math.inf), "rkl_lambda"),
    (lambda d: GRPOConfig(output_dir=d, bf16=False, jsd_lambda=math.nan), "jsd_lambda"),
    (lambda d: GRPOConfig(output_dir=d, bf16=False, reward_preset="mutnat"), "did you mean 'mutant'"),
    (lambda d: SFTConfig(output_dir=d, bf16=False, augment_probability=math.nan), "augment_probability"),
    (lambda d: SFTConfig(output_dir=d, bf16=False, augment_mode="apend"), "did you mean 'append'"),
])
def test_config_fields_refused_in_post_init(tmp_path, make, match):
    with pytest.raises(ValueError, match=match):
        make(str(tmp_path))
