"""Prefect tasks that prepare what the students learn from: the data split and the teacher's outputs."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from .data import Dataset, load_dataset
from .teacher import TeacherOutputs, TeacherSpec, cached_teacher_outputs


@task(name="prepare-data", cache_policy=NO_CACHE)
def prepare_data(name_or_url: str, *, train_size: int | None, test_size: int | None, seed: int,
                 text_column: str | None = None, label_column: str | None = None) -> Dataset:
    """Load and split the data set; bad names, columns or labels fail here, before any work."""
    data = load_dataset(name_or_url, train_size=train_size, test_size=test_size, seed=seed,
                        text_column=text_column, label_column=label_column)
    get_run_logger().info("data %s: %d train / %d test, %d classes, hash %s", data.name,
                          len(data.train_texts), len(data.test_texts), data.num_classes,
                          data.content_hash[:12])
    return data


@task(name="teacher-inference", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def teacher_inference(data: Dataset, spec: TeacherSpec, cache_root: str) -> TeacherOutputs:
    """Soft labels and features of the teacher, cached by data hash + model + settings."""
    out = cached_teacher_outputs(data, spec, cache_root)
    get_run_logger().info("teacher %s outputs ready (cache key %s)", spec.kind, out.key[:12])
    return out
